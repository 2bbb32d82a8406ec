"""Start-state estimation: the keypoint state at the last of n >= 2 frames, by shooting.

Finite differences or a polynomial fit of noisy keypoints give poor velocities (docs/method/measured-facts.md,
"Dynamics from true keypoints": a polynomial over 9 frames allows a VPT of 1 agent step; shooting over 9 / 17 / 33
frames, 9.5 / 17 / 31). So: find the state at the window's first frame whose rollout through
the model's own dynamics, under the window's actions, best matches the encoded keypoints of
every frame; the state at the window's end is the estimate, on the constraint manifold.
"""

from __future__ import annotations

import torch

from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.parameters import frozen
from keycld_gym.sim.systems import WINDOWS


def initial_guess(keypoints: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Start position and least-squares velocity over the first <= 5 frames of keypoints `(B, n, K, 2)`."""
    n = min(5, keypoints.shape[1])
    t = torch.arange(n, dtype=keypoints.dtype, device=keypoints.device) * dt
    t = t - t.mean()
    slope = (keypoints[:, :n] * t[None, :, None, None]).sum(1) / (t**2).sum()
    # the fitted line at the first frame (t is centred, so t[0] < 0)
    return keypoints[:, :n].mean(1) + slope * t[0], slope


@torch.no_grad()
def kinematic_trajectory(model: KeyCLDModel, keypoints: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """States `(B, n, K, 2)` x2 from keypoints `(B, n, K, 2)` alone: positions as seen, velocities by differences.

    No dynamics: the fallback for windows on which the model's rollout is not finite.
    """
    v = torch.gradient(keypoints, spacing=dt, dim=1)[0]
    q, v = model.project(keypoints.flatten(0, 1), v.flatten(0, 1), iterations=20)  # from off the manifold
    return q.reshape(keypoints.shape), v.reshape(keypoints.shape)


def finite_or_kinematic(
    model: KeyCLDModel, keypoints: torch.Tensor, qs: torch.Tensor, vs: torch.Tensor, dt: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fit's states `(B, n, K, 2)` x2, its non-finite windows replaced by `kinematic_trajectory`.

    An untrained or badly fitted model's rollout can blow up on a window (seen with a tiny
    test model in CI); an estimate must still be a number, and the frames give one.
    """
    bad = ~(qs.isfinite().all((1, 2, 3)) & vs.isfinite().all((1, 2, 3)))
    if bad.any():
        qs, vs = qs.clone(), vs.clone()
        qs[bad], vs[bad] = kinematic_trajectory(model, keypoints[bad], dt)
    return qs, vs


def fit_trajectory(
    model: KeyCLDModel,
    keypoints: torch.Tensor,
    actions: torch.Tensor,
    *,
    stride: int = 1,
    iterations: int = 20,
    stages: tuple[int, ...] | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """States at the frames of a window that best explain its keypoints: two `(B, n, K, 2)`.

    Args:
        keypoints: encoded keypoints `(B, n, K, 2)` of n frames, `stride` physics steps apart.
        actions: physics-rate actions `(B, (n - 1) * stride, A)` between the frames.
        iterations: L-BFGS iterations per stage.
        stages: shorter prefixes (in frames) fitted first, coarse to fine, then the whole window
            (default: `WINDOWS.estimation_stages` at the model's physics rate).
        init: a guess `(B, K, 2)` x2 of the state at the window's first frame (a tracker's
            previous fit): the stages are skipped and the whole window is refined from it.
    """
    if keypoints.dim() != 4 or keypoints.shape[1] < 2:
        raise ValueError(f"keypoints must be (B, n >= 2, K, 2), got {tuple(keypoints.shape)}")
    b, n = keypoints.shape[:2]
    steps = (n - 1) * stride
    if actions.dim() != 3 or actions.shape[:2] != (b, steps):
        raise ValueError(
            f"actions must be (B, (n - 1) * stride, A) = ({b}, {steps}, A) for {n} frames {stride} steps apart, "
            f"got {tuple(actions.shape)}"
        )
    keypoints, actions = keypoints.detach(), actions.detach().to(keypoints.dtype)
    if init is None:
        q0, v0 = initial_guess(keypoints, model.dt * stride)
        if stages is None:
            stages = tuple(model.spec.frames(s) for s in WINDOWS.estimation_stages)
        lengths = [s for s in stages if s < n] + [n]
    else:
        q0, v0 = (x.detach().to(keypoints) for x in init)
        lengths = [n]
    q0, v0 = q0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
    with frozen(model), torch.enable_grad():
        for length in lengths:
            opt = torch.optim.LBFGS([q0, v0], lr=1, max_iter=iterations, line_search_fn="strong_wolfe")

            def closure(length: int = length) -> torch.Tensor:
                opt.zero_grad()
                qs, _ = model.rollout(*model.project(q0, v0), actions[:, : (length - 1) * stride])
                # summed over the batch: the windows are independent problems
                loss = ((qs[:, ::stride] - keypoints[:, :length]) ** 2).mean((1, 2, 3)).sum()
                loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            qs, vs = model.rollout(*model.project(q0.detach(), v0.detach()), actions)
    return finite_or_kinematic(model, keypoints, qs[:, ::stride], vs[:, ::stride], model.dt * stride)


@torch.no_grad()
def refine_trajectory(
    model: KeyCLDModel,
    keypoints: torch.Tensor,
    actions: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor],
    *,
    stride: int = 1,
    iterations: int = 3,
    eps: float = 1e-3,
    rtol: float = 1e-2,
    robust: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_trajectory` from a close guess `(B, K, 2)` x2, by Gauss-Newton: two `(B, n, K, 2)`.

    A tracker's guess (the previous window's fit) is already near the optimum, where
    Gauss-Newton converges in a few steps. The Jacobian of the window's keypoints with
    respect to the 4K start-state numbers is taken by finite differences, all 4K + 1
    rollouts in one batch, so a step costs about one rollout and no backward pass. The
    constraints make some directions void (they are projected away): the pseudo-inverse
    drops them, which needs velocities scaled by the window's duration so that every real
    direction has a singular value of the same order. The best start seen (guess included)
    is kept, so a step never makes it worse.

    `robust`: a keypoint's error (image units) above which a frame's keypoint counts as an
    outlier: its weight falls as robust / error (Huber's loss, by iteratively reweighted
    least squares), so one glitched frame of the encoder does not drag the window's fit.
    """
    b, n = keypoints.shape[:2]
    shape = init[0].shape[1:]  # (K, 2)
    span = (n - 1) * stride * model.dt  # velocities in units per window
    x = torch.cat([init[0].flatten(1), init[1].flatten(1) * span], 1).to(keypoints)  # (B, D)
    d = x.shape[1]
    probe = torch.cat([torch.zeros(1, d), eps * torch.eye(d)]).to(x)  # (D + 1, D)
    actions = actions.to(keypoints)
    acts = actions.repeat_interleave(d + 1, 0)
    target = keypoints.flatten(1)  # (B, M)

    def start(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model.project(xs[:, : d // 2].reshape(-1, *shape), xs[:, d // 2:].reshape(-1, *shape) / span)

    def loss(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cost `(B,)` of residuals `(B, M)` and each residual's IRLS weight `(B, M)`."""
        if robust is None:
            return (r**2).sum(1), torch.ones_like(r)
        err = r.reshape(b, -1, 2).norm(dim=-1)  # (B, n * K): one weight per keypoint and frame
        huber = torch.where(err <= robust, err**2, 2 * robust * err - robust**2)
        weight = (robust / err.clamp_min(robust)).repeat_interleave(2, 1)
        return huber.sum(1), weight

    best_x, best_cost = x, torch.full((b,), float("inf")).to(x)
    for _ in range(iterations):
        qs, _ = model.rollout(*start((x[:, None] + probe).flatten(0, 1)), acts)
        r = qs[:, ::stride].flatten(1).reshape(b, d + 1, -1)
        r0 = r[:, 0] - target  # (B, M)
        cost, weight = loss(r0)
        # a start whose rollout blows up (an untrained model) counts as worse; its numbers as zero
        cost = torch.where(cost.isfinite(), cost, torch.inf)
        better = cost < best_cost
        best_x, best_cost = torch.where(better[:, None], x, best_x), torch.where(better, cost, best_cost)
        jac = ((r[:, 1:] - r[:, :1]) / eps).nan_to_num(0.0, 0.0, 0.0)  # (B, D, M)
        r0, weight = r0.nan_to_num(0.0, 0.0, 0.0), weight.nan_to_num(0.0, 0.0, 0.0)
        root = weight.sqrt()
        step = torch.linalg.pinv((jac * root[:, None]).transpose(1, 2), rtol=rtol) @ (r0 * root)[..., None]
        # from an improvement, a Gauss-Newton step; after a worse point, halve the last step
        x = torch.where(better[:, None], x - step[..., 0].nan_to_num(0.0), best_x + 0.5 * (x - best_x))
    qs, vs = model.rollout(*start(x), actions)
    cost, _ = loss(qs[:, ::stride].flatten(1) - target)
    worse = ~(cost <= best_cost)
    if worse.any():
        q2, v2 = model.rollout(*start(best_x[worse]), actions[worse])
        qs[worse], vs[worse] = q2, v2
    return finite_or_kinematic(model, keypoints, qs[:, ::stride], vs[:, ::stride], model.dt * stride)


def estimate_state(model: KeyCLDModel, keypoints: torch.Tensor, actions: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """The state `(B, K, 2)` x2 at the last of the frames whose keypoints are `(B, n, K, 2)` (see `fit_trajectory`)."""
    qs, vs = fit_trajectory(model, keypoints, actions, **kwargs)
    return qs[:, -1], vs[:, -1]


def estimate_state_from_frames(
    model: KeyCLDModel, frames: torch.Tensor, actions: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """The state at the last of n consecutive uint8 frames `(B, n, H, W, 3)` under actions `(B, n - 1, A)`."""
    if frames.dim() != 5:
        raise ValueError(f"frames must be (B, n, H, W, 3), got {tuple(frames.shape)}")
    b, n = frames.shape[:2]
    with torch.no_grad():
        kp = model.encode(frames.flatten(0, 1)).reshape(b, n, -1, 2)
    return estimate_state(model, kp, actions, **kwargs)
