"""stable-baselines3 recipes for agents trained in a KeyCLD imagination, one module per system.

Everything that says how an agent is trained (algorithm, policy, hyper-parameters, budget,
observation pipeline) lives here; the training, evaluation and benchmark code read it.
"""

from __future__ import annotations

from agents import acrobot, cartpole, pendulum
from agents.recipe import ALGOS, OBS_TYPES, AgentRecipe

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


__all__ = ["ALGOS", "OBS_TYPES", "RECIPES", "AgentRecipe", "get_recipe"]
