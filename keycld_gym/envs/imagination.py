"""The learned simulator: a batch of N imagined systems stepped as one tensor batch.

The physics is written once, here; the single env (`KeyCLDEnv`) is a batch of one and the
vector env (`KeyCLDVectorEnv`) a batch of N. State: keypoints q and velocities v, each
`(N, K, 2)` in image units. One agent step holds the action for `action_repeat` physics
steps of the model (RK4 sub-steps + projection onto the constraints) and sums the reward
head's prediction over them.

With an ensemble (`model.ensemble`, `keycld_gym.model.ensemble`), every member steps from
each env's state, and the env moves on as `ensemble_mode` says: `"member"`, the member drawn
for the env's episode (as MBPO's model rollouts do), or `"mean"`, the members' mean state,
projected onto the constraints, or `"off"`, the model's own dynamics alone. The members'
spread after the agent step is the env's `uncertainty` `(N,)`, in pixels.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from keycld_gym.model.encoder import foreground_mask
from keycld_gym.model.estimation import estimate_state, estimate_state_from_frames
from keycld_gym.model.keycld import KeyCLDModel

# Start states of start banks, shared by every env of the process: the training env, its
# evaluation env and the final evaluation's would each fit the same bank (seconds each).
# Keyed by the model's parameters and the bank's contents, so a changed model refits.
_BANK_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
# a reset from frames fits the state over its window: a few tenths of a second (the start window
# is 0.32 s); longer spans cost seconds of fitting and no precision
MAX_START_WINDOW_S = 2.0
# the moving parts of a system cover a few percent of its frame; frames where "foreground" covers
# this share or more are noise or another scene, whose fitted state would be meaningless
MAX_FOREGROUND_SHARE = 0.5
_BANK_CACHE_SIZE = 16


def _bank_key(model: KeyCLDModel, bank: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha1()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for name in ("frames", "actions"):
        digest.update(np.ascontiguousarray(bank[name]).tobytes())
    return digest.hexdigest()


ENSEMBLE_MODES = ("member", "mean", "off")


class Imagination:
    """N imagined copies of one system under a trained model (and its ensemble, if it has one)."""

    def __init__(self, model: KeyCLDModel, num_envs: int, action_repeat: int, device: str | torch.device = "cpu",
                 ensemble_mode: str = "member"):
        if ensemble_mode not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble_mode must be one of {ENSEMBLE_MODES}, got {ensemble_mode!r}")
        self.model = model.to(device).eval()
        # "off": the model's own dynamics alone (member 0), as a model without members
        self.ensemble = None if ensemble_mode == "off" else model.ensemble
        self.ensemble_mode = ensemble_mode
        # per env: the ensemble member its episode follows ("member" mode), and the members'
        # spread after its last step (pixels; 0 until it steps)
        self.member = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.uncertainty = torch.zeros(num_envs, device=device)
        self.spec = model.spec
        self.num_envs, self.action_repeat, self.device = num_envs, action_repeat, torch.device(device)
        k = self.spec.num_keypoints
        self.q = torch.zeros(num_envs, k, 2, device=self.device)
        self.v = torch.zeros(num_envs, k, 2, device=self.device)
        # per env: the model integrates gain * action (domain randomisation; the reward head
        # and its control cost see the commanded action)
        self.action_gain = torch.ones(num_envs, 1, device=self.device)
        h, w = self.spec.image_shape[:2]
        # a state is diverged once it is non-finite or a keypoint is far outside the frame
        self.bound = 2.0 * max(1.0, w / h) + 1.0
        self._bank_states: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # by id(bank["frames"])
        # positions after each physics step of the last agent step `(N, action_repeat, K, 2)`:
        # the frames a real camera would have seen; kept only when an estimator in the loop
        # asks (`record_frames`), so plain imagination does no extra work
        self.record_frames = False
        self.frame_keypoints = torch.zeros(num_envs, action_repeat, k, 2, device=self.device)

    # -- start states -----------------------------------------------------------------------
    def bank_states(self, bank: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """States `(M, K, 2)` x2 at the last frame of each start-bank window (computed once per model and bank)."""
        key = id(bank["frames"])
        if key not in self._bank_states:
            shared = _bank_key(self.model, bank)
            if shared not in _BANK_CACHE:
                frames = torch.from_numpy(bank["frames"]).to(self.device)
                actions = torch.from_numpy(bank["actions"]).float().to(self.device)
                q, v = estimate_state_from_frames(self.model, frames, actions)
                if len(_BANK_CACHE) >= _BANK_CACHE_SIZE:
                    _BANK_CACHE.pop(next(iter(_BANK_CACHE)))
                _BANK_CACHE[shared] = (q.cpu(), v.cpu())
            q, v = _BANK_CACHE[shared]
            self._bank_states[key] = (q.to(self.device), v.to(self.device))
        return self._bank_states[key]

    def set_state(self, index: np.ndarray | slice, q: torch.Tensor, v: torch.Tensor) -> None:
        """Put envs `index` in state (q, v) `(n, K, 2)`, projected onto the constraints."""
        with torch.no_grad():
            q, v = self.model.project(q.to(self.device, torch.float32), v.to(self.device, torch.float32), iterations=20)
        bad = ~(torch.isfinite(q).all((1, 2)) & torch.isfinite(v).all((1, 2)) & (q.abs() < self.bound).all((1, 2)))
        if bad.any():  # an observation is never non-finite: refuse the state, keep the envs as they were
            raise ValueError(f"{int(bad.sum())} start state(s) leave the frame or are not finite once projected onto "
                             f"the model's constraints (keypoints must lie within {self.bound:.1f} image units of the "
                             "centre): pass a state near the model's keypoints, e.g. from an env's info['keypoints']")
        self.q[index], self.v[index] = q, v
        self.uncertainty[index] = 0.0

    def draw_members(self, index: np.ndarray, rng: np.random.Generator) -> None:
        """Draw the ensemble member each of envs `index` follows for its new episode ("member" mode)."""
        if self.ensemble is not None:
            drawn = rng.integers(0, self.ensemble.size, len(index))
            self.member[torch.as_tensor(np.asarray(index))] = torch.from_numpy(drawn).to(self.device)

    def state_from_frames(self, frames: np.ndarray, frame_dt: float, actions: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The state at the last of n >= 2 real frames uint8 `(n, H, W, 3)` taken `frame_dt` s apart.

        Frames further apart than one physics step are bridged by holding each action over
        the physics steps between them (`frame_dt` must be a multiple of the physics step).
        """
        spec = self.spec
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[0] < 2 or frames.shape[1:] != spec.image_shape or frames.dtype != np.uint8:
            raise ValueError(
                f"options['frames'] must be uint8 (n >= 2, {', '.join(map(str, spec.image_shape))}) consecutive "
                f"real frames, got {frames.dtype} {frames.shape}"
            )
        n = frames.shape[0]
        nu = self.model.action_dim
        acts = np.zeros((n - 1, nu), np.float32) if actions is None else np.asarray(actions, np.float32)
        if acts.shape != (n - 1, nu) or not np.all(np.isfinite(acts)):
            raise ValueError(f"options['actions'] must be finite with shape ({n - 1}, {nu}) for {n} frames, got {acts.shape}")
        if not np.isfinite(frame_dt):
            raise ValueError(f"options['frame_dt'] must be a finite number of seconds, got {frame_dt}")
        ratio = frame_dt / spec.physics_dt
        stride = int(round(ratio))
        if stride < 1 or abs(ratio - stride) > 1e-6:
            raise ValueError(f"options['frame_dt'] must be a positive multiple of the physics step {spec.physics_dt} s, got {frame_dt}")
        if (n - 1) * frame_dt > MAX_START_WINDOW_S:
            raise ValueError(f"{n} frames {frame_dt} s apart span {(n - 1) * frame_dt:.2f} s; a start window spans at most "
                             f"{MAX_START_WINDOW_S} s (frame_dt is in seconds: {spec.physics_dt} is one physics step)")
        threshold = self.model.config.encoder.foreground_threshold
        if threshold > 0:
            share = foreground_mask(torch.from_numpy(frames).to(self.device), self.model.background, threshold).mean((1, 2))
            if not ((share > 0) & (share < MAX_FOREGROUND_SHARE)).all():
                raise ValueError(
                    f"options['frames'] must show the system in front of the model's background: the moving parts cover "
                    f"{float(share.min()):.1%} to {float(share.max()):.1%} of these frames (blank frames show none, noise "
                    f"or another scene almost all); pass frames of this system's camera ({spec.name})")
        with torch.no_grad():
            kp = self.model.encode(torch.from_numpy(frames).to(self.device))  # (n, K, 2)
        # each action held over the physics steps between its two frames
        physics_actions = torch.from_numpy(np.repeat(acts, stride, 0))[None].to(self.device)
        q, v = estimate_state(self.model, kp[None], physics_actions, stride=stride)
        return q[0], v[0]

    # -- stepping ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance all N by one agent step under actions `(N, A)` in [-1, 1]; returns (reward `(N,)`, diverged `(N,)` bool)."""
        reward = torch.zeros(self.num_envs, device=self.device)
        q, v = self.q, self.v
        pushed = actions * self.action_gain
        frames = []
        if self.ensemble is not None:
            members = self.ensemble.size
            qa, va = q.expand(members, *q.shape), v.expand(members, *v.shape)
            envs = torch.arange(self.num_envs, device=self.device)
        for _ in range(self.action_repeat):
            if self.ensemble is None:
                q, v = self.model.step(q, v, pushed)
            else:
                qa, va = self.ensemble.step(qa, va, pushed)
                if self.ensemble_mode == "member":
                    q, v = qa[self.member, envs], va[self.member, envs]
                else:
                    q, v = self.model.project(qa.mean(0), va.mean(0))
            if self.record_frames:
                frames.append(q)
            reward += self.model.reward(q, v, actions).clamp(0.0, 1.0)  # the suite's rewards lie in [0, 1]
        diverged = ~(torch.isfinite(q).all((1, 2)) & torch.isfinite(v).all((1, 2)) & (q.abs() < self.bound).all((1, 2)))
        diverged |= ~torch.isfinite(reward)
        if self.ensemble is not None:
            spread = self.ensemble.disagreement(qa)
            # a member that blew up (even one the env does not follow) means the model does not
            # know this state at all: the episode ends there, as on the env's own divergence
            diverged |= ~torch.isfinite(spread)
            self.uncertainty = torch.where(diverged, torch.zeros_like(spread), spread)
        # a diverged env keeps its last finite state, so no observation is ever non-finite
        keep = diverged[:, None, None]
        self.q, self.v = torch.where(keep, self.q, q), torch.where(keep, self.v, v)
        if self.record_frames:
            self.frame_keypoints = torch.where(keep[:, None], self.q[:, None], torch.stack(frames, 1))
        return torch.where(diverged, torch.zeros_like(reward), reward), diverged

    @torch.no_grad()
    def pixels(self, index: Any = slice(None)) -> np.ndarray:
        """Imagined frames uint8 `(n, H, W, 3)` of envs `index`."""
        frames = self.model.render(self.q[index])
        return (frames * 255).round().to(torch.uint8).cpu().numpy()

    def keypoints(self, index: Any = slice(None)) -> np.ndarray:
        """Keypoint observations float32 `(n, 4K)`: positions then velocities, flattened."""
        return torch.cat([self.q[index].flatten(1), self.v[index].flatten(1)], 1).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def info(self, index: Any = slice(None)) -> dict[str, np.ndarray]:
        """Keypoints, velocities, constraint violation and energies of envs `index`."""
        q, v = self.q[index], self.v[index]
        out = {  # copies: the state tensors are updated in place on reset
            "keypoints": q.cpu().numpy().copy(),
            "velocities": v.cpu().numpy().copy(),
            "constraint_violation": self.model.constraints.phi(q).abs().amax(-1).cpu().numpy(),
        }
        if self.ensemble is not None:
            out["uncertainty"] = self.uncertainty[index].cpu().numpy().copy()
        if self.model.config.dynamics.kind != "neural_ode":
            for name, val in self.model.dynamics.energy(q, v).items():
                out[f"energy_{name}"] = val.cpu().numpy()
        return out
