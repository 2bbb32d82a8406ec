"""The real task seen through perfect eyes: keypoint observations of its true state (a reference).

The twin of `RealKeypointEnv` with the estimate taken out: after each agent step the true
bodies' positions and velocities (`sim/keypoint_truth.py`) are mapped into a model's
keypoint space by the affine `KeypointMap` the diagnostics fit on held-out frames, so a
policy of the model's keypoint observations runs on it unchanged. Nothing is rendered, so
it steps at the physics' speed. Two references use it: an agent of imagination fed the true
state (what the real-side estimate costs), and the same agent recipe trained on it (what
the RL alone reaches on this task, with no model at all).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from keycld_gym.sim.keypoint_truth import KeypointMap, true_motion
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import SystemSpec


class TrueKeypointEnv(gym.Env):
    """The real dm_control task with keypoint observations `float32 (4K,)` of its true state, mapped by `kmap`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, system: str | SystemSpec, kmap: KeypointMap, *, action_repeat: int | None = None,
                 render_mode: str | None = None):
        if np.shape(kmap.a) != (2, 2) or np.shape(kmap.b) != (2,):
            raise ValueError(f"a keypoint map is a 2x2 matrix and a 2-vector, got {np.shape(kmap.a)} and {np.shape(kmap.b)}")
        self.env = RealEnv(system, "state", action_repeat=action_repeat, render_mode=render_mode)
        self.system, self.kmap, self.render_mode = self.env.system, kmap, render_mode
        k = self.system.num_keypoints
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4 * k,), dtype=np.float32)
        self.action_space = self.env.action_space
        self.metadata = {**self.metadata, "render_fps": self.env.metadata["render_fps"]}

    def _observe(self) -> np.ndarray:
        p, v = true_motion(self.env.physics, self.system)
        return np.concatenate([self.kmap.points(p).ravel(), self.kmap.vectors(v).ravel()]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        _, info = self.env.reset(seed=seed, options=options)
        return self._observe(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        _, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
