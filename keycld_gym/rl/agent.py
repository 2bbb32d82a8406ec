"""A trained agent: SB3 policy weights (safetensors) + its recipe and provenance (JSON).

An agent folder holds `agent.safetensors` (the policy's state dict) and `agent.json` (the
recipe from `agents/`, the policy's spaces, the world model it was trained in, how it was
trained). Loading rebuilds the policy class from the recipe and loads plain tensors, so a
downloaded agent cannot run code on the loading machine (SB3's own `.zip` unpickles).

Also here: the observation pipeline an agent sees, the same in imagination and in the real
task (pixels: a stack of the last `frame_stack` frames, channels first, or of their
keypoints through the world model's encoder), and the env
factories for both worlds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecFrameStack,
    VecTransposeImage,
)

from keycld_gym.agents import AgentRecipe, bundled_recipe
from keycld_gym.envs.imagined_env import KeyCLDVectorEnv
from keycld_gym.envs.real import make_real_env
from keycld_gym.envs.sb3 import SB3VecEnv
from keycld_gym.errors import CheckpointError
from keycld_gym.files import read_record, sha256_file, write_json
from keycld_gym.model.checkpoint import BUNDLED_DIR, read_noise
from keycld_gym.model.tracking import Estimator
from keycld_gym.rl.frame_encoding import VecEncodeFrames
from keycld_gym.rl.observation_noise import EstimatedKeypoints, KeypointNoise
from keycld_gym.sim.systems import get_system

AGENT_WEIGHTS = "agent.safetensors"
AGENT_CONFIG = "agent.json"
AGENT_FORMAT = "keycld-gym-agent"
AGENT_FORMAT_VERSION = 1
# a bundled keycld-encoder pixel agent carries the world model whose encoder reads its frames
AGENT_MODEL = "model"
BUNDLED_AGENTS = BUNDLED_DIR  # agents ship beside the models, one folder each

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sac": SAC, "ppo": PPO}


def bundled_agent_path(system: str, obs_type: str = "keypoints", algo: str | None = None) -> Path:
    """Folder of a system's bundled agent (it may not exist); `algo` None: its bundled recipe's (`agents/`)."""
    name = get_system(system).name
    if algo is None:
        recipe = bundled_recipe(name, obs_type)
        algo = recipe.algo if recipe is not None else "sac"  # none ships: train-agent's default, an absent folder
    return BUNDLED_AGENTS / f"{name}-{algo}-{obs_type}"


# -- the observation pipeline ---------------------------------------------------------------
def wrap_observations(venv: VecEnv, recipe: AgentRecipe, model: Any = None, frame_noise: np.ndarray | None = None,
                      seed: int | None = None) -> VecEnv:
    """The agent's view of an SB3 VecEnv: pixels are frame-stacked and put channels first.

    With ``recipe.features == "keycld-encoder"`` each frame goes through `model`'s keypoint
    encoder first (plus Gaussian noise of std `frame_noise`, in imagination) and the stack
    is of keypoints.
    """
    if recipe.obs_type == "pixels":
        if recipe.features == "keycld-encoder":
            if model is None:
                raise ValueError("a keycld-encoder pixel agent needs the world model whose encoder reads its frames")

            venv = VecEncodeFrames(venv, model, frame_noise, seed)
        if recipe.frame_stack > 1:
            venv = VecFrameStack(venv, recipe.frame_stack, channels_order="last")
        if recipe.features == "cnn":
            venv = VecTransposeImage(venv)
    return venv


def imagined_vec_env(recipe: AgentRecipe, num_envs: int, checkpoint: Any = None, *, noise: bool = True,
                     seed: int | None = None, training: bool = False) -> VecEnv:
    """`num_envs` batched imagined envs as the recipe's agent sees them (keypoint noise included if `noise`).

    `training`: the recipe's exploring starts and training episode length too (evaluations
    start from the task's reset only and run whole episodes).
    """
    venv = KeyCLDVectorEnv(num_envs, recipe.system, checkpoint, obs_type=recipe.obs_type, action_gain=recipe.action_gain,
                           exploring_starts=recipe.exploring_starts if training else 0.0,
                           max_episode_steps=recipe.training_episode_steps if training else None,
                           uncertainty_penalty=recipe.uncertainty_penalty if training else 0.0,
                           uncertainty_limit=recipe.uncertainty_limit if training else None,
                           energy_shaping=recipe.energy_shaping if training else 0.0)
    model, frame_noise = venv.model, None
    if noise and recipe.observation_noise != "none":
        folder = venv.checkpoint_path
        if folder is None:
            raise ValueError("measured observation noise needs a model loaded from a folder (its observation_noise.json)")
        if recipe.observation_noise == "estimated":
            venv = EstimatedKeypoints(venv, recipe.real_estimator, read_noise(folder, "frame_std"), read_noise(folder), seed=seed)
        elif recipe.obs_type == "keypoints":
            venv = KeypointNoise(venv, read_noise(folder), seed=seed)
        else:  # keycld-encoder pixels: on each frame's encoded keypoints
            frame_noise = read_noise(folder, "frame_std")
    sb3 = SB3VecEnv(venv)
    if seed is not None:
        sb3.seed(seed)
    return wrap_observations(sb3, recipe, model, frame_noise, seed)


def real_env_factory(recipe: AgentRecipe, model: Any = None, threads: int | None = None,
                     tracking: Estimator | None = None) -> Callable[[], gym.Env]:
    """A function making the real task with the recipe's observations (keypoints estimated by `model`, as `tracking` says;
    None: the recipe's `real_estimator`)."""
    tracking = tracking or recipe.real_estimator

    def make() -> gym.Env:
        if threads is not None:  # in a worker process: one core each
            torch.set_num_threads(threads)
        if recipe.obs_type == "keypoints":
            return make_real_env(recipe.system, "keypoints", model=model, tracking=tracking)
        return make_real_env(recipe.system, "pixels")

    return make


