"""An agent's or a planner's episodes in the real task, recorded: their returns and every physics step's frame.

The real-task loop (`keycld-gym improve`) learns from these: the frames, actions and rewards
a camera and a robot give (`keycld_gym.data.episodes`). Episode i starts from the task's
reset with seed `seeds[i]`, the actor acting deterministically on keypoints estimated from
the frames, as in `evaluate-agent`'s real protocol; episodes run in `workers` processes,
each building its actor and the real env afresh (an actor's state, a planner's warm start,
never crosses episodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from keycld_gym.envs.real import make_real_env
from keycld_gym.model.checkpoint import load_model
from keycld_gym.parallel import run_units
from keycld_gym.rl.agent import load_agent
from keycld_gym.rl.planning import planning_agent

ACTORS = ("agent", "plan")


@dataclass(frozen=True)
class Actor:
    """Who acts in the real episodes: a keypoint agent folder, or the model's planner guided by one (`kind` 'plan')."""

    kind: str
    agent: str  # the agent folder (kind 'plan': the guide)
    settings: dict[str, Any] = field(default_factory=dict)  # kind 'plan': the planner's settings (`--set`)

    def __post_init__(self) -> None:
        if self.kind not in ACTORS:
            raise ValueError(f"the actor must be one of {ACTORS}, got {self.kind!r}")
        if self.settings and self.kind != "plan":
            raise ValueError("settings are the planner's: an agent's are in its folder")

    def build(self, system: str, checkpoint: str | Path) -> Any:
        """The actor (`act(obs)` on keypoint observations `(N, 4K)`) in the model `checkpoint`."""
        if self.kind == "plan":
            return planning_agent(system, checkpoint, self.agent, self.settings or None)
        agent = load_agent(self.agent, system)
        if agent.recipe.obs_type != "keypoints":
            raise ValueError(f"agent {self.agent} acts on {agent.recipe.obs_type!r}: the real-task loop records "
                             "every physics step's frame through a keypoint agent's real env; use a keypoint agent")
        return agent


def run_episode(system: str, checkpoint: str, actor: Actor, seed: int, max_steps: int | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """One recorded real episode: its seed, return, agent steps, and frames `uint8 (T, H, W, 3)`, actions `(T, A)`, rewards `(T,)`."""
    if threads is not None:  # in a worker process: one core each
        torch.set_num_threads(threads)
    agent = actor.build(system, checkpoint)
    env = make_real_env(system, "keypoints", model=load_model(checkpoint), tracking=agent.recipe.real_estimator,
                        record=True)
    try:
        obs, _ = env.reset(seed=seed)
        total, steps, done = 0.0, 0, False
        while not done and (max_steps is None or steps < max_steps):
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs[None])[0])
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        [episode] = env.take_episodes()
    finally:
        env.close()
    return {"seed": seed, "return": total, "agent_steps": steps, **episode}


def recorded_episodes(system: str, checkpoint: str | Path, actor: Actor, seeds: list[int], *, workers: int = 1,
                      max_steps: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """`run_episode` for each seed, in order; `workers` processes (`keycld_gym.parallel`)."""
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1 (or None for whole episodes), got {max_steps}")
    checkpoint = str(checkpoint)
    bar = tqdm(total=len(seeds), desc=f"real {system} episodes", unit="ep", disable=not progress)
    threads = 1 if workers > 1 else None  # side by side: one core each
    try:
        return run_units(run_episode, [(system, checkpoint, actor, s, max_steps, threads) for s in seeds],
                         workers=workers, on_result=lambda i, episode: bar.update(1))
    finally:
        bar.close()


def summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The episodes' returns as a record: seeds, returns, mean, std, frames recorded."""
    returns = [e["return"] for e in episodes]
    return {"seeds": [e["seed"] for e in episodes], "returns": [round(r, 2) for r in returns],
            "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
            "frames": int(sum(len(e["actions"]) for e in episodes))}
