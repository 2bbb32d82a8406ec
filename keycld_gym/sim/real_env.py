"""The real tasks: standard, unmodified dm_control suite tasks as Gymnasium envs.

The dm_control task runs behind shimmy's `DmControlCompatibilityV0` (reset seeding, the
time limit as truncation); this module adds what the learned env must match exactly: pixel
frames from the system's camera, the action repeat with summed rewards, and the true
physical state in `info` for data collection and evaluation only.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from keycld_gym.sim.actions import checked_action, repeat_action
from keycld_gym.sim.camera import ObservationCamera, import_dm_control
from keycld_gym.sim.systems import SystemSpec, get_system

OBS_TYPES = ("pixels", "state")


def load_dm_control_env(spec: SystemSpec, seed: int | np.random.RandomState | None = None) -> Any:
    """The raw dm_control suite environment of a system (checked against its spec)."""
    suite, _ = import_dm_control()
    env = suite.load(spec.domain, spec.task, task_kwargs={"random": seed})
    dt = float(env.physics.model.opt.timestep)
    if abs(dt - spec.physics_dt) > 1e-9 or env.control_timestep() != dt:
        raise RuntimeError(f"{spec.name}: dm_control physics timestep {dt} != spec {spec.physics_dt}")
    if int(round(env._step_limit)) != spec.episode_steps:
        raise RuntimeError(f"{spec.name}: dm_control episode of {env._step_limit} steps != spec {spec.episode_steps}")
    return env


class RealEnv(gym.Env):
    """A standard dm_control task with pixel (or true-state) observations and action repeat.

    Observation: `uint8 (H, W, 3)` frames of the system camera (``obs_type="pixels"``), or
    dm_control's own state observation flattened to float32 (``"state"``, a reference).
    Action: `Box(-1, 1, (action_dim,))`, held for `action_repeat` physics steps, rewards
    summed; out-of-range actions are clipped as the real actuator does.
    Episodes are truncated after `system.episode_steps` physics steps.
    `info["qpos"]`, `info["qvel"]`: the true physical state (never for a policy).
    `reset(options={"qpos": q, "qvel": v})` starts from a given physical state.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        system: str | SystemSpec,
        obs_type: str = "pixels",
        *,
        image_size: tuple[int, int] | None = None,
        action_repeat: int | None = None,
        render_mode: str | None = None,
    ):
        spec = get_system(system)
        import_dm_control()  # before shimmy imports it: GL backend failures become clear errors
        from shimmy.dm_control_compatibility import DmControlCompatibilityV0

        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        repeat = spec.checked_action_repeat(action_repeat)
        camera = spec.camera
        if image_size is not None:
            height, width = (int(s) for s in image_size)
            camera = camera.resized(height, width)

        self.system = spec
        self.obs_type = obs_type
        self.action_repeat = repeat
        self.render_mode = render_mode
        self.camera_spec = camera
        self._dm_env = load_dm_control_env(spec)
        self._env = DmControlCompatibilityV0(self._dm_env)
        self.physics = self._dm_env.physics
        self._camera: ObservationCamera | None = None
        self._render_camera: ObservationCamera | None = None
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / (repeat * spec.physics_dt)))}

        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=self._env.action_space.shape, dtype=np.float32)
        if obs_type == "pixels":
            self.observation_space = gym.spaces.Box(0, 255, shape=(camera.height, camera.width, 3), dtype=np.uint8)
        else:
            size = sum(int(np.prod(s.shape)) for s in self._env.observation_space.spaces.values())
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)
        self._physics_steps = 0

    # -- Gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        options = options or {}
        unknown = set(options) - {"qpos", "qvel"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: 'qpos', 'qvel'")
        super().reset(seed=seed)
        dm_obs, _ = self._env.reset(seed=seed)
        if "qpos" in options or "qvel" in options:
            self.set_state(options.get("qpos"), options.get("qvel"))
            dm_obs = self._dm_env.task.get_observation(self.physics)
        self._physics_steps = 0
        return self._observe(dm_obs), self.state_info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = checked_action(action, self.action_space.shape)
        dm_obs, total, terminated, truncated, _, taken = repeat_action(lambda: self._env.step(action), self.action_repeat)
        self._physics_steps += taken
        truncated = truncated or self._physics_steps >= self.system.episode_steps
        return self._observe(dm_obs), total, terminated, truncated, self.state_info()

    def render(self) -> np.ndarray | None:
        """A larger view of the observation camera (`render_scale` times the frame)."""
        if self.render_mode != "rgb_array":
            return None
        if self._render_camera is None:
            s = self.system.render_scale
            self._render_camera = ObservationCamera(
                self.physics, self.camera_spec.resized(self.camera_spec.height * s, self.camera_spec.width * s)
            )
        return self._render_camera.render()

    def close(self) -> None:
        self._camera = self._render_camera = None
        self._env.close()

    # -- helpers ------------------------------------------------------------------------
    def set_state(self, qpos: np.ndarray | None = None, qvel: np.ndarray | None = None) -> None:
        """Put the physics in a given state (validated against the model's sizes)."""
        nq, nv = self.physics.model.nq, self.physics.model.nv
        names = ", ".join(self.system.qpos_names)
        with self.physics.reset_context():
            if qpos is not None:
                self.physics.data.qpos[:] = _checked_vector(qpos, nq, f"qpos [{names}]", self.system.name)
            if qvel is not None:
                self.physics.data.qvel[:] = _checked_vector(qvel, nv, f"qvel [{names}]", self.system.name)

    @property
    def camera(self) -> ObservationCamera:
        """The observation camera (created on first use)."""
        if self._camera is None:
            self._camera = ObservationCamera(self.physics, self.camera_spec)
        return self._camera

    @property
    def task(self) -> Any:
        """The dm_control task (its `get_reward(physics)` scores any state set in `physics`)."""
        return self._dm_env.task

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape (H, W, 3) of the camera frames."""
        return (self.camera_spec.height, self.camera_spec.width, 3)

    @property
    def physics_steps(self) -> int:
        """Physics steps taken in this episode."""
        return self._physics_steps

    def _observe(self, dm_obs: dict) -> np.ndarray:
        if self.obs_type == "pixels":
            return self.camera.render()
        return np.concatenate([np.ravel(v) for v in dm_obs.values()]).astype(np.float32)

    def state_info(self) -> dict:
        """The true state and step count, as returned in `info`."""
        return {
            "qpos": self.physics.data.qpos.copy(),
            "qvel": self.physics.data.qvel.copy(),
            "physics_steps": self._physics_steps,
        }


def _checked_vector(value: Any, size: int, what: str, system: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,):
        raise ValueError(f"{system}: {what} must have shape ({size},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{system}: {what} must be finite, got {arr}")
    return arr
