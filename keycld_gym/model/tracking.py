"""Online state estimation: the keypoint state from a stream of encoded frames, as they come.

The real env encodes every physics step's frame and needs the state at each agent step.
Two estimators share one interface (`start(model)` gives an object that `add`s a frame's
keypoints with the action that led to it and gives the current `estimate`):

- `Tracking`, a sliding window: at each agent step, the state whose rollout through the
  model best explains the last `window` frames (`estimation.refine_trajectory`, from the
  previous window's fit). It forgets everything before the window.
- `Filtering`, an extended Kalman filter with the learned dynamics as its process model: every
  frame is a measurement of the positions, so information from all earlier frames is kept,
  discounted by how far the dynamics can be trusted (`acceleration_std`). It costs one
  batched model step per frame, not a window's rollouts per agent step.

Both run on batches `(B, ...)`: one real env, or many held-out sequences at once
(`scripts/cartpole_diagnostics.py causal` measures both against the true state).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from keycld_gym.model.estimation import fit_trajectory, refine_trajectory
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import WINDOWS, SystemSpec


@dataclass(frozen=True)
class Tracking:
    """A sliding-window shooting fit at each agent step (see the module docstring).

    After the first (cold, coarse-to-fine) fit, each window is refined from the previous
    fit's state at the window's first frame, which is already close, by Gauss-Newton. Huber
    weights (keypoints more than `robust` image units off the fitted trajectory count less)
    keep the encoder's rare glitched frames from pulling the fit.
    """

    window: int | None = None  # frames; None: `WINDOWS.tracking` seconds at the system's physics rate
    iterations: int = 2  # Gauss-Newton steps from the previous fit
    robust: float | None = 0.02  # Huber threshold, image units; None: plain least squares

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be at least 2 frames, got {self.window}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.robust is not None and not self.robust > 0:
            raise ValueError(f"robust must be a positive threshold or None, got {self.robust}")

    def frames(self, spec: SystemSpec) -> int:
        """Frames per window for a system."""
        return spec.frames(WINDOWS.tracking) if self.window is None else self.window

    def fit(self, model: KeyCLDModel, keypoints: torch.Tensor, actions: torch.Tensor,
            init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """States `(B, n, K, 2)` x2 at the frames of windows of keypoints `(B, n, K, 2)` under actions `(B, n - 1, A)`.

        Refined from `init` (the state `(B, K, 2)` x2 at the first frame, a previous fit's),
        or without one from a cold fit.
        """
        if init is None:
            qs, vs = fit_trajectory(model, keypoints, actions)
            init = (qs[:, 0], vs[:, 0])
        return refine_trajectory(model, keypoints, actions, init, iterations=self.iterations, robust=self.robust)

    def start(self, model: KeyCLDModel) -> "WindowTracker":
        """A fresh estimator for one episode (or a batch of them)."""
        return WindowTracker(model, self)


class WindowTracker:
    """`Tracking`'s online state: the last window's keypoints and actions and the previous fit."""

    def __init__(self, model: KeyCLDModel, settings: Tracking):
        self.model, self.settings = model, settings
        window = settings.frames(model.spec)
        self._keypoints: deque = deque(maxlen=window)  # (B, K, 2) each
        self._actions: deque = deque(maxlen=window - 1)  # (B, A) each
        self._frames = 0
        self._fit: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (first frame, qs, vs)

    def add(self, keypoints: torch.Tensor, action: torch.Tensor | None) -> None:
        """A frame's keypoints `(B, K, 2)`, after `action` `(B, A)` (None for an episode's first frame)."""
        if (action is None) != (self._frames == 0):
            raise ValueError("the first frame comes without an action, every later one with the action before it")
        self._keypoints.append(keypoints)
        if action is not None:
            self._actions.append(action.to(keypoints))
        self._frames += 1

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The state `(B, K, 2)` x2 at the last frame added (needs two frames)."""
        if self._frames < 2:
            raise ValueError("a velocity needs at least two frames")
        kp, acts = torch.stack(tuple(self._keypoints), 1), torch.stack(tuple(self._actions), 1)
        first = self._frames - kp.shape[1]  # index of the window's first frame
        init = None
        if self._fit is not None and 0 <= first - self._fit[0] < self._fit[1].shape[1]:
            i = first - self._fit[0]
            init = (self._fit[1][:, i], self._fit[2][:, i])
        qs, vs = self.settings.fit(self.model, kp, acts, init)
        self._fit = (first, qs, vs)
        return qs[:, -1], vs[:, -1]