def real_vec_env(recipe: AgentRecipe, model: Any = None, workers: int = 1, tracking: Estimator | None = None) -> VecEnv:
    """`workers` real envs (in as many processes if more than one) as the recipe's agent sees them."""
    if workers > 1:
        venv: VecEnv = SubprocVecEnv([real_env_factory(recipe, model, threads=1, tracking=tracking)] * workers)
    else:
        venv = DummyVecEnv([real_env_factory(recipe, model, tracking=tracking)])
    return wrap_observations(venv, recipe, model)


# -- agents ---------------------------------------------------------------------------------
def _space_to_dict(space: gym.spaces.Box) -> dict[str, Any]:
    return {"shape": list(space.shape), "dtype": str(space.dtype),
            "low": float(np.min(space.low)), "high": float(np.max(space.high))}


def _space_from_dict(d: dict[str, Any]) -> gym.spaces.Box:
    return gym.spaces.Box(d["low"], d["high"], shape=tuple(d["shape"]), dtype=np.dtype(d["dtype"]))


class Agent:
    """A policy with its recipe: `act(obs)` on observations from `wrap_observations`."""

    def __init__(self, policy: BasePolicy, recipe: AgentRecipe, info: dict[str, Any] | None = None):
        self.policy = policy.eval()
        self.recipe = recipe
        self.info = dict(info or {})

    @property
    def system(self) -> str:
        return self.recipe.system

    @property
    def obs_type(self) -> str:
        return self.recipe.obs_type

    @property
    def model_folder(self) -> Path | None:
        """The world model carried in the agent's folder (`AGENT_MODEL`), where it carries one; else None."""
        folder = Path(self.info.get("path", "")) / AGENT_MODEL
        return folder if "path" in self.info and folder.is_dir() else None

    def act(self, observations: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions `(N, A)` for a batch of observations."""
        actions, _ = self.policy.predict(observations, deterministic=deterministic)
        return actions

    def save(self, folder: str | Path, **info: Any) -> Path:
        """Write `agent.safetensors` and `agent.json` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (AGENT_WEIGHTS + ".tmp")
        save_model(self.policy, str(tmp))  # not save_file: CNN policies share their feature extractor
        tmp.replace(folder / AGENT_WEIGHTS)
        self.info.update(info)
        config = {
            "format": AGENT_FORMAT, "format_version": AGENT_FORMAT_VERSION,
            "recipe": self.recipe.to_dict(),
            "observation_space": _space_to_dict(self.policy.observation_space),
            "action_space": _space_to_dict(self.policy.action_space),
            "weights_sha256": sha256_file(folder / AGENT_WEIGHTS),
            **self.info,
        }
        write_json(folder / AGENT_CONFIG, config)
        return folder

    @classmethod
    def from_algorithm(cls, algorithm: BaseAlgorithm, recipe: AgentRecipe, info: dict[str, Any] | None = None) -> "Agent":
        return cls(algorithm.policy, recipe, info)


def load_agent(path: str | Path, system: str | None = None, obs_type: str | None = None) -> Agent:
    """Load an agent folder (or "bundled" for `system`'s bundled agent), checking it fits `system` and `obs_type`."""
    if str(path) == "bundled":
        if system is None:
            raise ValueError("the bundled agent needs a system")
        path = bundled_agent_path(system, obs_type or "keypoints")
        if not (path / AGENT_CONFIG).exists():
            raise CheckpointError(
                f"no bundled {obs_type or 'keypoints'} agent for {system!r}: train one with "
                f"`keycld-gym train-agent --system {system} --obs {obs_type or 'keypoints'} --out DIR` and pass --agent DIR/agent"
            )
    path = Path(path)
    config_path, weights_path = path / AGENT_CONFIG, path / AGENT_WEIGHTS
    for p in (config_path, weights_path):
        if not p.exists():
            raise CheckpointError(f"{p} is missing: {path} is not an agent folder (train one with `keycld-gym train-agent`)")
    config = read_record(config_path, "agent", AGENT_FORMAT, AGENT_FORMAT_VERSION, CheckpointError,
                         "retrain the agent with this version's `keycld-gym train-agent`, or restore it")
    if sha256_file(weights_path) != config.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} fails its sha256 checksum (corrupt or replaced); retrain or re-export the agent")
    recipe = AgentRecipe.from_dict(config["recipe"])
    if system is not None and recipe.system != get_system(system).name:
        raise CheckpointError(f"agent {path} was trained for {recipe.system!r}, not {system!r}")
    if obs_type is not None and recipe.obs_type != obs_type:
        raise CheckpointError(f"agent {path} acts on {recipe.obs_type!r} observations, not {obs_type!r}")
    policy_cls = ALGORITHMS[recipe.algo].policy_aliases[recipe.policy]
    policy = policy_cls(
        _space_from_dict(config["observation_space"]), _space_from_dict(config["action_space"]),
        lambda _: 0.0, **recipe.policy_kwargs,
    )
    try:
        missing, unexpected = load_model(policy, str(weights_path), strict=False)
    except (SafetensorError, RuntimeError) as err:
        raise CheckpointError(f"{weights_path} does not fit the recipe's policy ({err})") from err
    if missing or unexpected:
        raise CheckpointError(f"{weights_path} does not fit the recipe's policy (missing tensors "
                              f"{sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    info = {k: v for k, v in config.items()
            if k not in ("format", "format_version", "recipe", "observation_space", "action_space")}
    info["path"] = str(path)
    return Agent(policy, recipe, info)
