"""stable-baselines3 on a gymnasium VectorEnv: SB3's VecEnv API over `KeyCLDVectorEnv`.

SB3 does not accept a gymnasium VectorEnv. `SB3VecEnv` adapts one whose autoreset mode is
SAME_STEP (as `KeyCLDVectorEnv`): dones merge terminated and truncated, the last
observation of an ended episode goes to `info["terminal_observation"]`, and a time-limit or
divergence end is flagged `info["TimeLimit.truncated"]`, so SB3 bootstraps through it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvStepReturn,
)


class SB3VecEnv(VecEnv):
    """SB3 `VecEnv` view of a gymnasium `VectorEnv` with SAME_STEP autoreset."""

    def __init__(self, venv: VectorEnv):
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"SB3VecEnv needs a vector env with autoreset mode SAME_STEP, got {mode!r}")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> Any:
        seed = self._seeds[0]
        obs, infos = self.venv.reset(seed=seed, options=self._options[0] or None)
        self.reset_infos = [self._info_at(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        dones = terminated | truncated
        out = []
        for i in range(self.num_envs):
            info = self._info_at(infos, i)
            if dones[i]:
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            out.append(info)
        return obs, rewards.astype(np.float32), dones, out

    @staticmethod
    def _info_at(infos: dict, i: int) -> dict:
        return {k: v[i] for k, v in infos.items() if not k.startswith(("final_", "_"))}

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(self._get_indices(indices))
