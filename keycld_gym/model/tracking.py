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
  batched model step per frame, not a window's rollouts per agent step. With `bias_std`
  it also estimates a slowly drifting acceleration bias: a model that errs the same way for
  a while (its upright a little off the real one, where a balancing agent keeps the pole)
  otherwise biases the velocities of a filter that trusts it.

Both run on batches `(B, ...)`: one real env, or many held-out sequences at once
(`keycld-gym diagnose`, its `causal` check, measures both against the true state).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import read_noise
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

    def resolved(self, model: KeyCLDModel) -> "Tracking":
        """The same settings: nothing of the model's to read (as `Filtering.resolved`)."""
        return self

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
    `measurement_std` is the encoder's keypoint error per frame (one number, one per keypoint
    coordinate `(2K,)`, or None: the model's own measurement, `frame_std` in the
    observation_noise.json beside its weights), `acceleration_std` the
    dynamics' error as white noise on the accelerations (units/s^2 per sqrt(Hz): over a
    step dt the velocity's variance grows by acceleration_std^2 dt), `initial_velocity_std`
    the prior on the first frame's velocities. `robust`: a keypoint whose innovation is more
    than `robust` standard deviations off counts less (Huber's weight), so a glitched frame
    of the encoder does not jolt the state.

    `bias_std`: the dynamics' error also as a slowly drifting acceleration bias, a random
    walk of this many units/s^2 per sqrt(s) estimated with the state (starting at 0 within
    `initial_bias_std`), so that a model that is wrong the same way for a while (a pole
    balanced a little off its learned upright) does not bias the velocities; None: no bias
    state.
    """

    measurement_std: float | tuple[float, ...] | None = 0.01
    # 0.2: the lowest velocity error over all held-out cartpole reads; 0.05 errs less away
    # from the rail ends and gave the bundled cartpole agent its best real return (BENCHMARKS.md)
    acceleration_std: float = 0.2
    initial_velocity_std: float = 1.0
    robust: float | None = 3.0
    eps: float = 1e-3  # finite-difference step of the dynamics' Jacobian
    bias_std: float | None = None
    initial_bias_std: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.measurement_std, (list, tuple)):
            object.__setattr__(self, "measurement_std", tuple(float(x) for x in self.measurement_std))
        stds = np.atleast_1d(self.measurement_std if self.measurement_std is not None else 1.0)
        if not ((stds >= 0).all() and (stds > 0).any()):  # 0: a coordinate the encoder holds still, see below
            raise ValueError(f"measurement_std must be positive (or None: the model's measured frame error), "
                             f"got {self.measurement_std!r}")
        for name in ("acceleration_std", "initial_velocity_std", "eps", "initial_bias_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.bias_std is not None and not self.bias_std > 0:
            raise ValueError(f"bias_std must be positive or None, got {self.bias_std!r}")
        if self.robust is not None and not self.robust > 0:
            raise ValueError(f"robust must be a positive number of standard deviations or None, got {self.robust}")

    def resolved(self, model: KeyCLDModel) -> "Filtering":
        """These settings with `measurement_std=None` replaced by `model`'s measured frame error (read from its folder).

        Resolve once where an estimator serves many episodes; `start` resolves what is left.
        """
        if self.measurement_std is not None:
            return self
        folder = getattr(model, "folder", None)
        if folder is None:
            raise ValueError("measurement_std=None reads the model's measured frame error: load the model from "
                             "its folder (load_model), or give measurement_std")
        try:
            measured = read_noise(folder, "frame_std")
        except CheckpointError as err:
            raise CheckpointError(f"the Kalman filter's measurement noise is the model's measured frame error "
                                  f"(measurement_std=None), and {err}; or set measurement_std") from err
        return replace(self, measurement_std=tuple(float(x) for x in measured))

    def start(self, model: KeyCLDModel) -> "KeypointFilter":
        """A fresh estimator for one episode (or a batch of them)."""
        return KeypointFilter(model, self)


class KeypointFilter:
    """`Filtering`'s online state: the mean `(B, D)` ([q, v] flattened, then the acceleration bias if
    `bias_std` is set: D = 4K or 6K) and its covariance `(B, D, D)`.

    Covariances live in the ambient keypoint coordinates; the Jacobian of a step (which
    projects onto the constraint manifold) maps them into the manifold's tangent space, and
    the measurement noise keeps the innovation's covariance invertible.
    """

    def __init__(self, model: KeyCLDModel, settings: Filtering):
        self.model, self.settings = model, settings
        self.mean: torch.Tensor | None = None
        self.cov: torch.Tensor | None = None  # double precision: a stiff step's Jacobian can be large
        self._shape = (model.spec.num_keypoints, 2)
        h, dt, a2 = 2 * model.spec.num_keypoints, model.dt, settings.acceleration_std**2
        self._h = h
        d = 2 * h if settings.bias_std is None else 3 * h
        self._probe = torch.cat([torch.zeros(1, d), settings.eps * torch.eye(d)])  # (D + 1, D): the Jacobian's probes
        # white acceleration noise over one step (the same every step), added before the step
        # so the Jacobian carries it into the tangent space like the covariance itself; the
        # bias drifts as a random walk
        eye = torch.eye(h, dtype=torch.float64)
        self._r = self._measurement_variance(settings.resolved(model).measurement_std)  # (2K,)
        self._noise = torch.block_diag(torch.cat([torch.cat([a2 * dt**3 / 3 * eye, a2 * dt**2 / 2 * eye], 1),
                                                  torch.cat([a2 * dt**2 / 2 * eye, a2 * dt * eye], 1)]),
                                       *([] if settings.bias_std is None else [settings.bias_std**2 * dt * eye]))

    def _measurement_variance(self, std: float | tuple[float, ...]) -> torch.Tensor:
        """Each keypoint coordinate's measurement variance `(2K,)`."""
        h = self._h
        std = np.asarray(std, np.float64)
        if std.ndim == 0:
            std = np.full(h, float(std))
        if std.shape != (h,):
            raise ValueError(f"measurement_std must be one number or {h} (one per keypoint coordinate), got {std.shape[0]}")
        std = torch.from_numpy(std)
        # a coordinate the encoder holds still (a cart on its rail: 0 measured) is still measured to within
        # the smallest of the others
        return std.clamp_min(std[std > 0].min() if (std > 0).any() else 1e-3) ** 2

    def _split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and velocities `(n, K, 2)` of flat states `(n, D)`."""
        h = self._h
        return z[..., :h].reshape(-1, *self._shape), z[..., h: 2 * h].reshape(-1, *self._shape)

    def _join(self, q: torch.Tensor, v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Flat states `(n, D)` of positions and velocities `(n, K, 2)`, the rest as in `z` `(n, D)`."""
        return torch.cat([q.flatten(1), v.flatten(1), z[:, 2 * self._h:]], 1)

    @torch.no_grad()
    def _predict(self, action: torch.Tensor) -> None:
        """Mean and covariance one physics step on, under `action` `(B, A)`."""
        b, d = self.mean.shape
        z = (self.mean[:, None] + self._probe.to(self.mean)).flatten(0, 1)
        q, v = self.model.step(*self.model.project(*self._split(z)), action.to(z).repeat_interleave(d + 1, 0))
        if self.settings.bias_std is not None:  # the bias's push over the step, kept on the manifold
            bias, dt = z[:, 2 * self._h:].reshape(q.shape), self.model.dt
            q, v = self.model.project(q + bias * dt**2 / 2, v + bias * dt)
        out = self._join(q, v, z).reshape(b, d + 1, d)
        jac = ((out[:, 1:] - out[:, :1]) / self.settings.eps).transpose(1, 2).double()  # (B, D out, D in)
        self.mean = out[:, 0]
        self.cov = jac @ (self.cov + self._noise) @ jac.transpose(1, 2)

    @torch.no_grad()
    def _update(self, keypoints: torch.Tensor) -> None:
        """Mean and covariance corrected by a frame's keypoints `(B, K, 2)`."""
        b, d = self.mean.shape
        h, s = self._h, self.settings
        y = keypoints.flatten(1).to(self.cov)
        innovation = y - self.mean[:, :h].double()  # (B, 2K)
        r = self._r.to(y).expand(b, h).clone()
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
        self.mean = self._join(*self.model.project(*self._split(self.mean)), self.mean)

    @torch.no_grad()
    def begin(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Start a batch from states `mean` `(B, 4K)` known to within independent `std` `(4K,)` (in place of a first frame)."""
        b, d = mean.shape[0], self._probe.shape[1]
        self.mean, self.cov = mean.new_zeros(b, d), torch.zeros(b, d, d, dtype=torch.float64)
        self.set_rows(torch.arange(b), mean, std)

    @torch.no_grad()
    def set_rows(self, index: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Start rows `index` again from states `mean` `(n, 4K)` known to within independent `std` `(4K,)` (a bias at 0)."""
        mean, d = mean.to(self.mean), self._probe.shape[1]
        self.mean[index] = self._join(*self.model.project(*self._split(mean), iterations=20), mean.new_zeros(len(mean), d))
        std = torch.cat([std.double(), torch.full((d - len(std),), self.settings.initial_bias_std, dtype=torch.float64)])
        self.cov[index] = torch.diag_embed(std**2)

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
        std = torch.cat([self._r.float().sqrt(), torch.full((h,), s.initial_velocity_std)])
        return torch.cat([keypoints.flatten(1), torch.zeros_like(keypoints.flatten(1))], 1), std

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The state `(B, K, 2)` x2 at the last frame added."""
        if self.mean is None:
            raise ValueError("no frame added yet")
        return self._split(self.mean)

    def observation(self) -> torch.Tensor:
        """The state at the last frame added as a keypoint observation `(B, 4K)`: positions, then velocities."""
        if self.mean is None:
            raise ValueError("no frame added yet")
        return self.mean[:, : 2 * self._h]


Estimator = Tracking | Filtering
ESTIMATORS: dict[str, type] = {"Tracking": Tracking, "Filtering": Filtering}


def estimator_to_dict(estimator: Estimator) -> dict[str, Any]:
    """An estimator's settings as a JSON-ready dict, its kind included."""
    return {"kind": type(estimator).__name__, **asdict(estimator)}


def parse_estimator(text: str) -> Estimator:
    """An estimator from the command line: "window", "filter" (default settings) or `estimator_to_dict`'s JSON."""
    if text in ("window", "filter"):
        return Tracking() if text == "window" else Filtering()
    try:
        d = json.loads(text)
    except ValueError as err:
        raise ValueError(f"a state estimator is 'window', 'filter' or JSON like "
                         f"'{{\"kind\": \"Filtering\", \"bias_std\": 0.03}}', got {text!r}") from err
    if not isinstance(d, dict):
        raise ValueError(f"a state estimator's JSON is an object with its kind and settings, got {text!r}")
    return estimator_from_dict(d)


def estimator_from_dict(d: dict[str, Any]) -> Estimator:
    """The estimator `estimator_to_dict` wrote."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown state estimator {kind!r}; the estimators are {sorted(ESTIMATORS)}")
    names = {f.name for f in fields(ESTIMATORS[kind])}
    if set(d) - names:
        raise ValueError(f"unknown {kind} settings {sorted(set(d) - names)}; the settings are {sorted(names)}")
    return ESTIMATORS[kind](**d)
