"""Training an agent in imagination only: `keycld-gym train-agent`.

The recipe (`agents/`) gives algorithm, policy, hyper-parameters and budget; the env is the
model's batched imagined env, with keypoint noise of the measured real estimation error
where the recipe asks for it. The real task is used only to measure: an optional periodic
evaluation there draws the learning curve beside the imagined return.

`world="true"` trains the same recipe on the true simulator instead (a reference: what the
RL alone reaches on the task): keypoint observations of the true state, mapped into the
model's keypoint space (`envs/true_keypoints.py`), no noise; its curve is the true return.
Training episodes are cut as the recipe says; exploring starts, which draw states from the
model's own data in its keypoint space, are the imagined env's only: every true episode
starts from the task's reset.

OUT/
    agent/          the trained agent (agent.safetensors + agent.json), written at the end
    resume/         SB3's own checkpoint (model.zip, replay_buffer.pkl) every few minutes:
                    trusted local files for `--resume` (they unpickle; share `agent/` instead)
    state.json      configuration, steps done, learning curve, wall time
    curve.csv       the learning curve
    logs/           SB3's logger: progress.csv and TensorBoard events
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
from tqdm.auto import tqdm

from keycld_gym.agents import AgentRecipe, get_recipe
from keycld_gym.envs.true_keypoints import TrueKeypointEnv
from keycld_gym.errors import CheckpointError
from keycld_gym.files import differing_keys, portable_path, write_json
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.model.tracking import Filtering
from keycld_gym.rl.agent import (
    ALGORITHMS,
    Agent,
    imagined_vec_env,
    load_agent,
    real_vec_env,
)
from keycld_gym.rl.agent_evaluation import episode_returns, model_data
from keycld_gym.sim.keypoint_truth import KeypointMap
from keycld_gym.sim.systems import get_system

STATE = "state.json"
IDENTITY = ("system", "obs_type", "algo", "seed", "checkpoint", "observation_noise", "world", "uncertainty_penalty",
            "uncertainty_limit", "energy_shaping", "normalize_reward", "init_from", "hyperparams")
WORLDS = ("imagined", "true")
# episodes of the learning curve start from their own seeds, apart from evaluate-agent's
CURVE_SEED = 200_000


def curve_interval(total_steps: int) -> int:
    """Agent steps between the points of a run's learning curve: about 30 points, at least 4,000 steps apart
    (SAC's short budgets keep every 4,000; each point costs its imagined episodes)."""
    return max(4000, total_steps // 30)


@dataclass
class AgentTrainConfig:
    """What `train-agent` trains: a recipe, its budget, and the learning-curve schedule."""

    system: str = "cartpole"
    obs_type: str = "keypoints"
    algo: str = "sac"
    seed: int = 0
    checkpoint: str | None = None  # the world model (None: the bundled one)
    total_steps: int | None = None  # imagined agent steps (None: the recipe's budget)
    budget_s: float | None = None  # stop after this much training wall time
    observation_noise: str | None = None  # None: the recipe's
    uncertainty_penalty: float | None = None  # None: the recipe's (needs a model with an ensemble)
    uncertainty_limit: float | None = None  # None: the recipe's
    energy_shaping: float | None = None  # None: the recipe's
    normalize_reward: bool | None = None  # None: the recipe's
    eval_every: int = 5000  # agent steps between learning-curve points
    eval_episodes: int = 16  # imagined episodes per point (batched)
    real_eval_every: int = 0  # every n-th curve point also in the real task (0: never)
    real_eval_episodes: int = 2
    checkpoint_every_s: float = 120.0
    world: str = "imagined"  # or "true": the reference on the true simulator (module docstring)
    keypoint_map: dict[str, list] | None = None  # world "true": `KeypointMap.to_dict` into the model's keypoints
    # Continue this agent (a folder) instead of starting afresh: its training run's SB3
    # checkpoint (policy, optimizers, entropy coefficient) where the folder is a run's `agent/`
    # beside `resume/`, else its policy weights; the replay buffer starts empty (its
    # transitions were imagined by another model). The real-task loop's agents continue so.
    init_from: str | None = None
    # The recipe's algorithm settings changed (a sweep's trial): each a constructor argument of
    # the SB3 algorithm (`learning_rate`, `gamma`, ...); the agent's recipe records them.
    hyperparams: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world must be one of {WORLDS}, got {self.world!r}")
        if self.world == "true" and (self.obs_type != "keypoints" or self.keypoint_map is None):
            raise ValueError("world 'true' trains on keypoints of the true state: obs_type 'keypoints' and a keypoint_map "
                             "(`keypoint_map_for(model, held_out_data)`) are needed")

    @property
    def return_key(self) -> str:
        """The learning curve's return in the training world."""
        return "imagined_return" if self.world == "imagined" else "true_return"

    def recipe(self) -> AgentRecipe:
        recipe = get_recipe(self.system, self.obs_type, self.algo)
        changes: dict[str, Any] = {}
        if self.total_steps is not None:
            changes["total_steps"] = self.total_steps
        if self.observation_noise is not None:
            changes["observation_noise"] = self.observation_noise
            if self.observation_noise == "estimated" and not isinstance(recipe.real_estimator, Filtering):
                changes["real_estimator"] = Filtering()  # trained through the filter, it meets the filter
        if self.uncertainty_penalty is not None:
            changes["uncertainty_penalty"] = self.uncertainty_penalty
        if self.uncertainty_limit is not None:
            changes["uncertainty_limit"] = self.uncertainty_limit
        if self.energy_shaping is not None:
            changes["energy_shaping"] = self.energy_shaping
        if self.normalize_reward is not None:
            changes["normalize_reward"] = self.normalize_reward
        if self.world == "true":
            changes["observation_noise"] = "none"  # the true state: nothing estimated
        if self.hyperparams:
            known = {name for name in inspect.signature(ALGORITHMS[recipe.algo]).parameters if not name.startswith("_")}
            known -= {"policy", "env", "policy_kwargs", "seed", "device", "verbose"}
            unknown = sorted(set(self.hyperparams) - known)
            if unknown:
                raise ValueError(f"unknown {recipe.algo} settings {unknown}: the settings are the constructor arguments "
                                 f"of stable-baselines3's {ALGORITHMS[recipe.algo].__name__} ({', '.join(sorted(known))})")
            changes["hyperparams"] = {**recipe.hyperparams, **self.hyperparams}
        return recipe.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Progress(BaseCallback):
    """A tqdm bar over agent steps."""

    def __init__(self, total: int, start: int, enabled: bool):
        super().__init__()
        self.bar = tqdm(total=total, initial=start, unit="step", desc="train-agent", disable=not enabled)

    def _on_step(self) -> bool:
        self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


class _Run(BaseCallback):
    """Learning curve, periodic checkpoints and the wall-time budget of one training run."""

    def __init__(self, trainer: "_Trainer"):
        super().__init__()
        self.trainer = trainer

    def _on_step(self) -> bool:
        t = self.trainer
        if self.num_timesteps >= t.next_eval:
            t.evaluate(self.num_timesteps)
        if time.time() - t.last_save >= t.config.checkpoint_every_s:
            t.save_resume()
        return not t.over_budget()


class _Trainer:
    def __init__(self, config: AgentTrainConfig, out: Path, command: str | None, progress: bool,
                 on_point: Callable[[dict[str, Any]], None] | None = None):
        self.config, self.out, self.command, self.progress = config, out, command, progress
        self.on_point = on_point
        self.recipe = config.recipe()
        torch.manual_seed(config.seed)
        self.model_path = checkpoint_folder(config.checkpoint, config.system)
        self.model = load_model(self.model_path)
        self.venv = self.world_env(self.recipe.num_envs, config.seed, training=True)
        if self.recipe.normalize_reward:
            self.venv = VecNormalize(self.venv, norm_obs=False, norm_reward=True,
                                     gamma=self.recipe.hyperparams.get("gamma", 0.99))
        self.curve: list[dict[str, Any]] = []
        self.wall_before = 0.0  # training time of earlier (interrupted) sessions
        self.started = time.time()
        self.last_save = time.time()
        self.next_eval = 0
        self._eval_env = self._real_env = None
        self.initialized_from: str | None = None

    def world_env(self, num_envs: int, seed: int, training: bool = False) -> VecEnv:
        """`num_envs` envs of the training world: the model's imagination, or the true simulator."""
        if self.config.world == "imagined":
            return imagined_vec_env(self.recipe, num_envs, self.model_path, seed=seed, training=training)
        kmap = KeypointMap.from_dict(self.config.keypoint_map)
        steps = self.recipe.training_episode_steps if training else None

        def make() -> gym.Env:
            env = TrueKeypointEnv(self.recipe.system, kmap)
            return env if steps is None else gym.wrappers.TimeLimit(env, steps)

        venv = DummyVecEnv([make] * num_envs)  # physics only, nothing rendered: cheap in one process
        venv.seed(seed)
        return venv

    # -- measuring ----------------------------------------------------------------------------
    def evaluate(self, steps: int) -> dict[str, Any]:
        c = self.config
        policy = self.algorithm.policy
        act = lambda obs: policy.predict(obs, deterministic=True)[0]  # noqa: E731
        if self._eval_env is None:
            self._eval_env = self.world_env(c.eval_episodes, CURVE_SEED)
        imag = episode_returns(act, self._eval_env, c.eval_episodes, CURVE_SEED)
        point: dict[str, Any] = {"steps": int(steps), "wall_s": round(self.wall(), 1),
                                 c.return_key: float(np.mean(imag)), "real_return": None}
        index = len(self.curve)
        if c.real_eval_every and index % c.real_eval_every == 0:
            if self._real_env is None:
                self._real_env = real_vec_env(self.recipe, self.model)
            point["real_return"] = float(np.mean(episode_returns(act, self._real_env, c.real_eval_episodes, CURVE_SEED)))
        self.curve.append(point)
        self.algorithm.logger.record(f"eval/{c.return_key}", point[c.return_key])
        if point["real_return"] is not None:
            self.algorithm.logger.record("eval/real_return", point["real_return"])
        self.next_eval = steps + c.eval_every
        self.write_curve()
        if self.on_point is not None:
            self.on_point(point)
        return point

    def write_curve(self) -> None:
        with open(self.out / "curve.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["steps", "wall_s", self.config.return_key, "real_return"])
            writer.writeheader()
            writer.writerows(self.curve)

    def wall(self) -> float:
        return self.wall_before + time.time() - self.started

    def over_budget(self) -> bool:
        return self.config.budget_s is not None and self.wall() >= self.config.budget_s

    # -- saving -------------------------------------------------------------------------------
    def state(self, status: str) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "recipe": self.recipe.to_dict(), "status": status,
                "steps": int(self.algorithm.num_timesteps), "wall_s": round(self.wall(), 1),
                "curve": self.curve, "next_eval": self.next_eval, "command": self.command,
                "initialized_from": self.initialized_from,
                "torch_threads": torch.get_num_threads()}

    def save_resume(self) -> None:
        folder = self.out / "resume"
        folder.mkdir(exist_ok=True)
        tmp = folder / f"model.tmp{os.getpid()}.zip"
        self.algorithm.save(tmp)
        os.replace(tmp, folder / "model.zip")
        if isinstance(self.algorithm, OffPolicyAlgorithm):
            tmp = folder / f"replay_buffer.tmp{os.getpid()}.pkl"
            self.algorithm.save_replay_buffer(tmp)
            os.replace(tmp, folder / "replay_buffer.pkl")
        write_json(self.out / STATE, self.state("running"))
        self.last_save = time.time()

    # -- the run ------------------------------------------------------------------------------
    def setup(self, resume: bool) -> None:
        algo_cls = ALGORITHMS[self.recipe.algo]
        saved = self.out / "resume" / "model.zip"
        if resume and saved.exists():
            state = json.loads((self.out / STATE).read_text())
            # budget and curve schedule may change on resume; what is learned may not
            differ = differing_keys(state["config"], self.config.to_dict(), IDENTITY)
            if differ:
                raise ValueError(f"--resume with another configuration than {self.out}'s run (differs in: {', '.join(differ)})")
            self.algorithm = algo_cls.load(saved, env=self.venv, device="cpu")
            buffer = self.out / "resume" / "replay_buffer.pkl"
            if isinstance(self.algorithm, OffPolicyAlgorithm) and buffer.exists():
                self.algorithm.load_replay_buffer(buffer)
            self.curve, self.wall_before, self.next_eval = state["curve"], state["wall_s"], state["next_eval"]
            self.initialized_from = state.get("initialized_from")
            self.resumed = True
        else:
            if resume and (self.out / STATE).exists():
                raise CheckpointError(f"{self.out} has no resume checkpoint yet; start it again without --resume")
            self.algorithm = algo_cls(
                self.recipe.policy, self.venv, seed=self.config.seed, device="cpu",
                policy_kwargs=self.recipe.policy_kwargs, verbose=0, **self.recipe.hyperparams,
            )
            if self.config.init_from is not None:
                self.initialized_from = self._init_from(Path(self.config.init_from), algo_cls)
            self.resumed = False
        self.algorithm.set_logger(configure(str(self.out / "logs"), ["csv", "tensorboard"]))

    def _init_from(self, folder: Path, algo_cls: type) -> str:
        """Continue the agent in `folder` (`AgentTrainConfig.init_from`); returns what was taken."""
        agent = load_agent(folder, self.recipe.system, self.recipe.obs_type)
        if agent.recipe.algo != self.recipe.algo:
            raise ValueError(f"agent {folder} is a {agent.recipe.algo} agent: it cannot continue as {self.recipe.algo}")
        saved = folder.parent / "resume" / "model.zip"
        run_state = folder.parent / STATE
        if saved.exists() and run_state.exists() and json.loads(run_state.read_text()).get("status") == "done":
            # the run's own checkpoint: the optimizers and SAC's entropy coefficient come along
            self.algorithm = algo_cls.load(saved, env=self.venv, device="cpu")
            if not torch.equal(torch.nn.utils.parameters_to_vector(self.algorithm.policy.parameters()),
                               torch.nn.utils.parameters_to_vector(agent.policy.parameters())):
                raise CheckpointError(f"{saved} is not the checkpoint of agent {folder} (their policies differ)")
            return "sb3 checkpoint"
        self.algorithm.policy.load_state_dict(agent.policy.state_dict())
        return "policy weights"

    def run(self, resume: bool) -> dict[str, Any]:
        self.setup(resume)
        total = self.recipe.total_steps
        done = self.algorithm.num_timesteps
        callbacks = CallbackList([_Progress(total, done, self.progress), _Run(self)])
        try:
            if done < total and not self.over_budget():
                self.algorithm.learn(total - done, callback=callbacks, reset_num_timesteps=not self.resumed,
                                     log_interval=4)
        except KeyboardInterrupt:
            self.save_resume()
            raise
        if not self.curve or self.curve[-1]["steps"] != self.algorithm.num_timesteps:
            self.evaluate(self.algorithm.num_timesteps)
        self.save_resume()
        agent = Agent.from_algorithm(self.algorithm, self.recipe)
        key = self.config.return_key
        agent.save(
            self.out / "agent",
            model={"path": portable_path(self.model_path), "weights_sha256": self.model.checkpoint_config.get("weights_sha256"),
                   **model_data(self.model_path, self.recipe.system)},
            training={"command": self.command, "seed": self.config.seed, "steps": int(self.algorithm.num_timesteps),
                      "wall_s": round(self.wall(), 1), "torch_threads": torch.get_num_threads(),
                      "world": self.config.world, key: self.curve[-1][key], "real_frames": 0,
                      "init_from": portable_path(self.config.init_from) if self.config.init_from else None,
                      # the reference learns in the true simulator: that many of its physics steps
                      "true_physics_steps": 0 if self.config.world == "imagined" else
                      int(self.algorithm.num_timesteps) * get_system(self.recipe.system).action_repeat},
        )
        state = self.state("done")
        write_json(self.out / STATE, state)
        return state


def train_agent(config: AgentTrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                command: str | None = None, on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train `config`'s agent in imagination (or its world) into `out` (see the module docstring); returns the run's state.

    `on_point(point)` hears of each learning-curve point as it is measured (a sweep reports them to Ray Tune).
    """
    out = Path(out)
    if not resume and (out / STATE).exists():  # never replace a run's agent and curve unasked
        raise CheckpointError(f"{out} holds a training run already: continue it with --resume (the same settings), "
                              "or train into a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    return _Trainer(config, out, command, progress, on_point).run(resume)
