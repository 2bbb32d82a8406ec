"""KeyCLD-<System>-v0: the learned simulator behind the Gymnasium API, single and batched.

`KeyCLDEnv` and `KeyCLDVectorEnv` have the spaces of `make_real_env(system, obs_type)`:
pixels `uint8 (H, W, 3)` of the system's camera, keypoints `float32 (4K,)` (positions,
then velocities, image units), or a dict of both; actions `Box(-1, 1)`; episodes of
`episode_steps` physics steps at the system's action repeat. Both step the same batched
physics (`Imagination`), the single env as a batch of one.

reset options:
    {"frames": uint8 (n >= 2, H, W, 3), "frame_dt": s, "actions": (n - 1, A)}: start from
        real consecutive frames (the last is the start) by the model's start-state estimation;
    {"state": (4K,) or two (K, 2)}: start from a keypoint state;
    none: a window of the start frames shipped with the weights (the task's own resets),
        chosen by the env's seeded generator.

A model with an ensemble of dynamics (`keycld_gym.model.ensemble`) puts the members'
disagreement on the state after each step in `info["uncertainty"]` (pixels of the frame: the
members' spread of predicted keypoints). Options at make time: `ensemble_mode` ("member": each
episode follows a member drawn at its reset, as MBPO; "mean": the members' mean state; "off":
the model's own dynamics alone, no uncertainty),
`uncertainty_penalty=λ` (the reward minus λ times the disagreement, as MOPO) and
`uncertainty_limit=u` (the episode is truncated where the disagreement passes u pixels, as
MOReL); both off by default, and both need an ensemble. `energy_shaping=c` adds
c (Phi(s') - Phi(s)) to each step's reward, Phi the model's `EnergyPotential` (how far the
state's energy is from the upright equilibrium's): a potential-based shaping, whose sum over
an episode is the unshaped sum plus c (Phi(s_T) - Phi(s_0)); off by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from keycld_gym.envs.imagination import Imagination
from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.model.energy import EnergyPotential
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.start_bank import EXPLORING_STARTS, START_BANK, read_start_bank
from keycld_gym.sim.actions import checked_action
from keycld_gym.sim.systems import get_system

OBS_TYPES = ("pixels", "keypoints", "dict")


def _load(system: str, checkpoint: str | Path | KeyCLDModel | None, device: str) -> tuple[KeyCLDModel, Path | None]:
    spec = get_system(system)
    if isinstance(checkpoint, KeyCLDModel):
        return checkpoint, None
    path = checkpoint_folder(checkpoint, spec.name)
    model = load_model(path, device=device)
    if model.spec.name != spec.name:
        raise CheckpointError(f"checkpoint {path} is a {model.spec.name!r} model, not {spec.name!r}")
    return model, path


def _uncertainty_options(model: KeyCLDModel, penalty: float, limit: float | None,
                         mode: str) -> tuple[float, float | None]:
    """`uncertainty_penalty` and `uncertainty_limit`, checked: finite, non-negative (positive limit), with an ensemble."""
    penalty = float(penalty)
    if not (np.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"uncertainty_penalty must be a finite number >= 0, got {penalty!r}")
    if limit is not None:
        limit = float(limit)
        if not (np.isfinite(limit) and limit > 0):
            raise ValueError(f"uncertainty_limit must be a positive number of pixels, got {limit!r}")
    if (penalty > 0 or limit is not None) and (model.ensemble is None or mode == "off"):
        raise ValueError("uncertainty_penalty and uncertainty_limit need a model with an ensemble of dynamics: add "
                         "members with `keycld-gym ensemble --checkpoint MODEL --out RUN`")
    return penalty, limit


class _Spaces:
    """Set-up, spaces and observation assembly shared by the single and vector env."""

    def _setup(self, system: str, checkpoint: str | Path | KeyCLDModel | None, obs_type: str,
               action_repeat: int | None, device: str, num_envs: int, ensemble_mode: str = "member",
               uncertainty_penalty: float = 0.0, uncertainty_limit: float | None = None,
               energy_shaping: float = 0.0) -> None:
        self.model, path = _load(system, checkpoint, device)
        self.checkpoint_path = path  # the model folder (None for a model passed in)
        self.system = self.model.spec
        self.obs_type = obs_type
        self.action_repeat = self.system.checked_action_repeat(action_repeat)
        self.uncertainty_penalty, self.uncertainty_limit = _uncertainty_options(
            self.model, uncertainty_penalty, uncertainty_limit, ensemble_mode)
        self.sim = Imagination(self.model, num_envs, self.action_repeat, device, ensemble_mode=ensemble_mode)
        self.energy_shaping = float(energy_shaping)
        if not (np.isfinite(self.energy_shaping) and self.energy_shaping >= 0):
            raise ValueError(f"energy_shaping must be a finite number >= 0, got {energy_shaping!r}")
        self._shaping = EnergyPotential(self.model) if self.energy_shaping else None
        self._potential = np.zeros(num_envs)  # Phi of each env's current state, where shaping
        self.bank = read_start_bank(path) if path is not None and (path / START_BANK).exists() else None
        self._init_spaces(obs_type)
        self._steps = np.zeros(num_envs, np.int64)
        self._was_reset = False  # stepping before the first reset is refused: there is no state yet
        self.action_gain_range: tuple[float, float] | None = None
        self.exploring_starts = 0.0  # share of default resets drawn from the exploring starts
        self.explore_bank: dict[str, np.ndarray] | None = None

    def _init_spaces(self, obs_type: str) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        spec = self.system
        pixels = gym.spaces.Box(0, 255, shape=spec.image_shape, dtype=np.uint8)
        keypoints = gym.spaces.Box(-np.inf, np.inf, shape=(4 * spec.num_keypoints,), dtype=np.float32)
        self._obs_space = {"pixels": pixels, "keypoints": keypoints,
                           "dict": gym.spaces.Dict({"pixels": pixels, "keypoints": keypoints})}[obs_type]
        self._act_space = gym.spaces.Box(-1.0, 1.0, shape=(self.model.action_dim,), dtype=np.float32)

    def _observe(self, index: Any = slice(None)) -> Any:
        sim = self.sim
        if self.obs_type == "pixels":
            return sim.pixels(index)
        if self.obs_type == "keypoints":
            return sim.keypoints(index)
        return {"pixels": sim.pixels(index), "keypoints": sim.keypoints(index)}

    def _check_actions(self, actions: Any, n: int) -> torch.Tensor:
        """Actions `(n, A)` for the batch, checked and clipped as the real env does (`checked_action`)."""
        a = self.model.action_dim
        checked = checked_action(actions, (a,), np.float32)[None] if n == 1 else checked_action(actions, (n, a), np.float32)
        return torch.from_numpy(checked).to(self.sim.device)

    def _judge(self, reward: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Rewards `(N,)` shaped and minus the uncertainty penalty, and which envs passed the uncertainty limit `(N,)` bool."""
        reward = reward.cpu().numpy().astype(np.float64)
        if self._shaping is not None:
            potential = self._shaping(self.sim.q, self.sim.v)
            reward = reward + self.energy_shaping * (potential - self._potential)
            self._potential = potential
        if self.sim.ensemble is None:
            return reward, np.zeros(len(reward), bool)
        spread = self.sim.uncertainty.cpu().numpy().astype(np.float64)
        unsure = spread > self.uncertainty_limit if self.uncertainty_limit is not None else np.zeros(len(reward), bool)
        return reward - self.uncertainty_penalty * spread, unsure

    def _reset_index(self, index: np.ndarray, rng: np.random.Generator, options: dict | None) -> None:
        options = options or {}
        unknown = set(options) - {"frames", "frame_dt", "actions", "state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: 'frames', 'frame_dt', 'actions', 'state'")
        k = self.system.num_keypoints
        if "state" in options:
            s = np.asarray(options["state"], np.float32)
            if s.size != 4 * k or not np.all(np.isfinite(s)):
                raise ValueError(f"options['state'] must be {4 * k} finite numbers (positions then velocities), got {s.shape}")
            s = torch.from_numpy(s.reshape(2, k, 2))
            self.sim.set_state(index, s[0].expand(len(index), k, 2), s[1].expand(len(index), k, 2))
        elif "frames" in options:
            dt = float(options.get("frame_dt", self.system.physics_dt * self.action_repeat))
            q, v = self.sim.state_from_frames(options["frames"], dt, options.get("actions"))
            self.sim.set_state(index, q.expand(len(index), k, 2), v.expand(len(index), k, 2))
        else:
            if self.bank is None:
                raise CheckpointError("this model has no start frames; pass options={'frames': ...} or {'state': ...}")
            bq, bv = self.sim.bank_states(self.bank)
            pick = torch.from_numpy(rng.integers(0, len(bq), len(index)))
            q, v = bq[pick], bv[pick]
            if self.exploring_starts > 0:
                eq, ev = self.sim.bank_states(self.explore_bank)
                explore = torch.from_numpy(rng.random(len(index)) < self.exploring_starts)
                other = torch.from_numpy(rng.integers(0, len(eq), len(index)))
                q = torch.where(explore[:, None, None], eq[other], q)
                v = torch.where(explore[:, None, None], ev[other], v)
            self.sim.set_state(index, q, v)
        self.sim.draw_members(index, rng)
        self._steps[index] = 0
        if self._shaping is not None:
            self._potential[index] = self._shaping(self.sim.q[index], self.sim.v[index])
        if self.action_gain_range is not None:  # a new gain for each episode
            low, high = self.action_gain_range
            gains = rng.uniform(low, high, len(index)).astype(np.float32)
            self.sim.action_gain[torch.from_numpy(np.asarray(index))] = torch.from_numpy(gains)[:, None].to(self.sim.device)


