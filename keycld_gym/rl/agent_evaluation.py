"""An agent's return in the real task and in imagination (docs/agents.md, "Return protocol").

Real: the standard dm_control task from its own reset, one episode per seed `seed + i`,
the policy acting deterministically on the observations of its recipe (keypoints estimated
from rendered frames by the model, the frames themselves, or each frame's keypoints through
the model's encoder); the episode's summed reward.
Imagined: the same number of episodes in the model's batched env, as the agent was trained
(keypoint noise included), seeds `seed + i`. The gap is (imagined - real) / real.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from keycld_gym.envs.real import make_real_env
from keycld_gym.errors import CheckpointError
from keycld_gym.files import portable_path, portable_paths
from keycld_gym.model.checkpoint import (
    ENCODER_LINEAGE,
    checkpoint_folder,
    load_model,
    read_config,
)
from keycld_gym.model.tracking import estimator_to_dict
from keycld_gym.parallel import run_units
from keycld_gym.rl.agent import Agent, imagined_vec_env, real_vec_env

Policy = Callable[[np.ndarray], np.ndarray]


def model_data(checkpoint: str | Path | None, system: str) -> dict[str, Any]:
    """The real frames a model learned from and how they were collected (from its config)."""
    config = read_config(checkpoint_folder(checkpoint, system))
    sets = [config.get("data") or {}]
    if config.get("keypoints_from"):
        sets.insert(0, config["keypoints_from"].get("data") or {})
    return {
        "model_real_frames": int(sum(d.get("frames", 0) for d in sets)),
        "model_data_regime": ", ".join(sorted({d.get("regime", "?") for d in sets})),
        "model_data": [{k: d.get(k) for k in ("path", "regime", "sequences", "frames", "seed")} for d in sets],
    }


def episode_returns(policy: Policy, venv: VecEnv, episodes: int, seed: int, max_steps: int | None = None) -> list[float]:
    """Returns of `episodes` episodes, run `venv.num_envs` at a time; episode i is reset with seed `seed + i`.

    `max_steps` cuts every episode after that many agent steps (None: each runs to its end).
    """
    out: list[float] = []
    n = venv.num_envs
    while len(out) < episodes:
        venv.seed(seed + len(out))  # env j of the round: seed + len(out) + j
        obs = venv.reset()
        totals, done, steps = np.zeros(n), np.zeros(n, bool), 0
        while not done.all() and (max_steps is None or steps < max_steps):
            obs, reward, dones, _ = venv.step(policy(obs))
            totals += np.where(done, 0.0, reward)  # an env that ended has autoreset: ignore it
            done |= dones
            steps += 1
        out.extend(totals[: episodes - len(out)].tolist())
    return out


def real_episode_return(agent: Any, model: Any, seed: int, max_steps: int | None = None) -> float:
    """One real episode's return: the task's reset with `seed`, `agent` acting on its recipe's observations through `model`.

    A unit of work (`keycld_gym.parallel`): it runs on one thread, and on its own copy of the
    agent, so that no actor state (a planner's warm start and noise) crosses episodes and an
    episode's return is the same wherever and in whatever company it runs.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        agent = copy.deepcopy(agent)
        venv = real_vec_env(agent.recipe, model)
        try:
            return episode_returns(agent.act, venv, 1, seed, max_steps)[0]
        finally:
            venv.close()
    finally:
        torch.set_num_threads(threads)


def cut_short(result: dict[str, Any]) -> str:
    """A note for an evaluation whose episodes were cut (`max_steps`, a quick check); empty for whole episodes."""
    steps = result.get("max_steps")
    return f", each cut after {steps} agent steps (not the task's 0-1000 scale)" if steps else ""


def _stats(returns: list[float]) -> tuple[float, float]:
    return float(np.mean(returns)), float(np.std(returns))


def check_trained_model(agent: Agent, model: Any, folder: Path) -> None:
    """Refuse a model other than the one `agent` was trained in, or a refit of it (`ENCODER_LINEAGE`): its keypoint
    space is another (`CheckpointError`)."""
    trained = (agent.info.get("model") or {}).get("weights_sha256")
    found = model.checkpoint_config.get("weights_sha256")
    if trained and found != trained and trained not in model.checkpoint_config.get(ENCODER_LINEAGE, []):
        raise CheckpointError(
            f"agent {agent.info.get('path', '?')} was trained in the model with weights sha256 {trained[:12]}..., "
            f"{folder} holds {str(found)[:12]}...: its policy would read another model's keypoints. Pass the model it "
            f"was trained in (--checkpoint {(agent.info.get('model') or {}).get('path', 'MODEL')}), or "
            "--allow-other-model to evaluate it there anyway")


def evaluate_agent(agent: Agent, *, episodes: int = 10, seed: int = 100_000, checkpoint: str | Path | None = None,
                   imagined: bool = True, workers: int = 2, max_steps: int | None = None,
                   allow_other_model: bool = False, ray: str | None = None) -> dict[str, Any]:
    """Real and imagined returns of `agent` with the model `checkpoint` as a JSON-ready dict.

    The default model is the one the agent carries (`Agent.model_folder`: a bundled
    keycld-encoder pixel agent's), else the system's bundled model.

    Each real episode is a unit of work (`real_episode_return`), run one after another, in
    `workers` local processes, or as Ray tasks on a cluster (`ray`: "local", "auto" or an
    address; `keycld_gym.parallel`): the returns are the same either way.
    `max_steps` cuts every episode after that many agent steps: a quick check, whose
    returns are not on the task's 0-1000 scale (None, the default: whole episodes).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1 (or None for whole episodes), got {max_steps}")
    recipe = agent.recipe
    # controllers of a model (planning) carry none: theirs is `checkpoint` or the bundled one
    carried = getattr(agent, "model_folder", None)
    folder = checkpoint_folder(carried if checkpoint is None else checkpoint, recipe.system)
    model = load_model(folder)
    check_encoder_model(agent, model, folder)
    if not allow_other_model:
        check_trained_model(agent, model, folder)
    policy = agent.act
    t0 = time.time()
    real = run_units(real_episode_return, [(agent, model, seed + i, max_steps) for i in range(episodes)],
                     workers=workers, ray=ray)
    real_s = time.time() - t0
    result: dict[str, Any] = {
        "system": recipe.system, "obs_type": recipe.obs_type, "algo": recipe.algo,
        "agent": portable_paths(agent.info.get("path", "?")), "agent_weights_sha256": agent.info.get("weights_sha256"),
        "episodes": episodes, "seed": seed, "max_steps": max_steps,
        "real_returns": [round(r, 2) for r in real],
    }
    if recipe.obs_type == "keypoints":
        result["real_estimator"] = estimator_to_dict(recipe.real_estimator)
    result["real_return_mean"], result["real_return_std"] = _stats(real)
    if imagined:
        t1 = time.time()
        imag = episode_returns(policy, imagined_vec_env(recipe, episodes, folder, seed=seed), episodes, seed, max_steps)
        result["imagined_returns"] = [round(r, 2) for r in imag]
        result["imagined_return_mean"], result["imagined_return_std"] = _stats(imag)
        result["gap"] = (result["imagined_return_mean"] - result["real_return_mean"]) / max(abs(result["real_return_mean"]), 1e-9)
        result["imagined_seconds"] = round(time.time() - t1, 1)
    result["real_seconds"] = round(real_s, 1)
    result.update(model_data(folder, recipe.system))
    result["model"] = portable_path(folder)
    result["policy_real_frames"] = 0  # the policy learned in imagination only
    return result


def check_encoder_model(agent: Agent, model: Any, folder: Path) -> None:
    """Refuse a keycld-encoder pixel agent with another world model (`model`, from `folder`) than the one whose encoder it learned on."""
    trained = (agent.info.get("model") or {}).get("weights_sha256")
    if agent.recipe.features != "keycld-encoder" or trained is None:
        return
    if model.checkpoint_config.get("weights_sha256") != trained:
        raise CheckpointError(
            f"agent {agent.info.get('path', '?')} reads frames through the keypoint encoder of the model it was trained in "
            f"({agent.info['model'].get('path')}), not {folder}'s: evaluate it with that model (--checkpoint)")


def random_returns(system: str, episodes: int, seed: int, max_steps: int | None = None) -> list[float]:
    """Returns of uniformly random actions in the real task (no observations needed, nothing rendered).

    `max_steps` cuts each episode after that many agent steps, as `episode_returns` does.
    """
    env = make_real_env(system, "state")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, done, steps = 0.0, False, 0
        while not done and (max_steps is None or steps < max_steps):
            _, r, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
            total += r
            done, steps = term or trunc, steps + 1
        out.append(total)
    env.close()
    return out
