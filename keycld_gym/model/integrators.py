"""Time integration of keypoint dynamics, with projection onto the constraint manifold.

Training rolls out a few cheap steps; the imagined env must stay on the manifold for
thousands of steps, so `rollout_step` sub-steps with RK4 and then projects positions
(Gauss-Newton on phi) and velocities (tangent space) after every sub-step.
"""

from __future__ import annotations

from typing import Callable

import torch

from keycld_gym.model.constraints import ConstraintSet

Acceleration = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
INTEGRATORS = ("euler", "rk4")


def euler_step(acc: Acceleration, q: torch.Tensor, v: torch.Tensor, u: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Semi-implicit (symplectic) Euler: v += dt a(q, v, u); q += dt v. Shapes `(..., K, 2)`."""
    v = v + dt * acc(q, v, u)
    return q + dt * v, v


def rk4_step(acc: Acceleration, q: torch.Tensor, v: torch.Tensor, u: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic fourth-order Runge-Kutta on (q, v) with u held. Shapes `(..., K, 2)`."""
    a1 = acc(q, v, u)
    q2, v2 = q + 0.5 * dt * v, v + 0.5 * dt * a1
    a2 = acc(q2, v2, u)
    q3, v3 = q + 0.5 * dt * v2, v + 0.5 * dt * a2
    a3 = acc(q3, v3, u)
    q4, v4 = q + dt * v3, v + dt * a3
    a4 = acc(q4, v4, u)
    q_next = q + dt / 6.0 * (v + 2 * v2 + 2 * v3 + v4)
    v_next = v + dt / 6.0 * (a1 + 2 * a2 + 2 * a3 + a4)
    return q_next, v_next


def rollout_step(
    acc: Acceleration,
    q: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    dt: float,
    *,
    substeps: int = 1,
    method: str = "rk4",
    constraints: ConstraintSet | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance (q, v) by `dt` in `substeps` steps of `method`, projecting after each one."""
    if method not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {method!r}")
    step = rk4_step if method == "rk4" else euler_step
    h = dt / substeps
    for _ in range(substeps):
        q, v = step(acc, q, v, u, h)
        if constraints is not None:
            q = constraints.project_positions(q)
            v = constraints.project_velocities(q, v)
    return q, v
