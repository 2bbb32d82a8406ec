"""Physical constants of a structured Lagrangian by least squares, before rollout training.

With a constant mass matrix M = M_K (x) I_2, a linear potential V = g.q (uniform gravity), a
constant input matrix B and damping D = diag(d) (x) I_2, the constrained Euler-Lagrange
equations, multiplied by a basis N(q) of the constraints' tangent space (which removes the
unknown constraint forces J^T lambda),

    N(q)^T (M qddot + g - B u + D qdot) = 0,

are linear in (M, g, B, d). Positions, velocities and accelerations come from the encoded
keypoints through a Savitzky-Golay filter, the actions through the same smoothing, so both
sides of the equation see the same filter. One scale is free (the Lagrangian's): M_K[0, 0] = 1.

Why: learned by gradient steps from a small start, a constant B and the gravity term grew
slowly (72% of the true action effect after 1,000 steps, BENCHMARKS.md); this fit puts them
near the truth in about a second, and the rollout loss then refines everything: the fit's
derivatives are noisy, a 0.17 s smoothing window blurs fast swings (on the true cartpole's
noise-free keypoints its accelerations came within ~10%, measured), and the rail walls are
left out of it (samples near the ends of the rail, and in a second pass those whose
residual is far above the rest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import savgol_filter

from keycld_gym.model.constraints import inv_softplus
from keycld_gym.model.dynamics import Dynamics
from keycld_gym.sim.systems import WINDOWS, frames_in


@dataclass(frozen=True)
class PhysicsFit:
    """A least-squares fit of the structured Lagrangian's constants.

    Attributes: mass `(K, K)`, gravity `(2K,)` (the gradient of V), input (a constant B
    `(2K, A)`, or the spec's actuator constants in order: two per force, one per torque),
    damping (per keypoint `(K,)` or per joint `(J,)`); samples used; residual RMS over
    them, relative to the RMS of the mass term.
    """

    mass: np.ndarray
    gravity: np.ndarray
    input: np.ndarray
    damping: np.ndarray
    samples: int
    relative_residual: float

    def to_dict(self) -> dict:
        """JSON-ready values."""
        return {"mass": self.mass.tolist(), "gravity": self.gravity.tolist(), "input": self.input.tolist(),
                "damping": self.damping.tolist(), "samples": self.samples,
                "relative_residual": self.relative_residual}


def smoothed_derivatives(q: np.ndarray, actions: np.ndarray, dt: float, window: int) -> tuple[np.ndarray, ...]:
    """Savitzky-Golay positions, velocities, accelerations `(S, T', K, 2)` and actions `(S, T', A)`.

    q: keypoints `(S, T, K, 2)` at interval dt; actions `(S, T - 1, A)` or `(S, T, A)`, the
    one after each frame (held until the next). The half-window at each end is dropped.
    """
    if window % 2 == 0 or window < 5:
        raise ValueError(f"window must be odd and at least 5 frames, got {window}")
    t = q.shape[1]
    if t < window + 2:
        raise ValueError(f"sequences of {t} frames are too short for a {window}-frame window")
    u = actions[:, : t - 1]
    # the acceleration at frame t sees the actions on both sides of it
    u_frame = np.concatenate([u[:, :1], 0.5 * (u[:, 1:] + u[:, :-1]), u[:, -1:]], 1)
    smooth = [savgol_filter(q, window, 3, deriv=d, delta=dt, axis=1) for d in (0, 1, 2)]
    smooth.append(savgol_filter(u_frame, window, 3, axis=1))
    h = window // 2
    return tuple(a[:, h:t - h] for a in smooth)


def _design(dynamics: Dynamics, q: torch.Tensor, qd: torch.Tensor, qdd: torch.Tensor,
            u: torch.Tensor) -> tuple[torch.Tensor, dict[str, slice]]:
    """Columns `(N, 2K, P)` of M qddot + g - B u + D qdot for each unknown, and where each part's lie.

    Unknowns: the upper triangle of M_K; g; the input's constants (a constant B, masked to
    the pushed keypoints, or the spec's actuators: a force's two components, a torque's
    gain); the damping (per keypoint, or per joint of the spec).
    """
    n_samples, k, _ = q.shape
    n, a = 2 * k, u.shape[-1]
    cfg = dynamics.config
    parts: dict[str, list[torch.Tensor]] = {"mass": [], "gravity": [], "input": [], "damping": []}
    for i in range(k):
        for j in range(i, k):
            c = q.new_zeros(n_samples, k, 2)
            c[:, i] += qdd[:, j]
            if i != j:
                c[:, j] += qdd[:, i]
            parts["mass"].append(c.flatten(1))
    eye = torch.eye(n, dtype=q.dtype)
    parts["gravity"] = [eye[:, i].expand(n_samples, n) for i in range(n)]
    grads = dynamics.joint_angle_gradients(q) if cfg.input_matrix == "spec" or cfg.damping == "joints" else {}
    if cfg.input_matrix == "spec":
        for b, act in enumerate(dynamics.actuators):
            if act.kind == "force":
                for d in range(2):
                    c = q.new_zeros(n_samples, k, 2)
                    c[:, act.keypoint, d] = -u[:, b]
                    parts["input"].append(c.flatten(1))
            else:
                parts["input"].append((-u[:, b, None, None] * grads[act.joint]).flatten(1))
    else:
        pushed = dynamics.input_mask.expand(k, 2, a).reshape(-1).to(q.dtype)
        for i in range(n):
            for b in range(a):
                # B only where the actuators push: the other columns are zero (least norm: zero)
                parts["input"].append(-u[:, b:b + 1] * eye[i] * pushed[i * a + b])
    if cfg.damping == "joints":
        for grad in dynamics.joint_gradients(q, grads):
            rate = (grad * qd).sum((-2, -1))
            parts["damping"].append((rate[:, None, None] * grad).flatten(1))
    else:
        for i in range(k):
            c = q.new_zeros(n_samples, k, 2)
            c[:, i] = qd[:, i]
            parts["damping"].append(c.flatten(1))
    where, start, cols = {}, 0, []
    for name, part in parts.items():
        where[name] = slice(start, start + len(part))
        start += len(part)
        cols += part
    return torch.stack(cols, -1), where


def fit_physics(dynamics: Dynamics, keypoints: torch.Tensor, actions: torch.Tensor, dt: float,
                window: int | None = None, trim: float = 3.0, rail_margin: float = 0.15) -> PhysicsFit:
    """Least-squares (M, g, B, d) of `dynamics`' structured Lagrangian from keypoint sequences.

    `window` is the smoothing window in frames (default: `WINDOWS.smoothing` seconds at `dt`).
    keypoints `(S, T, K, 2)` (encoded, in the order the constraints name), actions `(S, T, A)`
    or `(S, T - 1, A)`, dt the frame interval. Samples where a keypoint on a rail (a
    `fixed_height` constraint) is in the outer `rail_margin` of its observed travel are left
    out (the rail stops' contacts are no part of this Lagrangian); a second pass drops
    samples whose residual is more than `trim` times the median's.
    """
    if dynamics.constraints is None or not dynamics.config.structured:
        raise ValueError("fit_physics needs constrained dynamics with a linear potential and a constant or spec input matrix")
    window = frames_in(WINDOWS.smoothing, dt) if window is None else window
    q, qd, qdd, u = (torch.from_numpy(np.ascontiguousarray(x)).double().flatten(0, 1) for x in
                     smoothed_derivatives(keypoints.double().numpy(), actions.double().numpy(), dt, window))
    keep = torch.ones(len(q), dtype=torch.bool)
    for c in dynamics.constraints.constraints:
        if c.kind == "fixed_height":
            x = q[:, c.a, 0]
            lo, hi = x.min(), x.max()
            keep &= (x > lo + rail_margin * (hi - lo)) & (x < hi - rail_margin * (hi - lo))
    return solve_physics(dynamics, q[keep], qd[keep], qdd[keep], u[keep], trim)


def solve_physics(dynamics: Dynamics, q: torch.Tensor, qd: torch.Tensor, qdd: torch.Tensor, u: torch.Tensor,
                  trim: float = 3.0) -> PhysicsFit:
    """The least-squares constants from samples of keypoints, velocities, accelerations `(N, K, 2)` and actions `(N, A)`.

    A second pass drops samples whose residual is more than `trim` times the median's.
    """
    with torch.no_grad():
        j = dynamics.constraints.jacobian(q)  # float64, like q
    c, n = j.shape[-2], j.shape[-1]
    basis = torch.linalg.svd(j, full_matrices=True).Vh[:, c:].transpose(-1, -2)  # (N, 2K, 2K - C)
    with torch.no_grad():
        columns, where = _design(dynamics, q, qd, qdd, u)  # (N, 2K, P)
    k, a = dynamics.num_keypoints, u.shape[-1]
    design = basis.transpose(-1, -2) @ columns  # (N, 2K - C, P)
    # M_K[0, 0] = 1 fixes the Lagrangian's free scale: its column moves to the right-hand side
    rhs, lhs = -design[..., 0], design[..., 1:]
    keep = torch.ones(len(q), dtype=torch.bool)
    for _ in range(2):
        # gelsd: the normal parts of g and B are not observable (the constraints absorb them);
        # its minimum-norm solution sets them to zero
        sol = torch.linalg.lstsq(lhs[keep].flatten(0, 1), rhs[keep].flatten()[:, None], driver="gelsd").solution[:, 0]
        resid = (lhs @ sol - rhs).norm(dim=-1)
        keep = resid <= trim * resid[keep].median()
    theta = torch.cat([torch.ones(1, dtype=sol.dtype), sol])
    mass = torch.zeros(k, k, dtype=theta.dtype)
    iu = torch.triu_indices(k, k)
    mass[iu[0], iu[1]] = theta[where["mass"]]
    mass = mass + torch.triu(mass, 1).T
    gravity = theta[where["gravity"]]
    inp = theta[where["input"]]
    inp = inp if dynamics.config.input_matrix == "spec" else inp.reshape(n, a)
    damping = theta[where["damping"]]
    mass_term = (basis.transpose(-1, -2) @ torch.einsum("kl,nld->nkd", mass, qdd).flatten(1)[..., None]).squeeze(-1)
    rel = float((lhs[keep] @ sol - rhs[keep]).pow(2).mean().sqrt() / mass_term[keep].pow(2).mean().sqrt())
    return PhysicsFit(mass.numpy(), gravity.numpy(), inp.numpy(), damping.numpy(), int(keep.sum()), rel)


def apply_physics(dynamics: Dynamics, fit: PhysicsFit) -> None:
    """Set `dynamics`' mass matrix, gravity, input matrix and damping from a fit (mass made positive definite)."""
    evals, evecs = np.linalg.eigh(fit.mass)
    mass = (evecs * np.maximum(evals, 1e-3 * evals.max())) @ evecs.T
    low = np.linalg.cholesky(mass)
    floor = dynamics.config.init_damping
    with torch.no_grad():
        dynamics.mass_offdiag.copy_(torch.from_numpy(np.tril(low, -1)))
        dynamics.mass_raw_diag.copy_(torch.tensor([inv_softplus(float(x)) for x in np.diag(low)]))
        dynamics.potential_linear.copy_(torch.from_numpy(fit.gravity))
        if dynamics.config.input_matrix == "spec":
            values = iter(fit.input.tolist())
            for i, act in enumerate(dynamics.actuators):
                if act.kind == "force":
                    dynamics.actuator_force[i] = torch.tensor([next(values), next(values)])
                else:
                    dynamics.actuator_gain[i] = next(values)
        else:
            dynamics.input_const.copy_(torch.from_numpy(fit.input.reshape(-1)))
        if dynamics.config.learn_damping:
            dynamics.damping_raw.copy_(torch.tensor([inv_softplus(max(float(d), floor)) for d in fit.damping]))
