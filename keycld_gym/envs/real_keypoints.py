"""The real task seen through a model's eyes: keypoint observations estimated from real frames.

The twin of the imagined env's `obs_type="keypoints"`, so one keypoint policy runs on both:
every physics step of the real task is rendered from the system camera and encoded, and
after each agent step an online estimator (`model/tracking.py`) gives the state at the
last frame. Rewards, episode length and spaces are those of the real task.

Two estimators: `Tracking` (the default), the model's own start-state estimation over the
last 17 frames (two cartpole agent steps), each window refined from the previous one's fit
by Gauss-Newton with Huber weights against the encoder's rare glitched frames; and
`Filtering`, an extended Kalman filter with the learned dynamics, one cheap update per
frame, optionally with an acceleration-bias state. An agent's recipe names the one its
real env uses (`AgentRecipe.real_estimator`; the cartpole's is the filter with the bias
state). Measured against the true state on held-out sequences, cartpole (BENCHMARKS.md,
issue 19 and sim-to-real): the window's velocities err by about 0.1 image units/s RMS, the
filter's by less away from the rail ends and by more at them, where the stiff contact is
the dynamics' weakest part. A model whose rollout is not finite
(an untrained one's) still gives finite states (the frames' own positions and
differences, or the filter started again from the frame): never a NaN.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from keycld_gym.data.episodes import EpisodeRecorder
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.tracking import Estimator, Tracking
from keycld_gym.sim.actions import checked_action, repeat_action
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import get_system


class RealKeypointEnv(gym.Env):
    """The real dm_control task with keypoint observations `float32 (4K,)` from `model`.

    `record`: keep every physics step's frame, action and reward (`self.recorder`, an
    `EpisodeRecorder`; `take_episodes`): what the real-task loop learns from.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, system: str, model: KeyCLDModel, *, action_repeat: int | None = None,
                 tracking: Estimator = Tracking(), render_mode: str | None = None, record: bool = False):
        if model.spec.name != get_system(system).name:
            raise ValueError(f"model is a {model.spec.name!r} model, not {system!r}")
        if not isinstance(tracking, Estimator):
            raise TypeError(f"tracking must be a Tracking or Filtering, got {type(tracking).__name__}")
        self.model = model.eval()
        self.recorder = EpisodeRecorder() if record else None
        self.env = RealEnv(system, "pixels", action_repeat=1, render_mode=render_mode)
        self.system = self.env.system
        self.action_repeat = self.system.checked_action_repeat(action_repeat)
        # the model's files are read once here, not at every reset's `start`
        self.tracking, self.render_mode = tracking.resolved(self.model), render_mode
        k = self.system.num_keypoints
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4 * k,), dtype=np.float32)
        self.action_space = self.env.action_space
        self.metadata = {**self.metadata, "render_fps": self.env.metadata["render_fps"] // self.action_repeat or 1}

    def _add_frame(self, frame: np.ndarray, action: np.ndarray | None) -> None:
        self.last_frame = frame
        with torch.no_grad():
            keypoints = self.model.encode(torch.from_numpy(frame[None]))
        self._estimator.add(keypoints, None if action is None else torch.from_numpy(action[None]))

    def _observe(self) -> np.ndarray:
        q, v = self._estimator.estimate()
        self.last_state = (q[0], v[0])
        return torch.cat([q[0].flatten(), v[0].flatten()]).numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        frame, info = self.env.reset(seed=seed, options=options)
        if self.recorder is not None:
            self.recorder.begin(frame)
        self._estimator = self.tracking.start(self.model)
        self._add_frame(frame, None)
        # a velocity needs more than one frame: the episode's first agent step is taken with a
        # zero action; it counts towards the return
        zero = np.zeros(self.action_space.shape, np.float32)
        self._pending = 0.0
        for _ in range(self.action_repeat):
            frame, reward, _, _, info = self.env.step(zero)
            self._record(zero, reward, frame)
            self._add_frame(frame, zero)
            self._pending += reward
        self._physics_steps = self.action_repeat
        return self._observe(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = checked_action(action, self.action_space.shape).astype(np.float32)

        def physics_step() -> tuple[np.ndarray, float, bool, bool, dict]:
            frame, reward, terminated, truncated, info = self.env.step(action)
            self._record(action, reward, frame)
            self._add_frame(frame, action)
            return frame, reward, terminated, truncated, info

        pending, self._pending = self._pending, 0.0
        _, total, terminated, truncated, info, taken = repeat_action(physics_step, self.action_repeat, total=pending)
        self._physics_steps += taken
        truncated = truncated or self._physics_steps >= self.system.episode_steps
        if (terminated or truncated) and self.recorder is not None:
            self.recorder.end()
        return self._observe(), total, terminated, truncated, info

    def _record(self, action: np.ndarray, reward: float, frame: np.ndarray) -> None:
        if self.recorder is not None:
            self.recorder.step(action, reward, frame)

    def take_episodes(self) -> list[dict[str, np.ndarray]]:
        """The recorded episodes, the running one included (ended here); see `EpisodeRecorder.take`."""
        if self.recorder is None:
            raise RuntimeError("this env records nothing: make it with record=True")
        self.recorder.end()
        return self.recorder.take()

    def render(self) -> np.ndarray | None:
        return self.env.render()

    def close(self) -> None:
        self.env.close()