@dataclass(frozen=True)
class Filtering:
    """An extended Kalman filter over the keypoint state, the learned dynamics its process model.

    Noise levels are in image units and seconds, so they hold at any physics step:
    `measurement_std` is the encoder's keypoint error per frame, `acceleration_std` the
    dynamics' error as white noise on the accelerations (units/s^2 per sqrt(Hz): over a
    step dt the velocity's variance grows by acceleration_std^2 dt), `initial_velocity_std`
    the prior on the first frame's velocities. `robust`: a keypoint whose innovation is more
    than `robust` standard deviations off counts less (Huber's weight), so a glitched frame
    of the encoder does not jolt the state.
    """

    measurement_std: float = 0.01
    # 0.2: the lowest velocity error over all held-out cartpole reads; 0.05 errs less away
    # from the rail ends and gave the bundled cartpole agent its best real return (BENCHMARKS.md)
    acceleration_std: float = 0.2
    initial_velocity_std: float = 1.0
    robust: float | None = 3.0
    eps: float = 1e-3  # finite-difference step of the dynamics' Jacobian

    def __post_init__(self) -> None:
        for name in ("measurement_std", "acceleration_std", "initial_velocity_std", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.robust is not None and not self.robust > 0:
            raise ValueError(f"robust must be a positive number of standard deviations or None, got {self.robust}")

    def start(self, model: KeyCLDModel) -> "KeypointFilter":
        """A fresh estimator for one episode (or a batch of them)."""
        return KeypointFilter(model, self)


class KeypointFilter:
    """`Filtering`'s online state: the mean `(B, 4K)` ([q, v] flattened) and its covariance `(B, 4K, 4K)`.

    Covariances live in the ambient keypoint coordinates; the Jacobian of a step (which
    projects onto the constraint manifold) maps them into the manifold's tangent space, and
    the measurement noise keeps the innovation's covariance invertible.
    """

    def __init__(self, model: KeyCLDModel, settings: Filtering):
        self.model, self.settings = model, settings
        self.mean: torch.Tensor | None = None
        self.cov: torch.Tensor | None = None  # double precision: a stiff step's Jacobian can be large
        self._shape = (model.spec.num_keypoints, 2)
        d, h, dt, a2 = 4 * model.spec.num_keypoints, 2 * model.spec.num_keypoints, model.dt, settings.acceleration_std**2
        self._probe = torch.cat([torch.zeros(1, d), settings.eps * torch.eye(d)])  # (D + 1, D): the Jacobian's probes
        # white acceleration noise over one step (the same every step), added before the step
        # so the Jacobian carries it into the tangent space like the covariance itself
        eye = torch.eye(h, dtype=torch.float64)
        self._noise = torch.cat([torch.cat([a2 * dt**3 / 3 * eye, a2 * dt**2 / 2 * eye], 1),
                                 torch.cat([a2 * dt**2 / 2 * eye, a2 * dt * eye], 1)])

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = z.shape[-1] // 2
        return z[..., :d].reshape(-1, *self._shape), z[..., d:].reshape(-1, *self._shape)

    @torch.no_grad()
    def _predict(self, action: torch.Tensor) -> None:
        """Mean and covariance one physics step on, under `action` `(B, A)`."""
        b, d = self.mean.shape
        z = (self.mean[:, None] + self._probe.to(self.mean)).flatten(0, 1)
        q, v = self.model.step(*self.model.project(*self._split(z)), action.to(z).repeat_interleave(d + 1, 0))
        out = torch.cat([q.flatten(1), v.flatten(1)], 1).reshape(b, d + 1, d)
        jac = ((out[:, 1:] - out[:, :1]) / self.settings.eps).transpose(1, 2).double()  # (B, D out, D in)
        self.mean = out[:, 0]
        self.cov = jac @ (self.cov + self._noise) @ jac.transpose(1, 2)

    @torch.no_grad()
    def _update(self, keypoints: torch.Tensor) -> None:
        """Mean and covariance corrected by a frame's keypoints `(B, K, 2)`."""
        b, d = self.mean.shape
        h, s = d // 2, self.settings
        y = keypoints.flatten(1).to(self.cov)
        innovation = y - self.mean[:, :h].double()  # (B, 2K)
        r = torch.full((b, h), s.measurement_std**2).to(y)
        if s.robust is not None:
            # Huber by keypoint: beyond `robust` standard deviations its variance grows with the error
            var = (self.cov[:, :h, :h].diagonal(dim1=1, dim2=2) + r).reshape(b, -1, 2).sum(-1)  # (B, K)
            norm = innovation.reshape(b, -1, 2).norm(dim=-1) / var.sqrt()
            r = r * (norm / s.robust).clamp_min(1.0).repeat_interleave(2, 1)
        pxh = self.cov[:, :, :h]  # P H^T, (B, D, 2K)
        innov_cov = self.cov[:, :h, :h] + torch.diag_embed(r)
        gain, info = torch.linalg.solve_ex(innov_cov, pxh.transpose(1, 2))
        gain = gain.transpose(1, 2)  # (B, D, 2K); rows whose solve failed are caught after the update
        gain[info != 0] = float("nan")
        self.mean = self.mean + (gain @ innovation[..., None])[..., 0].to(self.mean)
        # Joseph's form: the covariance stays symmetric and positive semi-definite
        ikh = torch.eye(d, dtype=y.dtype).repeat(b, 1, 1)
        ikh[:, :, :h] -= gain
        self.cov = ikh @ self.cov @ ikh.transpose(1, 2) + gain @ torch.diag_embed(r) @ gain.transpose(1, 2)
        q, v = self.model.project(*self._split(self.mean))
        self.mean = torch.cat([q.flatten(1), v.flatten(1)], 1)

    @torch.no_grad()
    def begin(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Start a batch from states `mean` `(B, 4K)` known to within independent `std` `(4K,)` (in place of a first frame)."""
        b, d = mean.shape
        self.mean, self.cov = mean.new_zeros(b, d), torch.zeros(b, d, d, dtype=torch.float64)
        self.set_rows(torch.arange(b), mean, std)

    @torch.no_grad()
    def set_rows(self, index: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Start rows `index` again from states `mean` `(n, 4K)` known to within independent `std` `(4K,)`."""
        q, v = self.model.project(*self._split(mean.to(self.mean)), iterations=20)
        self.mean[index] = torch.cat([q.flatten(1), v.flatten(1)], 1)
        self.cov[index] = torch.diag_embed(std.double() ** 2)

    @torch.no_grad()
    def add(self, keypoints: torch.Tensor, action: torch.Tensor | None) -> None:
        """A frame's keypoints `(B, K, 2)`, after `action` `(B, A)` (None for an episode's first frame)."""
        if (action is None) != (self.mean is None):
            raise ValueError("the first frame comes without an action, every later one with the action before it")
        if action is None:
            self.begin(*self._seen(keypoints))
            return
        self._predict(action)
        self._update(keypoints)
        bad = ~(self.mean.isfinite().all(1) & self.cov.isfinite().all((1, 2)))
        if bad.any():  # an untrained model's step can blow up: start those rows again from this frame
            self.set_rows(bad, *self._seen(keypoints[bad]))

    def _seen(self, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A state `(n, 4K)` and its std `(4K,)` from one frame's keypoints `(n, K, 2)`: positions as seen, velocities unknown."""
        s, h = self.settings, keypoints[0].numel()
        std = torch.cat([torch.full((h,), s.measurement_std), torch.full((h,), s.initial_velocity_std)])
        return torch.cat([keypoints.flatten(1), torch.zeros_like(keypoints.flatten(1))], 1), std

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The state `(B, K, 2)` x2 at the last frame added."""
        if self.mean is None:
            raise ValueError("no frame added yet")
        return self._split(self.mean)


Estimator = Tracking | Filtering
