"""stable-baselines3 recipes for agents trained in a KeyCLD imagination, one module per system.

Everything that says how an agent is trained (algorithm, policy, hyper-parameters, budget,
observation pipeline) lives here; the training, evaluation and benchmark code read it.
"""

from __future__ import annotations

from typing import Any

from keycld_gym.envs.registration import env_id

from . import acrobot, cartpole, pendulum
from .recipe import ALGOS, NOISES, OBS_TYPES, SB3_ALGOS, AgentRecipe

RECIPES: dict[tuple[str, str, str], AgentRecipe] = {
    (r.system, r.obs_type, r.algo): r for module in (pendulum, cartpole, acrobot) for r in module.RECIPES
}


def get_recipe(system: str, obs_type: str = "keypoints", algo: str = "sac") -> AgentRecipe:
    """The recipe for a system, observation type and algorithm."""
    key = (system, obs_type, algo)
    if key not in RECIPES:
        have = ", ".join("/".join(k) for k in sorted(RECIPES))
        raise ValueError(f"no agent recipe for system/obs/algo {'/'.join(key)}; recipes: {have}")
    return RECIPES[key]


BUNDLED: dict[tuple[str, str], AgentRecipe] = {
    (r.system, r.obs_type): r for module in (pendulum, cartpole, acrobot) for r in module.BUNDLED
}


def bundled_recipe(system: str, obs_type: str = "keypoints") -> AgentRecipe | None:
    """The recipe of a system's bundled agent for an observation type (None: none ships); the benchmark trains the keypoint one."""
    return BUNDLED.get((system, obs_type))


def rl_zoo_hyperparams(algo: str) -> dict[str, dict[str, Any]]:
    """An RL Zoo hyper-parameter file's contents for `algo`: one entry per KeyCLD env id, from the recipes.

    Each keypoint recipe serves the imagined keypoint id; each pixel recipe with the policy's
    own CNN serves the imagined pixel id. Read by RL Zoo through `agents/rl_zoo_<algo>.py`.
    """
    if algo not in SB3_ALGOS:
        raise ValueError(f"no RL Zoo algorithm {algo!r}; choose one of {SB3_ALGOS}")
    return {env_id(r.system, r.obs_type): r.rl_zoo() for r in RECIPES.values()
            if r.algo == algo and r.features == "cnn"}


__all__ = ["ALGOS", "NOISES", "OBS_TYPES", "SB3_ALGOS", "RECIPES", "BUNDLED", "AgentRecipe", "bundled_recipe", "get_recipe",
           "rl_zoo_hyperparams"]
