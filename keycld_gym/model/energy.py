"""The learned Lagrangian's energies: the upright equilibrium, the swing energy, and a shaping potential from them.

KeyCLD's model has explicit energies in keypoint coordinates: kinetic T = 1/2 qdot^T M qdot
from the learned mass matrix and the learned potential V(q). A swing-up task's goal, the
upright equilibrium, is where V peaks on the constraint manifold, and the energy a state
must reach to get there at rest is that peak. The energy-shaping controller
(`keycld_gym.rl.energy_control`) pumps toward it; the imagined env can shape an agent's
reward with it (`EnergyPotential`, the env's `energy_shaping` option).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from keycld_gym.model.keycld import KeyCLDModel


def pushed_keypoint(model: KeyCLDModel) -> int | None:
    """The keypoint a force actuator pushes (cartpole's cart), if the spec names one."""
    pushed = [a.keypoint for a in model.dynamics.actuators if a.kind == "force"]
    if len(pushed) > 1:
        raise ValueError(f"energy shaping handles one pushed keypoint, the spec names {pushed}")
    return pushed[0] if pushed else None


def swing_energy(model: KeyCLDModel, q: torch.Tensor, v: torch.Tensor, pushed: int | None) -> torch.Tensor:
    """The model's total energy `(N,)` of states q, v `(N, K, 2)`, seen from the frame of the `pushed` keypoint
    (`pushed_keypoint`; cartpole: the pole's energy about the moving cart) where there is one."""
    if pushed is not None:
        v = v - v[:, pushed:pushed + 1]
    return model.dynamics.kinetic(v) + model.dynamics.potential(q, walls=False)


def upright_state(model: KeyCLDModel, samples: int = 4096, steps: int = 400,
                  seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """The keypoints where the learned potential peaks on the constraint manifold `(K, 2)`, and its (min, max) there.

    Random points of the frame projected onto the manifold give the range; the best one is
    refined by projected gradient ascent. A keypoint on a rail is then moved (with the
    rest, rigidly) to the middle between the rail's learned walls: the top of the
    potential is the same anywhere along the rail, the task wants the middle.
    """
    gen = torch.Generator().manual_seed(seed)
    k = model.spec.num_keypoints
    dyn = model.dynamics
    constraints = model.constraints
    with torch.no_grad():
        dtype = next(model.parameters()).dtype
        q = torch.rand(samples, k, 2, generator=gen, dtype=torch.float64).to(dtype) * 2 - 1
        q = constraints.project_positions(q, iterations=20)
        v = dyn.potential(q, walls=False)
        ok = torch.isfinite(v) & (constraints.phi(q).abs().amax(-1) < 1e-4)
        q, v = q[ok], v[ok]
        best = q[v.argmax()][None].clone()
        low = float(v.min())
        rails = list(getattr(dyn, "rail_keypoints", []))
        for i in range(steps):  # ascend along the manifold: the gradient's tangent part, then back onto it
            g = dyn.potential_gradient(best, walls=False)
            tangent = constraints.project_velocities(best, g)
            size = 0.01 * (1 - i / steps) + 1e-5  # shrinking steps: settle on the top
            best = constraints.project_positions(best + size * tangent / tangent.norm().clamp(min=1e-9), 5)
        if rails:  # the pose found, moved along the rail (a learned slope along it is no reason to sit at a wall)
            best[..., 0] += dyn.walls[0].mean() - best[0, rails[0], 0]
            best = constraints.project_positions(best, 20)
        high = float(dyn.potential(best, walls=False))
    return best[0].numpy(), (low, high)


class EnergyPotential:
    """Phi(q, v) = -|E(q, v) - E*| / (E* - V_min) `(N,)`: how far a state's swing energy is from the upright
    equilibrium's E* (the potential's peak), in units of the potential's range (0 at E*, -1 hanging at rest).

    A shaping potential (Ng, Harada and Russell, 1999): a reward plus c (Phi(s') - Phi(s)) sums
    over an episode to the reward's sum plus c (Phi(s_T) - Phi(s_0)), so it leaves the best
    policies as they were while it pays at once for the energy a swing-up must first pump in.
    """

    def __init__(self, model: KeyCLDModel):
        self.model, self.pushed = model, pushed_keypoint(model)
        # the peak searched in double precision (its manifold test is tight), used in the model's own
        _, (low, high) = upright_state(copy.deepcopy(model).double().eval())
        self.target, self.scale = high, max(high - low, 1e-9)

    @torch.no_grad()
    def __call__(self, q: torch.Tensor, v: torch.Tensor) -> np.ndarray:
        energy = swing_energy(self.model, q, v, self.pushed).double()
        return (-(energy - self.target).abs() / self.scale).cpu().numpy()
