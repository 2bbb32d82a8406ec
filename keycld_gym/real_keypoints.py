"""The real task seen through a model's eyes: keypoint observations estimated from real frames.

The twin of the imagined env's `obs_type="keypoints"`, so one keypoint policy runs on both:
every physics step of the real task is rendered from the system camera, and after each
agent step the state at the last frame is estimated from the last `window` frames (and the
actions between them) by the model's own start-state estimation, as the imagined env does
for its resets. Rewards, episode length and spaces are those of the real task.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from keycld_gym.estimation import estimate_state
from keycld_gym.model import KeyCLDModel
from keycld_gym.real_env import RealEnv
from keycld_gym.systems import get_system


class RealKeypointEnv(gym.Env):
    """The real dm_control task with keypoint observations `float32 (4K,)` from `model`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, system: str, model: KeyCLDModel, *, action_repeat: int | None = None,
                 window: int = 9, render_mode: str | None = None):
        if model.spec.name != get_system(system).name:
            raise ValueError(f"model is a {model.spec.name!r} model, not {system!r}")
        self.model = model.eval()
        self.env = RealEnv(system, "pixels", action_repeat=1, render_mode=render_mode)
        self.system = self.env.system
        self.action_repeat = self.system.checked_action_repeat(action_repeat)
        if window < 2:
            raise ValueError(f"window must be at least 2 frames, got {window}")
        self.window, self.render_mode = window, render_mode
        k = self.system.num_keypoints
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4 * k,), dtype=np.float32)
        self.action_space = self.env.action_space
        self.metadata = {**self.metadata, "render_fps": self.env.metadata["render_fps"] // self.action_repeat or 1}
        self._frames: deque = deque(maxlen=window)
        self._actions: deque = deque(maxlen=window - 1)

    def _observe(self) -> np.ndarray:
        frames = torch.from_numpy(np.stack(self._frames))
        n = len(frames)
        with torch.no_grad():
            kp = self.model.encode(frames)[None]  # (1, n, K, 2)
        acts = torch.from_numpy(np.stack(self._actions)[None].astype(np.float32)) if n > 1 else None
        if n < 2:  # the very first frame: position only
            q, v = self.model.project(kp[:, 0], torch.zeros_like(kp[:, 0]), iterations=20)
        else:
            q, v = estimate_state(self.model, kp, acts[:, -(n - 1):])
        self.last_state = (q[0], v[0])
        return torch.cat([q[0].flatten(), v[0].flatten()]).numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        frame, info = self.env.reset(seed=seed, options=options)
        self._frames.clear()
        self._actions.clear()
        self._frames.append(frame)
        # a velocity needs more than one frame: the episode's first physics steps are taken with
        # a zero action to fill the window; they count towards the episode and its return
        zero = np.zeros(self.action_space.shape, np.float32)
        self._pending = 0.0
        for _ in range(self.window - 1):
            frame, reward, _, _, info = self.env.step(zero)
            self._frames.append(frame)
            self._actions.append(zero)
            self._pending += reward
        self._physics_steps = self.window - 1
        return self._observe(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = self.env._check_action(action).astype(np.float32)
        total, terminated, truncated, info = self._pending, False, False, {}
        self._pending = 0.0
        for _ in range(self.action_repeat):
            frame, reward, terminated, truncated, info = self.env.step(action)
            self._frames.append(frame)
            self._actions.append(action)
            total += reward
            self._physics_steps += 1
            if terminated or truncated:
                break
        truncated = truncated or self._physics_steps >= self.system.episode_steps
        return self._observe(), total, bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
