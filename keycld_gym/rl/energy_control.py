"""Energy-based control from a learned model alone, no RL (`keycld-gym evaluate-agent --agent energy`).

KeyCLD's Lagrangian has explicit energies: kinetic T = 1/2 qdot^T M qdot from the learned
mass matrix, potential V(q) from the learned potential, and the learned input matrix B(q)
says how much power an action puts in (dE/dt = qdot^T B(q) u minus what damping takes).
That is all an energy-shaping swing-up needs:

- pump: u = sat(gain * (E* - E) / dE * sign(qdot^T B(q))), full effort in the direction
  that adds energy while E is below the upright equilibrium's E* = max V over the
  constraint manifold, and against it once above (dE = E* - min V, the energy range);
- balance: near the top (the potential within `switch` of dE below its maximum), the
  linear feedback u = -K (x - x*) of an LQR designed on the learned model's own
  linearisation about the upright equilibrium (finite differences of its agent-interval
  step, a discrete Riccati equation).

The law is written against `EnergyPlant`, what a controller needs to know of a system in its
own coordinates, so it runs unchanged on the learned model (keypoint coordinates,
`model_plant`) and on the true simulator (joint angles; the tests' check of the law apart
from the model). Where the unactuated part's energy is what must be shaped (cartpole's
pole) the total energy is still the model's: the pole's share is what the cart's push
changes through the coupling in M, and the power term qdot^T B u sees only the cart; this
controller does not separate the two (see docs/method/control.md, "Energy-based control").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.linalg
import torch

from keycld_gym.agents import AgentRecipe, get_recipe
from keycld_gym.files import portable_path
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.model.energy import pushed_keypoint, swing_energy, upright_state
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import get_system

Array = np.ndarray
# the recorded real evaluation of a model's energy controller, beside its weights
# (`keycld-gym evaluate-agent --agent energy --json MODEL/energy_control.json`); the
# benchmark lists it beside the RL agents
ENERGY_RECORD = "energy_control.json"


@dataclass
class EnergyPlant:
    """What the energy law needs to know of a system, on batches of states x `(N, n)` in its own coordinates.

    A state is positions then velocities, n / 2 each (the LQR weighs the halves apart).

    Attributes:
        energy, potential: total and potential energy `(N,)`.
        power: dE/dt per unit of each action `(N, A)` (without damping).
        step: the state one agent interval later under actions `(N, A)` held over it.
        upright: the upright equilibrium x* `(n,)` (zero velocity).
        potential_range: (min, max) of the potential over the configuration space.
        deviation: x - x* `(N, n)` (default plain subtraction; angles wrap).
        centring: for a pushed body on a rail, `(N, 2, A)`: the actions that push it back
            toward the rail's middle per unit of its offset (1 at a wall) and of its velocity
            (rail half-widths per second); None: nothing to centre.
    """

    energy: Callable[[Array], Array]
    potential: Callable[[Array], Array]
    power: Callable[[Array], Array]
    step: Callable[[Array, Array], Array]
    upright: Array
    potential_range: tuple[float, float]
    deviation: Callable[[Array], Array] | None = None
    centring: Callable[[Array], Array] | None = None


def linearise(step: Callable[[Array, Array], Array], x: Array, u: Array, eps: float = 1e-4) -> tuple[Array, Array]:
    """A, B of x' = step(x, u) about (x `(n,)`, u `(A,)`) by central differences: `(n, n)`, `(n, A)`."""
    n, m = len(x), len(u)
    dx = np.eye(n) * eps
    du = np.eye(m) * eps
    xs = np.concatenate([x + dx, x - dx, np.repeat(x[None], 2 * m, 0)])
    us = np.concatenate([np.repeat(u[None], 2 * n, 0), u + du, u - du])
    out = step(xs, us)
    a = (out[:n] - out[n:2 * n]).T / (2 * eps)
    b = (out[2 * n:2 * n + m] - out[2 * n + m:]).T / (2 * eps)
    return a, b


def lqr_gain(a: Array, b: Array, q: Array, r: Array) -> Array:
    """The discrete LQR gain K `(A, n)` for x' = A x + B u with costs x^T Q x + u^T R u (u = -K x)."""
    p = scipy.linalg.solve_discrete_are(a, b, q, r)
    return np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)