class KeyCLDEnv(_Spaces, gym.Env):
    """One imagined system (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, system: str = "cartpole", checkpoint: str | Path | KeyCLDModel | None = None,
                 obs_type: str = "pixels", action_repeat: int | None = None, device: str = "cpu",
                 render_mode: str | None = None, draw_keypoints: bool = True, ensemble_mode: str = "member",
                 uncertainty_penalty: float = 0.0, uncertainty_limit: float | None = None, energy_shaping: float = 0.0):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self._setup(system, checkpoint, obs_type, action_repeat, device, 1, ensemble_mode, uncertainty_penalty,
                    uncertainty_limit, energy_shaping)
        self.render_mode, self.draw_keypoints = render_mode, draw_keypoints
        self.observation_space, self.action_space = self._obs_space, self._act_space
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / (self.action_repeat * self.system.physics_dt)))}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._reset_index(np.array([0]), self.np_random, options)
        self._was_reset = True
        return _first(self._observe(slice(0, 1))), self._info()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if not self._was_reset:
            raise gym.error.ResetNeeded("call reset() before step(): the imagined env has no state yet")
        reward, diverged = self.sim.step(self._check_actions(action, 1))
        reward, unsure = self._judge(reward)
        self._steps += self.action_repeat
        truncated = bool(diverged[0]) or bool(unsure[0]) or bool(self._steps[0] >= self.system.episode_steps)
        info = self._info()
        info["diverged"] = bool(diverged[0])
        return _first(self._observe(slice(0, 1))), float(reward[0]), False, truncated, info

    def render(self) -> np.ndarray | None:
        """The imagined frame, `render_scale` times larger, keypoints drawn as dots if asked."""
        if self.render_mode != "rgb_array":
            return None
        frame = self.sim.pixels(slice(0, 1))[0]
        return upscale_with_keypoints(frame, self.sim.q[0].cpu().numpy() if self.draw_keypoints else None,
                                      self.system.render_scale)

    def _info(self) -> dict:
        return {k: v[0] for k, v in self.sim.info(slice(0, 1)).items()} | {"physics_steps": int(self._steps[0])}


class KeyCLDVectorEnv(_Spaces, VectorEnv):
    """N imagined systems stepped as one tensor batch, with gymnasium's autoreset.

    `autoreset_mode` "same_step" (the default, as SB3 expects): when a sub-env's episode ends,
    `step` returns the first observation of its next episode and puts the last one in
    `infos["final_obs"]` (with `infos["final_info"]`). "next_step" (gymnasium's own default,
    as RLlib's env runners expect): `step` returns the last observation, and the sub-env's next
    `step` resets it, ignoring its action, with reward 0 and neither flag set.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int, system: str = "cartpole", checkpoint: str | Path | KeyCLDModel | None = None,
                 obs_type: str = "pixels", action_repeat: int | None = None, device: str = "cpu",
                 render_mode: str | None = None, action_gain: tuple[float, float] | None = None,
                 exploring_starts: float = 0.0, max_episode_steps: int | None = None, ensemble_mode: str = "member",
                 uncertainty_penalty: float = 0.0, uncertainty_limit: float | None = None,
                 autoreset_mode: str | AutoresetMode = "same_step", energy_shaping: float = 0.0):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        modes = {"same_step": AutoresetMode.SAME_STEP, "next_step": AutoresetMode.NEXT_STEP}
        mode = modes.get(autoreset_mode) if isinstance(autoreset_mode, str) else autoreset_mode
        if mode not in modes.values():
            raise ValueError(f"autoreset_mode must be one of {sorted(modes)}, got {autoreset_mode!r}")
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self._autoreset = np.zeros(num_envs, bool)  # next_step: the sub-envs whose next step is a reset
        self.num_envs, self.render_mode = num_envs, None
        self._setup(system, checkpoint, obs_type, action_repeat, device, num_envs, ensemble_mode, uncertainty_penalty,
                    uncertainty_limit, energy_shaping)
        # the registry's limit in agent steps (gymnasium passes it to vector entry points, as
        # TimeLimit takes it for single envs); never longer than the task's episode
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be positive, got {max_episode_steps}")
        self.episode_physics_steps = min(self.system.episode_steps, (max_episode_steps or self.system.episode_steps)
                                         * self.action_repeat)
        if not 0.0 <= exploring_starts <= 1.0:
            raise ValueError(f"exploring_starts must be a share in [0, 1], got {exploring_starts}")
        if exploring_starts > 0:
            if self.checkpoint_path is None or not (self.checkpoint_path / EXPLORING_STARTS).exists():
                raise CheckpointError(
                    f"exploring_starts needs {EXPLORING_STARTS} beside the model's weights: write one with "
                    "`keycld-gym pipeline` (its exploring-starts step) or `start_bank_from_data`")
            self.explore_bank = read_start_bank(self.checkpoint_path, EXPLORING_STARTS)
            self.exploring_starts = float(exploring_starts)
        if action_gain is not None:
            low, high = (float(g) for g in action_gain)
            if not 0 < low <= high:
                raise ValueError(f"action_gain must be a range (low, high) with 0 < low <= high, got {action_gain}")
            self.action_gain_range = (low, high)
        self.single_observation_space, self.single_action_space = self._obs_space, self._act_space
        self.observation_space = batch_space(self._obs_space, num_envs)
        self.action_space = batch_space(self._act_space, num_envs)
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._reset_index(np.arange(self.num_envs), self._rng, options)
        self._was_reset = True
        self._autoreset[:] = False
        return self._observe(), self._infos()

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        if not self._was_reset:
            raise gym.error.ResetNeeded("call reset() before step(): the imagined envs have no state yet")
        reward, diverged = self.sim.step(self._check_actions(actions, self.num_envs))
        reward, unsure = self._judge(reward)
        self._steps += self.action_repeat
        div = diverged.cpu().numpy()
        truncated = div | unsure | (self._steps >= self.episode_physics_steps)
        terminated = np.zeros(self.num_envs, bool)
        obs, infos = self._observe(), self._infos()
        infos["diverged"] = div
        if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP:
            return self._next_step_autoreset(obs, reward, terminated, truncated, infos)
        done = np.flatnonzero(truncated)
        if len(done):
            infos["final_obs"] = np.array([None] * self.num_envs, dtype=object)
            infos["final_info"] = np.array([None] * self.num_envs, dtype=object)
            infos["_final_obs"] = infos["_final_info"] = truncated.copy()
            for i in done:
                infos["final_obs"][i] = _index(obs, i, copy=True)
                infos["final_info"][i] = {k: v[i] for k, v in infos.items() if not k.startswith(("final", "_final"))}
            self._reset_index(done, self._rng, None)
            fresh = self._observe(done)
            _assign(obs, done, fresh)
            for k, v in self.sim.info(done).items():
                infos[k][done] = v
            infos["physics_steps"][done] = 0
        return obs, reward, terminated, truncated, infos

    def _next_step_autoreset(self, obs: Any, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                             infos: dict) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict]:
        """`step`'s result in "next_step" mode: the sub-envs that ended last step start again now (their step undone)."""
        index = np.flatnonzero(self._autoreset)
        if len(index):
            self._reset_index(index, self._rng, None)
            _assign(obs, index, self._observe(index))
            for k, v in self.sim.info(index).items():
                infos[k][index] = v
            self._steps[index] = 0
            infos["physics_steps"][index] = 0
            infos["diverged"][index] = False
            reward[index], truncated[index] = 0.0, False
        self._autoreset = truncated.copy()
        return obs, reward, terminated, truncated, infos

    def _infos(self) -> dict:
        return self.sim.info() | {"physics_steps": self._steps.copy()}


