"""RLlib on the env ids (`keycld-gym train-rllib`): PPO on the new API stack, its env runners stepping the batched imagination.

    pip install -e ".[rllib]"
    keycld-gym train-rllib --system pendulum --out runs/rllib-pendulum --iterations 100

RLlib's env runners are Ray actors. Each one makes `num_envs_per_env_runner` imagined envs as
one `KeyCLDVectorEnv` through the registered id (`KeyCLD-<System>-keypoints-v0`, gymnasium's
`vector_entry_point` mode), so a runner steps its envs as one tensor batch, as SB3's agents
do. RLlib's runners expect gymnasium's default autoreset (the next step after an episode's
end resets it), which the env takes as `autoreset_mode="next_step"`. The env takes the
recipe's exploring starts and action gains, as `train-agent` gives them. The measured
observation noise is an SB3 wrapper (`keycld_gym.rl.agent`) and is left out here.

The trained policy acts through the real protocol of `evaluate_agent`: the RLlib module's
Gaussian mean, clipped to the action box, on keypoints estimated from the real frames with the
system's PPO recipe's estimator (`RLlibAgent`). The run is resumable: RLlib's checkpoint and
the learning curve are written every `save_every` iterations, and a rerun continues from them.
RLlib is imported only here, and only when asked for.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keycld_gym.agents import get_recipe
from keycld_gym.envs.registration import env_id
from keycld_gym.files import differing_keys, portable_path, portable_paths, write_json
from keycld_gym.model.checkpoint import checkpoint_folder, read_config
from keycld_gym.parallel import init_ray
from keycld_gym.rl.agent_evaluation import evaluate_agent
from keycld_gym.sim.systems import get_system

RLLIB_HELP = 'pip install -e ".[rllib]" (Ray with RLlib; it pins gymnasium 1.2.2)'
CHECKPOINT = "rllib"  # RLlib's own checkpoint folder inside the run
STATE = "state.json"


@dataclass(frozen=True)
class RLlibConfig:
    """One RLlib PPO run in a model's imagination: the system, its budget in iterations, PPO's settings."""

    system: str = "pendulum"
    checkpoint: str | None = None  # the world model (None: the bundled one)
    iterations: int = 100
    env_runners: int = 1  # Ray actors sampling the imagination
    envs_per_runner: int = 64  # imagined envs each runner steps as one batch
    rollout_fragment_length: int = 64  # agent steps per env per sample: a batch of envs x this
    minibatch_size: int = 512
    num_epochs: int = 5
    lr: float = 3e-4
    gamma: float = 0.99
    lambda_: float = 0.95
    hidden: tuple[int, ...] = (128, 128)
    seed: int = 0
    save_every: int = 10  # iterations between checkpoints

    def __post_init__(self) -> None:
        get_system(self.system)
        for name in ("iterations", "env_runners", "envs_per_runner", "rollout_fragment_length", "minibatch_size",
                     "num_epochs", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def batch_size(self) -> int:
        """Agent steps per training iteration."""
        return self.env_runners * self.envs_per_runner * self.rollout_fragment_length

    def env_config(self) -> dict[str, Any]:
        """The imagined vector env's keyword arguments: the model, next-step autoreset, the recipe's starts and gains."""
        recipe = get_recipe(get_system(self.system).name, "keypoints", "ppo")
        config: dict[str, Any] = {"checkpoint": str(checkpoint_folder(self.checkpoint, self.system).resolve()),
                                  "autoreset_mode": "next_step", "exploring_starts": recipe.exploring_starts}
        if recipe.action_gain is not None:
            config["action_gain"] = tuple(recipe.action_gain)
        return config

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _rllib() -> Any:
    try:
        from ray.rllib.algorithms.ppo import PPOConfig
    except ImportError as err:
        raise ImportError(f"train-rllib needs RLlib, which the base install leaves out: {RLLIB_HELP}") from err
    return PPOConfig


def ppo_config(config: RLlibConfig) -> Any:
    """RLlib's `PPOConfig` for `config` (new API stack, torch, env runners on the registered keypoint id)."""
    PPOConfig = _rllib()
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (PPOConfig()
            .environment(f"keycld_gym:{env_id(config.system, 'keypoints')}", env_config=config.env_config())
            .env_runners(num_env_runners=config.env_runners, num_envs_per_env_runner=config.envs_per_runner,
                         gym_env_vectorize_mode="vector_entry_point",
                         rollout_fragment_length=config.rollout_fragment_length, num_cpus_per_env_runner=1)
            .learners(num_learners=0)
            .training(train_batch_size_per_learner=config.batch_size, minibatch_size=config.minibatch_size,
                      num_epochs=config.num_epochs, lr=config.lr, gamma=config.gamma, lambda_=config.lambda_)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(config.hidden), fcnet_activation="tanh"))
            .debugging(seed=config.seed))