class EnergyShaping:
    """Energy pumping toward the upright equilibrium, LQR balance near it (module docstring).

    Args:
        gain: pumping gain on the energy shortfall as a share of the energy range (50: full
            effort until 2% short).
        switch: balance once the potential lies within this share of the range below its top.
        state_cost: LQR weights of the position and the velocity coordinates.
        action_cost: LQR weight of the action.
        centring: gains of a pushed body's offset from its rail's middle and of its velocity,
            added to the pumping (the cart must pump the pole without hitting the walls).
        power_scale: 0 pumps in the direction of the power's sign; above 0 by tanh(power /
            power_scale), so the pump fades where an action's power passes through zero
            (a bang-bang pump through the acrobot's elbow locks the arm in bent poses).
    """

    def __init__(self, plant: EnergyPlant, *, gain: float = 50.0, switch: float = 0.05,
                 state_cost: tuple[float, float] = (1.0, 0.1), action_cost: float = 1.0,
                 centring: tuple[float, float] = (0.0, 0.0), power_scale: float = 0.0):
        if power_scale < 0:
            raise ValueError(f"power_scale must be 0 (the power's sign) or positive, got {power_scale}")
        self.plant, self.gain, self.switch, self.centring = plant, gain, switch, centring
        self.power_scale = power_scale
        low, high = plant.potential_range
        self.target, self.span = high, high - low
        n = len(plant.upright)
        actions = plant.power(plant.upright[None]).shape[-1]
        a, b = linearise(plant.step, plant.upright, np.zeros(actions))
        q = np.diag(np.r_[np.full(n // 2, state_cost[0]), np.full(n - n // 2, state_cost[1])])
        self.k = lqr_gain(a, b, q, np.eye(actions) * action_cost)
        self.closed_loop_radius = float(np.abs(np.linalg.eigvals(a - b @ self.k)).max())

    def deviation(self, x: Array) -> Array:
        """x - x* `(N, n)`."""
        return self.plant.deviation(x) if self.plant.deviation is not None else x - self.plant.upright

    def near_upright(self, x: Array) -> Array:
        """Whether each state's potential lies within `switch` of the energy range below the top `(N,)`."""
        return (self.target - self.plant.potential(x)) / self.span < self.switch

    def __call__(self, x: Array) -> Array:
        """Actions in [-1, 1] `(N, A)` for states `(N, n)`."""
        shortfall = (self.target - self.plant.energy(x)) / self.span
        power = self.plant.power(x)
        direction = np.tanh(power / self.power_scale) if self.power_scale > 0 else np.sign(power)
        pump = self.gain * shortfall[:, None] * direction
        if self.plant.centring is not None and any(self.centring):
            offset, rate = self.plant.centring(x).transpose(1, 0, 2)
            pump = np.clip(pump, -1, 1) + self.centring[0] * offset + self.centring[1] * rate
        pump = np.clip(pump, -1, 1)
        balance = np.clip(-self.deviation(x) @ self.k.T, -1, 1)
        return np.where(self.near_upright(x)[:, None], balance, pump).astype(np.float32)


# -- the learned model as a plant ------------------------------------------------------------
def _split(model: KeyCLDModel, x: Array) -> tuple[torch.Tensor, torch.Tensor]:
    k = model.spec.num_keypoints
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return t[:, :2 * k].reshape(-1, k, 2), t[:, 2 * k:].reshape(-1, k, 2)


def model_plant(model: KeyCLDModel) -> EnergyPlant:
    """The learned model as an `EnergyPlant` on keypoint observations x = (q, qdot) flattened `(N, 4K)`.

    The energy shaped is the model's total energy, seen from the pushed keypoint's frame
    when a force actuator pushes one (cartpole: the pole's energy about the moving cart,
    its kinetic part T(qdot - qdot_cart) from the learned M, which for a rod on a cart is
    the rod's rotation about the cart). The power per action is that energy's rate under a
    unit action through the model's own constrained accelerations, so the coupling that
    lets the cart pump the pole comes from the learned M and B.
    """
    if model.config.dynamics.kind == "neural_ode":
        raise ValueError("the neural ODE ablation has no energies to shape: energy-based control needs a Lagrangian model")
    # in double precision: the linearisation takes finite differences of the step
    model = copy.deepcopy(model).double().eval()
    dyn = model.dynamics
    repeat = model.spec.action_repeat
    pushed = pushed_keypoint(model)
    upright_q, potential_range = upright_state(model)

    @torch.no_grad()
    def energy(x: Array) -> Array:
        return swing_energy(model, *_split(model, x), pushed).numpy()

    @torch.no_grad()
    def potential(x: Array) -> Array:
        return dyn.potential(_split(model, x)[0], walls=False).numpy()

    def power(x: Array) -> Array:
        q, v = _split(model, x)
        v = v.requires_grad_(True)
        grad_v = torch.autograd.grad(swing_energy(model, q, v, pushed).sum(), v)[0]  # (N, K, 2)
        with torch.no_grad():
            v = v.detach()
            rest = dyn.acceleration(q, v, q.new_zeros(len(q), dyn.action_dim))
            per_action = [dyn.acceleration(q, v, q.new_zeros(len(q), dyn.action_dim).index_fill_(1, torch.tensor([i]), 1.0))
                          - rest for i in range(dyn.action_dim)]  # accelerations are affine in the action
            return torch.stack([(grad_v * a).sum((-2, -1)) for a in per_action], -1).numpy()

    @torch.no_grad()
    def step(x: Array, u: Array) -> Array:
        q, v = _split(model, x)
        u = torch.as_tensor(np.asarray(u), dtype=torch.float64)
        for _ in range(repeat):
            q, v = model.step(q, v, u)
        return torch.cat([q.flatten(1), v.flatten(1)], 1).numpy()

    centring = None
    if pushed is not None and pushed in getattr(dyn, "rail_keypoints", []):
        left, right = (float(w) for w in dyn.walls.detach()[dyn.rail_keypoints.index(pushed)])
        middle, half = (left + right) / 2, (right - left) / 2

        @torch.no_grad()
        def centring(x: Array) -> Array:
            q, v = _split(model, x)
            direction = torch.sign(dyn.input_matrix(q)[:, pushed, 0, :])  # (N, A): which way each action pushes
            offset = (q[:, pushed, 0] - middle) / half, v[:, pushed, 0] / half
            return -(torch.stack(offset, -1)[:, :, None] * direction[:, None, :]).numpy()  # (N, 2, A)

    upright = np.r_[upright_q.ravel(), np.zeros(upright_q.size)]
    return EnergyPlant(energy, potential, power, step, upright, potential_range, centring=centring)


class EnergyAgent:
    """The energy-shaping controller of a model as an agent: `act(obs)` on keypoint observations `(N, 4K)`.

    Holds what `evaluate_agent` reads of an agent (`recipe`, `info`, `act`), as `keycld_gym.rl.agent.Agent` does.
    """

    def __init__(self, model: KeyCLDModel, recipe: AgentRecipe, info: dict[str, Any] | None = None):
        if recipe.algo != "energy" or recipe.obs_type != "keypoints":
            raise ValueError(f"an energy agent needs an energy recipe on keypoints, got {recipe.algo}/{recipe.obs_type}")
        self.model, self.recipe = model, recipe
        self.law = EnergyShaping(model_plant(model), **recipe.hyperparams)
        self.info = {"path": "energy", "recipe": recipe.to_dict(), "closed_loop_radius": self.law.closed_loop_radius,
                     **(info or {})}

    # The law holds closures over the model, which do not pickle: a copy (another process's, a
    # Ray task's) is built again from the model and the recipe.
    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "recipe": self.recipe, "info": self.info}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], state["recipe"])
        self.info = state["info"]

    def act(self, observations: Array, deterministic: bool = True) -> Array:
        """Actions `(N, A)` for a batch of keypoint observations."""
        return self.law(np.asarray(observations, np.float64))


def energy_agent(system: str, checkpoint: str | Path | None = None, settings: dict[str, Any] | None = None) -> EnergyAgent:
    """The energy-shaping agent of a system's model (default: the bundled one) with its recipe in `agents/` (`settings` override its hyperparams)."""
    recipe = get_recipe(get_system(system).name, "keypoints", "energy").with_settings(settings, EnergyShaping)
    folder = checkpoint_folder(checkpoint, recipe.system)
    return EnergyAgent(load_model(folder), recipe, {"model": {"path": portable_path(folder)}})
