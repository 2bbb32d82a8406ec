"""The real task seen through a model's eyes: keypoint observations estimated from real frames.

The twin of the imagined env's `obs_type="keypoints"`, so one keypoint policy runs on both:
every physics step of the real task is rendered from the system camera, and after each
agent step the state at the last frame is estimated from the last `window` frames and the
actions between them by the model's own start-state estimation, as the imagined env does
for its resets. Rewards, episode length and spaces are those of the real task. The window
is 17 frames (two cartpole agent steps).

Estimation tracks (`Tracking`): after the episode's first (cold, coarse-to-fine) fit, each
window is refined from the previous fit's state at the window's first frame, which is
already close, by Gauss-Newton (`refine_trajectory`) instead of twenty L-BFGS iterations.
Huber weights (keypoints more than 0.02 image units off the fitted trajectory count less)
keep the encoder's rare glitched frames (pole keypoint errors up to 0.5 units where the
typical error is 0.02) from pulling the fit. Measured against the true state on held-out
sequences, the velocities err by 0.12 / 0.12 / 0.09 image units/s RMS (cart x, pole tip
x, y), against 0.13 / 0.13 / 0.10 by plain least squares and 0.15 by the cold L-BFGS fit
alone (BENCHMARKS.md, sim-to-real). A 33-frame window has still smaller
errors away from the rail ends but larger ones near them (the stiff contact is the
dynamics' weakest part), and measured, it lowered an agent's real return (BENCHMARKS.md).
A window on which the model's rollout is not finite (an untrained model's) gives the frames'
own positions and differences instead (`estimation.finite_or_kinematic`): never a NaN.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from keycld_gym.model.estimation import fit_trajectory, refine_trajectory
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.actions import checked_action, repeat_action
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import WINDOWS, SystemSpec, get_system


@dataclass(frozen=True)
class Tracking:
    """How each agent step's keypoint state is estimated from the last frames (module docstring)."""

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


class RealKeypointEnv(gym.Env):
    """The real dm_control task with keypoint observations `float32 (4K,)` from `model`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, system: str, model: KeyCLDModel, *, action_repeat: int | None = None,
                 tracking: Tracking = Tracking(), render_mode: str | None = None):
        if model.spec.name != get_system(system).name:
            raise ValueError(f"model is a {model.spec.name!r} model, not {system!r}")
        self.model = model.eval()
        self.env = RealEnv(system, "pixels", action_repeat=1, render_mode=render_mode)
        self.system = self.env.system
        self.action_repeat = self.system.checked_action_repeat(action_repeat)
        self.tracking, self.render_mode = tracking, render_mode
        window = self.window = tracking.frames(self.system)
        k = self.system.num_keypoints
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4 * k,), dtype=np.float32)
        self.action_space = self.env.action_space
        self.metadata = {**self.metadata, "render_fps": self.env.metadata["render_fps"] // self.action_repeat or 1}
        self._keypoints: deque = deque(maxlen=window)  # encoded frames, (K, 2) each
        self._actions: deque = deque(maxlen=window - 1)
        self._fit: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (first step, qs, vs)

    def _add_frame(self, frame: np.ndarray) -> None:
        self.last_frame = frame
        with torch.no_grad():
            self._keypoints.append(self.model.encode(torch.from_numpy(frame[None]))[0])

    def _observe(self) -> np.ndarray:
        kp = torch.stack(tuple(self._keypoints))[None]  # (1, n, K, 2)
        n = kp.shape[1]
        acts = torch.from_numpy(np.stack(self._actions)[None].astype(np.float32))
        first = self._physics_steps - (n - 1)  # physics step of the window's first frame
        init = None
        if self._fit is not None and 0 <= first - self._fit[0] < self._fit[1].shape[0]:
            i = first - self._fit[0]
            init = (self._fit[1][i][None], self._fit[2][i][None])
        qs, vs = self.tracking.fit(self.model, kp, acts, init)
        self._fit = (first, qs[0], vs[0])
        q, v = qs[0, -1], vs[0, -1]
        self.last_state = (q, v)
        return torch.cat([q.flatten(), v.flatten()]).numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        frame, info = self.env.reset(seed=seed, options=options)
        self._keypoints.clear()
        self._actions.clear()
        self._fit = None
        self._add_frame(frame)
        # a velocity needs more than one frame: the episode's first agent step is taken with a
        # zero action (the window then grows to its full length); it counts towards the return
        zero = np.zeros(self.action_space.shape, np.float32)
        self._pending = 0.0
        for _ in range(min(self.action_repeat, self.window - 1)):
            frame, reward, _, _, info = self.env.step(zero)
            self._add_frame(frame)
            self._actions.append(zero)
            self._pending += reward
        self._physics_steps = len(self._actions)
        return self._observe(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = checked_action(action, self.action_space.shape).astype(np.float32)

        def physics_step() -> tuple[np.ndarray, float, bool, bool, dict]:
            frame, reward, terminated, truncated, info = self.env.step(action)
            self._add_frame(frame)
            self._actions.append(action)
            return frame, reward, terminated, truncated, info

        pending, self._pending = self._pending, 0.0
        _, total, terminated, truncated, info, taken = repeat_action(physics_step, self.action_repeat, total=pending)
        self._physics_steps += taken
        truncated = truncated or self._physics_steps >= self.system.episode_steps
        return self._observe(), total, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