class RLlibAgent:
    """An RLlib PPO module as an agent of the real protocol: `act(obs)`, `recipe`, `info` (as `keycld_gym.rl.agent.Agent`)."""

    def __init__(self, module: Any, system: str, info: dict[str, Any] | None = None):
        self.module = module
        self.recipe = get_recipe(get_system(system).name, "keypoints", "ppo")
        self.action_dim = len(get_system(system).actuators)
        self.info = {"path": "rllib", "framework": "rllib", **(info or {})}

    @torch.no_grad()
    def act(self, observations: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions `(N, A)`: the Gaussian's mean, clipped to [-1, 1], for keypoint observations `(N, 4K)`."""
        out = self.module.forward_inference({"obs": torch.as_tensor(np.asarray(observations), dtype=torch.float32)})
        return out["action_dist_inputs"][:, :self.action_dim].clamp(-1, 1).numpy()


def train_rllib(config: RLlibConfig, out: str | Path, *, ray: str | None = None, episodes: int = 10,
                seed: int = 100_000, workers: int = 1, max_steps: int | None = None, command: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train (or continue) `config` into `out`, then evaluate it by the real protocol; the run's record.

    Writes OUT/rllib (RLlib's checkpoint), OUT/state.json (configuration, learning curve, wall
    time, the evaluation) and OUT/curve.csv. `episodes` real episodes from seeds `seed`+ (0:
    none), run in `workers` local processes or on Ray (`ray`); `max_steps` cuts them (a quick check).
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    state: dict[str, Any] = {"config": config.to_dict(), "command": command, "curve": [], "wall_s": 0.0}
    if state_path.exists():
        old = json.loads(state_path.read_text())
        # the budget and checkpoint schedule may change on a rerun; what is learned may not
        differ = differing_keys(old["config"], config.to_dict(), set(config.to_dict()) - {"iterations", "save_every"})
        if differ:
            raise ValueError(f"{out} holds an RLlib run with other settings (differs in: {', '.join(differ)}); rerun "
                             "it with the same ones to continue, or choose another --out")
        state.update(curve=old["curve"], wall_s=old["wall_s"])
        if len(old["curve"]) >= config.iterations and "evaluation" in old:
            state["evaluation"] = old["evaluation"]
    _rllib()  # a clear error before Ray starts
    init_ray(ray or "local")
    algo = ppo_config(config).build_algo()
    old_checkpoint = out / f"{CHECKPOINT}.old"
    if not (out / CHECKPOINT).exists() and old_checkpoint.exists():  # stopped mid-swap: state.json is the old one's
        old_checkpoint.rename(out / CHECKPOINT)
    try:
        if (out / CHECKPOINT).exists():
            algo.restore_from_path(str(out / CHECKPOINT))
        t0, wall0 = time.time(), state["wall_s"]  # training time, as train-agent counts it
        while len(state["curve"]) < config.iterations:
            result = algo.train()
            runners = result.get("env_runners", {})
            mean = runners.get("episode_return_mean")
            state["curve"].append({
                "iteration": len(state["curve"]) + 1, "env_steps": int(result.get("num_env_steps_sampled_lifetime", 0)),
                "imagined_return": None if mean is None or not np.isfinite(mean) else float(mean),
                "wall_s": round(wall0 + time.time() - t0, 1)})
            state["wall_s"] = state["curve"][-1]["wall_s"]
            if progress:
                point = state["curve"][-1]
                print(f"iteration {point['iteration']}: {point['env_steps']} imagined steps, "
                      f"return {point['imagined_return']}, {point['wall_s']:.0f} s", flush=True)
            if len(state["curve"]) % config.save_every == 0 or len(state["curve"]) == config.iterations:
                _save(algo, out, state)
        agent = RLlibAgent(algo.get_module(), config.system, {"path": portable_path(out), "model": _model_info(config)})
    finally:
        algo.stop()
    done = state.get("evaluation") or {}
    if episodes and (done.get("episodes"), done.get("seed"), done.get("max_steps")) != (episodes, seed, max_steps):
        evaluation = evaluate_agent(agent, episodes=episodes, seed=seed, checkpoint=config.checkpoint,
                                    workers=workers, ray=ray, max_steps=max_steps)
        evaluation["command"] = command
        state["evaluation"] = portable_paths(evaluation)
        write_json(state_path, state)
    return state


def _model_info(config: RLlibConfig) -> dict[str, Any]:
    folder = checkpoint_folder(config.checkpoint, config.system)
    return {"path": portable_path(folder), "weights_sha256": read_config(folder).get("weights_sha256")}


def _save(algo: Any, out: Path, state: dict[str, Any]) -> None:
    """RLlib's checkpoint (a folder: written beside, then swapped in) and the run's state and curve."""
    fresh, old = out / f"{CHECKPOINT}.new", out / f"{CHECKPOINT}.old"
    shutil.rmtree(fresh, ignore_errors=True)
    algo.save_to_path(str(fresh))
    if (out / CHECKPOINT).exists():
        shutil.rmtree(old, ignore_errors=True)
        (out / CHECKPOINT).rename(old)
    fresh.rename(out / CHECKPOINT)
    shutil.rmtree(old, ignore_errors=True)
    write_json(out / STATE, state)
    with open(out / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", "env_steps", "imagined_return", "wall_s"])
        writer.writeheader()
        writer.writerows(state["curve"])
