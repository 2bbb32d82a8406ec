"""Exploratory action processes for data collection.

Data for a world model must cover the states a policy will visit: random actions alone
never swing a cartpole up, so besides time-varying smooth noise the collector mixes in a
noisy scripted controller (energy pumping + LQR balancing from the true state). These
controllers only *collect* data; no policy or model ever sees the true state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from keycld_gym.sim.angles import wrap_angle
from keycld_gym.sim.systems import SystemSpec


@dataclass(frozen=True)
class ExplorationConfig:
    """How exploratory actions are drawn for each sequence.

    Attributes:
        controller_fraction: share of sequences driven by the system's scripted controller
            (plus noise); the rest use smooth noise alone. Systems without a controller
            always use noise.
        hold_mean: mean number of physics steps a noise target is held (geometric).
        smoothing: low-pass factor per physics step toward the current target (0 = none).
        controller_noise: amplitude of the smooth noise added to controller actions.
        centering: gain pulling a cartpole's cart toward the rail centre under noise, so
            the cart spends its time in view rather than pinned at a rail stop.
    """

    controller_fraction: float = 0.5
    hold_mean: float = 8.0
    smoothing: float = 0.5
    controller_noise: float = 0.3
    centering: float = 0.5


class SmoothNoise:
    """Time-varying random actions: targets held for random durations, then low-passed."""

    def __init__(self, action_dim: int, rng: np.random.Generator, hold_mean: float, smoothing: float, amplitude: float):
        self.rng, self.hold_mean, self.smoothing, self.amplitude = rng, hold_mean, smoothing, amplitude
        self.action = np.zeros(action_dim)
        self.target = self._draw()
        self.left = self._duration()

    def _draw(self) -> np.ndarray:
        return self.amplitude * self.rng.uniform(-1.0, 1.0, size=self.action.shape)

    def _duration(self) -> int:
        return int(self.rng.geometric(1.0 / self.hold_mean))

    def __call__(self) -> np.ndarray:
        if self.left <= 0:
            self.target, self.left = self._draw(), self._duration()
        self.left -= 1
        self.action = self.smoothing * self.action + (1.0 - self.smoothing) * self.target
        return self.action.copy()


def _lqr_gain(physics: Any, qpos: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Discrete LQR gain K (u = -K [q - q*, v]) of the physics linearised at rest at `qpos`."""
    import mujoco
    import scipy.linalg

    model = physics.model.ptr
    data = mujoco.MjData(model)  # a scratch copy: the env's own state is left untouched
    nv, nu = model.nv, model.nu

    def step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(model, data)
        data.qpos[:], data.qvel[:], data.ctrl[:] = qpos + x[:nv], x[nv:], u
        mujoco.mj_step(model, data)
        return np.concatenate([data.qpos - qpos, data.qvel])

    x0, u0 = np.zeros(2 * nv), np.zeros(nu)
    f0 = step(x0, u0)
    a = np.stack([(step(x0 + eps * e, u0) - f0) / eps for e in np.eye(2 * nv)], axis=1)
    b = np.stack([(step(x0, u0 + eps * e) - f0) / eps for e in np.eye(nu)], axis=1)
    q = np.diag([1.0] * nv + [0.1] * nv)
    r = np.eye(nu) * 0.1
    p = scipy.linalg.solve_discrete_are(a, b, q, r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


class CartpoleSwingUp:
    """Energy-pumping swing-up with LQR balancing near upright (hinge 0 = upright)."""

    def __init__(self, physics: Any, rng: np.random.Generator):
        self.gain = _lqr_gain(physics, np.zeros(physics.model.nq))
        self.pump = rng.uniform(0.75, 0.9)  # varied swing-ups; measured: 0.8 -> return ~860, |x| < 1.2 m

    def __call__(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        x, theta = qpos[0], wrap_angle(qpos[1])
        xdot, thetadot = qvel
        if np.cos(theta) > 0.85:
            return -self.gain @ np.array([x, theta, xdot, thetadot])
        # Pole energy (per unit m l^2 / 2, up to constants): 0 at upright rest.
        energy = 0.5 * (thetadot / 4.6) ** 2 + np.cos(theta) - 1.0
        push = -self.pump * np.sign(thetadot * np.cos(theta) + 1e-6) * np.sign(-energy)
        return np.array([push - 0.3 * x - 0.2 * xdot])


class PendulumSwingUp:
    """Energy pumping toward a target energy, LQR balancing near upright (hinge 0 = up).

    Drawn per sequence (from the sequence's generator): the pumping torque, and the energy
    it pumps to. At the upright energy (most sequences) it swings up and balances: a real
    return of about 875 alone, measured over 5 resets. Above it the pendulum arrives too fast
    to be caught and keeps turning over: full rotations, which a swing-up policy also visits.
    """

    # pole: 1 kg at 0.5 m from the hinge, inertia about the hinge 0.251 kg m^2 (pendulum.xml)
    INERTIA, MGL = 0.251, 9.81 * 0.5
    ROTATING = 0.3  # share of sequences pumped past the upright energy

    def __init__(self, physics: Any, rng: np.random.Generator):
        self.gain = _lqr_gain(physics, np.zeros(physics.model.nq))
        self.pump = rng.uniform(0.6, 1.0)  # of the torque limit
        # energy above upright rest (J): 0 balances; 1-4 J makes the pole turn over and over
        self.target = rng.uniform(1.0, 4.0) if rng.random() < self.ROTATING else 0.0

    def __call__(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        theta, thetadot = wrap_angle(qpos[0]), qvel[0]
        if self.target == 0.0 and np.cos(theta) > 0.9:
            return -self.gain @ np.array([theta, thetadot])
        energy = 0.5 * self.INERTIA * thetadot**2 + self.MGL * (np.cos(theta) - 1.0)
        return np.array([-self.pump * np.sign(energy - self.target) * np.sign(thetadot + 1e-6)])


class AcrobotSwingUp:
    """Energy pumping through the elbow, the acrobot's only motor (hinges 0 = upright).

    The power the elbow motor puts in is its torque times the elbow's rate, so a torque in
    phase with that rate pumps energy while the total energy (MuJoCo's own, from the true
    state) is short of the target. Drawn per sequence: the pumping torque, the rate over
    which the torque reverses (a bang-bang pump locks the arm still in some bent poses),
    and the target: the upright energy, or above it (faster swings over the top).
    The task's return over 8 resets (`scripts/explorer_returns.py --system acrobot --mode
    controller|explorer|noise`): 68 alone (the tip swings over the top, 2.5 turns of the
    shoulder per episode), 31 with the collector's noise, 3.2 for the noise alone. No
    balancing: the acrobot does not reach upright slowly enough for a linear catch.
    """

    ABOVE = 0.3  # share of sequences pumped past the upright energy

    def __init__(self, physics: Any, rng: np.random.Generator):
        import mujoco

        self.model = physics.model.ptr
        self.data = mujoco.MjData(self.model)  # scratch: the env's own state is left untouched
        self._forward = mujoco.mj_forward
        self.upright = self._energy(np.zeros(self.model.nq), np.zeros(self.model.nv))
        self.pump = rng.uniform(0.7, 1.0)  # of the torque limit
        self.rate_scale = rng.uniform(0.2, 0.5)  # rad/s
        self.target = self.upright + (rng.uniform(1.0, 3.0) if rng.random() < self.ABOVE else 0.0)

    def _energy(self, qpos: np.ndarray, qvel: np.ndarray) -> float:
        self.data.qpos[:], self.data.qvel[:] = qpos, qvel
        self._forward(self.model, self.data)  # the model's energy flag is on: data.energy = (potential, kinetic)
        return float(self.data.energy.sum())

    def __call__(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        shortfall = self.target - self._energy(qpos, qvel)
        return np.array([self.pump * np.sign(shortfall) * np.tanh(qvel[1] / self.rate_scale)])


CONTROLLERS: dict[str, Callable[[Any, np.random.Generator], Callable]] = {
    "cartpole": CartpoleSwingUp,
    "pendulum": PendulumSwingUp,
    "acrobot": AcrobotSwingUp,
}


class Explorer:
    """Actions for one sequence: smooth noise, or a scripted controller plus smooth noise."""

    def __init__(self, spec: SystemSpec, physics: Any, rng: np.random.Generator, config: ExplorationConfig):
        action_dim = physics.model.nu
        factory = CONTROLLERS.get(spec.name)
        self.spec, self.config = spec, config
        self.controller = factory(physics, rng) if factory and rng.random() < config.controller_fraction else None
        amplitude = config.controller_noise if self.controller else rng.uniform(0.3, 1.0)
        self.noise = SmoothNoise(action_dim, rng, config.hold_mean, config.smoothing, amplitude)

    @property
    def kind(self) -> str:
        """``"controller"`` or ``"noise"``: recorded per sequence."""
        return "controller" if self.controller else "noise"

    def __call__(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """The next action `(action_dim,)` in [-1, 1] for the current true state."""
        action = self.noise()
        if self.controller is not None:
            action = action + self.controller(qpos, qvel)
        elif self.spec.name == "cartpole":
            action = action - self.config.centering * qpos[0] / 1.8
        return np.clip(action, -1.0, 1.0)