def _first(obs: Any) -> Any:
    return {k: v[0] for k, v in obs.items()} if isinstance(obs, dict) else obs[0]


def _index(obs: Any, i: int, copy: bool = False) -> Any:
    if isinstance(obs, dict):
        return {k: v[i].copy() if copy else v[i] for k, v in obs.items()}
    return obs[i].copy() if copy else obs[i]


def _assign(obs: Any, index: np.ndarray, values: Any) -> None:
    if isinstance(obs, dict):
        for k in obs:
            obs[k][index] = values[k]
    else:
        obs[index] = values


KEYPOINT_COLOURS = np.array([[255, 60, 60], [60, 255, 60], [60, 120, 255], [255, 220, 0]], np.uint8)


def upscale_with_keypoints(frame: np.ndarray, keypoints: np.ndarray | None, scale: int) -> np.ndarray:
    """A frame `(H, W, 3)` enlarged `scale` times (nearest), keypoints `(K, 2)` drawn as coloured dots."""
    big = np.repeat(np.repeat(frame, scale, 0), scale, 1).copy()
    if keypoints is None:
        return big
    h, w = frame.shape[:2]
    for k, (x, y) in enumerate(keypoints):
        col = (x * h / 2 + (w - 1) / 2) * scale + scale / 2
        row = ((h - 1) / 2 - y * h / 2) * scale + scale / 2
        r0, c0 = int(round(row)), int(round(col))
        rr, cc = np.ogrid[-3:4, -3:4]
        mask = rr**2 + cc**2 <= 9
        for dr, dc in zip(*np.nonzero(mask)):
            r, c = r0 + dr - 3, c0 + dc - 3
            if 0 <= r < big.shape[0] and 0 <= c < big.shape[1]:
                big[r, c] = KEYPOINT_COLOURS[k % len(KEYPOINT_COLOURS)]
    return big
