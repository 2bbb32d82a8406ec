"""The real-task loop that refines the model where the policy goes (Dyna): `keycld-gym improve`.

Round r (1..N):

1. The current actor (the agent, or the model's planner guided by it) runs `episodes` real
   episodes from the task's reset, recorded frame by frame (`keycld_gym.rl.real_episodes`):
   their returns are the round's real return, and their frames, actions and rewards (no
   simulator state) are added to the dynamics data (`keycld_gym.data.episodes`).
2. Every dynamics member of the model continues its training on the grown data
   (`TrainConfig.continue_from`: resumed, not started again), member 0 first; the start
   states of sequences fitted before are refined, the new ones fitted cold, once.
3. The members make the round's model (`round-r/model`, an ensemble like the one before).
4. The agent continues in the refined imagination (`AgentTrainConfig.init_from`).

After the last round the last agent (or planner) is evaluated by the real protocol
(`evaluate_agent`: 10 episodes on the unseen seeds 100000+). Real frames are counted in all:
the model's training data plus every round's episodes; the final evaluation's episodes are
measurement, as for every agent, and not learned from.

OUT/
    improve.json    settings, one record per finished round, the final evaluation (and, when more
                    rounds were asked for later, the evaluations after fewer in `earlier_finals`)
    improve.png     real and imagined return against the real frames used in all
    data/           the grown dynamics data set
    keypoints.npz   its training sequences' keypoints (the encoder never changes in the loop)
    round-r/        member-i/ (dynamics runs), model/ (the refined ensemble), agent-run/ (train-agent)

Resumable: every step's result is on disk before the next starts, and a rerun of the same
command continues where it stopped (episodes are never run twice).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keycld_gym.data.dataset import WindowDataset
from keycld_gym.data.episodes import add_episodes, grow_dataset
from keycld_gym.errors import CheckpointError
from keycld_gym.files import (
    atomic_write_bytes,
    differing_keys,
    json_roundtrip,
    portable_path,
    write_json,
)
from keycld_gym.model.checkpoint import (
    NOISE_FILE,
    checkpoint_folder,
    load_model,
    read_config,
    save_ensemble,
)
from keycld_gym.model.ensemble import DynamicsEnsemble, member_state
from keycld_gym.model.start_bank import EXPLORING_STARTS, START_BANK
from keycld_gym.rl.agent import imagined_vec_env, load_agent
from keycld_gym.rl.agent_evaluation import episode_returns, evaluate_agent, model_data
from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent
from keycld_gym.rl.real_episodes import ACTORS, Actor, recorded_episodes, summary
from keycld_gym.training.ensemble import member_config
from keycld_gym.training.state import load_state
from keycld_gym.training.trainer import Trainer

RECORD = "improve.json"
PLOT = "improve.png"
# the refined model keeps the files that belong to its encoder and the real task, not to its dynamics
_KEPT_FILES = (START_BANK, EXPLORING_STARTS, NOISE_FILE)
# what a resumed run must share with the one it continues
_IDENTITY = ("system", "checkpoint", "data", "actor", "agent", "episodes", "model_steps", "agent_steps", "seed",
             "episode_seed", "max_steps", "settings")


@dataclass(frozen=True)
class ImproveConfig:
    """One real-task loop: where it starts, who acts, and what each round spends.

    Attributes:
        checkpoint: the model the loop starts from (with its ensemble, if it has one).
        agent: the keypoint agent it starts from (a folder, or 'bundled'); with `actor`
            'plan' the planner's guide.
        data: the model's dynamics data set (None: the folder its config records).
        episodes: real episodes per round (the real frames each round adds).
        model_steps: dynamics steps of every member per round.
        agent_steps: the agent's imagined steps per round.
        episode_seed: round r's episode i starts from the task's reset with seed
            `episode_seed + 1000 r + i` (apart from the protocol's evaluation seeds).
        max_steps: cut each real episode after this many agent steps (quick checks; None: whole).
        settings: the planner's settings (`evaluate-agent --set`), with `actor` 'plan'.
    """

    system: str
    checkpoint: str
    agent: str = "bundled"
    actor: str = "agent"
    data: str | None = None
    rounds: int = 3
    episodes: int = 5
    model_steps: int = 200
    agent_steps: int = 100_000
    eval_episodes: int = 10
    seed: int = 0
    episode_seed: int = 300_000
    max_steps: int | None = None
    settings: dict[str, Any] | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if self.actor not in ACTORS:
            raise ValueError(f"actor must be one of {ACTORS}, got {self.actor!r}")
        for name in ("rounds", "episodes", "model_steps", "eval_episodes", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.agent_steps < 0:
            raise ValueError(f"agent_steps must be non-negative, got {self.agent_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 (or None for whole episodes), got {self.max_steps}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return dataclasses.asdict(self)


class _Loop:
    def __init__(self, config: ImproveConfig, out: Path, command: str | None, progress: bool):
        self.config, self.out, self.command, self.progress = config, out, command, progress
        self.start_model = checkpoint_folder(config.checkpoint, config.system)
        self.start = start = load_model(self.start_model)  # its encoder is every round's
        if start.spec.name != config.system:
            raise CheckpointError(f"{config.checkpoint} is not a {config.system} model")
        self.data_source = Path(config.data or start.checkpoint_config.get("data", {}).get("path", ""))
        self.start_agent = load_agent(config.agent, config.system, "keypoints")
        self.model_frames = model_data(self.start_model, config.system)["model_real_frames"]
        self.record = self._open_record()

    # -- the record -----------------------------------------------------------------------------
    def _open_record(self) -> dict[str, Any]:
        path = self.out / RECORD
        settings = json_roundtrip({**self.config.to_dict(), "checkpoint": portable_path(self.start_model),
                                   "agent": portable_path(self.start_agent.info["path"])})
        if path.exists():
            record = json.loads(path.read_text())
            differ = differing_keys(record.get("config"), settings, _IDENTITY)
            if differ:
                raise ValueError(f"{self.out} holds a loop with other settings (differs in: {', '.join(differ)}): rerun "
                                 "its own command to continue it, or choose another --out")
            if len(record["rounds"]) > self.config.rounds:
                raise ValueError(f"{self.out} holds {len(record['rounds'])} finished rounds: ask for at least as many "
                                 f"(--rounds {len(record['rounds'])}), or choose another --out")
            record["config"]["rounds"] = self.config.rounds  # more rounds may be asked for
            return record
        return {"config": settings, "command": self.command, "model_real_frames": self.model_frames,
                "model_data": model_data(self.start_model, self.config.system)["model_data"],
                "rounds": [], "final": None}

    def save(self) -> None:
        write_json(self.out / RECORD, self.record)
        plot_rounds(self.record, self.out / PLOT)

    # -- one round ------------------------------------------------------------------------------
    def current(self, r: int) -> tuple[Path, Path]:
        """The model and the agent folder that round `r` starts from."""
        if r == 1:
            return self.start_model, Path(self.start_agent.info["path"])
        return self.out / f"round-{r - 1}" / "model", self.out / f"round-{r - 1}" / "agent-run" / "agent"

    def actor(self, agent: Path) -> Actor:
        return Actor(self.config.actor, str(agent), self.config.settings or {})

    def run_round(self, r: int) -> dict[str, Any]:
        c, folder = self.config, self.out / f"round-{r}"
        model, agent = self.current(r)
        t0 = time.monotonic()
        # 1. real episodes, added to the data (at most once: the shard is named by the round)
        shard = self._episodes(r, model, agent)
        real_s = time.monotonic() - t0
        # the actor's imagined return in the model it acted from (the gap); a planner's is not measured
        imagined = None
        if c.actor == "agent":
            policy = load_agent(agent, c.system, "keypoints")
            seed = shard["source"]["seeds"][0]
            venv = imagined_vec_env(policy.recipe, c.episodes, model, seed=seed)
            imagined = [float(x) for x in episode_returns(policy.act, venv, c.episodes, seed, c.max_steps)]
        # 2.-3. the members continue on the grown data and make the round's model
        t1 = time.monotonic()
        new_model = self._refine(r, model, folder)
        model_s = time.monotonic() - t1
        # 4. the agent continues in the refined imagination
        t2 = time.monotonic()
        agent_state = self._continue_agent(r, new_model, agent, folder)
        agent_s = time.monotonic() - t2
        real = shard["source"]
        frames_so_far = self.model_frames + sum(x["real"]["frames"] for x in self.record["rounds"]) + real["frames"]
        result = {
            "round": r, "actor": c.actor, "model": portable_path(model), "agent": portable_path(agent),
            "real": {k: real[k] for k in ("seeds", "returns", "return_mean", "return_std", "frames")},
            "imagined_returns": None if imagined is None else [round(x, 2) for x in imagined],
            "imagined_return_mean": None if imagined is None else float(np.mean(imagined)),
            "gap": None if imagined is None else
            (float(np.mean(imagined)) - real["return_mean"]) / max(abs(real["return_mean"]), 1e-9),
            "total_real_frames": int(frames_so_far),
            "refined_model": portable_path(new_model), "next_agent": portable_path(folder / "agent-run" / "agent"),
            "agent_steps": agent_state["steps"],
            "seconds": {"real_episodes": round(real_s, 1), "model": round(model_s, 1), "agent": round(agent_s, 1)},
        }
        return result

    def _episodes(self, r: int, model: Path, agent: Path) -> dict[str, Any]:
        c = self.config
        data = self.out / "data"
        manifest = grow_dataset(data, self.data_source)
        name = f"round-{r}"
        for record in manifest["shards"]:
            if record.get("source", {}).get("name") == name:
                return record
        seeds = [c.episode_seed + 1000 * r + i for i in range(c.episodes)]
        episodes = recorded_episodes(c.system, model, self.actor(agent), seeds, workers=c.workers,
                                     max_steps=c.max_steps, progress=self.progress)
        source = {"name": name, "round": r, "actor": c.actor, "agent": portable_path(agent),
                  "model": portable_path(model), **summary(episodes)}
        return add_episodes(data, episodes, source)

    def _refine(self, r: int, model: Path, folder: Path) -> Path:
        """Continue every member of `model` on the grown data into `folder/member-i`; the round's model folder."""
        target = folder / "model"
        if (target / "config.json").exists():
            return target
        c = self.config
        source = load_model(model)
        size = source.ensemble.size if source.ensemble is not None else 1
        data = str(self.out / "data")
        base = member_config(source.checkpoint_config, model, 0, data)
        keypoints = None  # the training sequences' keypoints, read once by the (shared) encoder
        starts = self._previous_starts(r, model)
        members, seeds = [], []
        for i in range(size):
            run = folder / f"member-{i}"
            config = dataclasses.replace(
                base, seed=base.seed + i, bootstrap_seed=None if i == 0 else base.seed + i,
                continue_from=str(model), continue_member=i, dynamics_steps=c.model_steps, horizon_ramp_steps=0)
            resume = (run / "train_state.json").exists()
            if keypoints is None and not (resume and load_state(run / "train_state")["phase"] == "done"):
                keypoints = self._train_keypoints(source, config.val_fraction)
            trainer = Trainer(config, run, command=self.command, progress=self.progress, start_bank=False,
                              start_states=starts, keypoints=keypoints)
            finished = trainer.run(resume=resume)
            if i == 0:  # member 0's fitted start states start the others' (the same sequences)
                state = load_state(run / "train_state")
                starts = (state["start_q"], state["start_v"])
            members.append(finished)
            seeds.append(config.seed)
        staging = target.with_name(f"model.tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder / "member-0" / "model", staging)
        for name in _KEPT_FILES:
            if (model / name).exists():
                shutil.copy2(model / name, staging / name)
        if size > 1:
            refined = load_model(staging)
            ensemble = DynamicsEnsemble(refined, [member_state(m) for m in members[1:]])
            save_ensemble(staging, ensemble, {
                "seeds": seeds[1:],
                "continued_from": portable_path(model), "data": portable_path(data), "runs": portable_path(folder),
                "command": self.command, "round": r})
        os.replace(staging, target)
        return target

    def _train_keypoints(self, model: Any, val_fraction: float) -> torch.Tensor:
        """The grown data's training sequences' keypoints `(S, T, K, 2)`; each sequence encoded once in the loop.

        The loop never changes the encoder (every round's model has the start model's), so
        what it read off a sequence in an earlier round is kept in `OUT/keypoints.npz`.
        """
        if any(not torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(),
                                                     self.start.encoder.state_dict().values())):
            raise CheckpointError(f"{model.folder}'s encoder is not the start model's: the loop's keypoints do not apply")
        train = WindowDataset(self.out / "data", 1, split="train", val_fraction=val_fraction, system=self.config.system)
        ids = train.data["sequence_ids"]
        cache = self.out / "keypoints.npz"
        known: dict[int, np.ndarray] = {}
        if cache.exists():
            with np.load(cache) as z:
                known = dict(zip(z["ids"].tolist(), z["keypoints"]))
        missing = [i for i, s in enumerate(ids.tolist()) if s not in known]
        if missing:
            fresh = model.encode_frames(train.data["frames"][missing]).numpy()
            known.update(zip(ids[missing].tolist(), fresh))
            atomic_write_bytes(cache, lambda f: np.savez(f, ids=np.asarray(list(known)),
                                                         keypoints=np.stack(list(known.values()))))
        return torch.from_numpy(np.stack([known[s] for s in ids.tolist()]))

    def _previous_starts(self, r: int, model: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Start states fitted on the data before this round (its first sequences), where a run left them."""
        if r > 1:
            path = self.out / f"round-{r - 1}" / "member-0" / "train_state"
        else:  # the model's own ensemble's first trained member fitted them on the model's data
            runs = (read_config(model).get("ensemble") or {}).get("runs")
            path = Path(runs) / "member-1" / "train_state" if runs else None
        if path is None or not path.with_suffix(".json").exists():
            return None
        state = load_state(path)
        return state["start_q"], state["start_v"]

    def _continue_agent(self, r: int, model: Path, agent: Path, folder: Path) -> dict[str, Any]:
        c = self.config
        run = folder / "agent-run"
        recipe = load_agent(agent, c.system, "keypoints").recipe
        config = AgentTrainConfig(
            system=c.system, obs_type="keypoints", algo=recipe.algo, seed=c.seed + r, checkpoint=str(model),
            total_steps=c.agent_steps, observation_noise=recipe.observation_noise,
            uncertainty_penalty=recipe.uncertainty_penalty, uncertainty_limit=recipe.uncertainty_limit,
            energy_shaping=recipe.energy_shaping, normalize_reward=recipe.normalize_reward, eval_every=max(c.agent_steps, 1), init_from=str(agent))
        return train_agent(config, run, resume=(run / "state.json").exists(), progress=self.progress,
                           command=self.command)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()
        for r in range(len(self.record["rounds"]) + 1, self.config.rounds + 1):
            self.record["rounds"].append(self.run_round(r))
            if self.record["final"] is not None:  # an evaluation of fewer rounds stays on the curve
                self.record.setdefault("earlier_finals", []).append(self.record["final"])
            self.record["final"] = None  # another round's agent: evaluated again
            self.save()
        if self.record["final"] is None:
            self.record["final"] = self._final()
            self.save()
        return self.record

    def _final(self) -> dict[str, Any]:
        c = self.config
        model, agent = self.current(c.rounds + 1)
        actor = self.actor(agent).build(c.system, model)
        result = evaluate_agent(actor, episodes=c.eval_episodes, checkpoint=model, workers=c.workers,
                                imagined=c.actor == "agent", max_steps=c.max_steps)
        result["total_real_frames"] = self.record["rounds"][-1]["total_real_frames"]
        result["policy_real_frames"] = sum(x["real"]["frames"] for x in self.record["rounds"])
        return result


def improve(config: ImproveConfig, out: str | Path, *, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run (or continue) the real-task loop into `out` (module docstring); returns its record."""
    return _Loop(config, Path(out), command, progress).run()


def plot_rounds(record: dict[str, Any], path: Path) -> None:
    """Real (mean ± std) and imagined return per round against the real frames used in all, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = record["rounds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if rounds:
        x = [r["total_real_frames"] for r in rounds]
        ax.errorbar(x, [r["real"]["return_mean"] for r in rounds], [r["real"]["return_std"] for r in rounds],
                    marker="o", capsize=3, label="real (the round's episodes)")
        if all(r["imagined_return_mean"] is not None for r in rounds):
            ax.plot(x, [r["imagined_return_mean"] for r in rounds], "s--", label="imagined")
    earlier = record.get("earlier_finals") or []
    if earlier:
        ax.errorbar([f["total_real_frames"] for f in earlier], [f["real_return_mean"] for f in earlier],
                    [f["real_return_std"] for f in earlier], marker="*", markersize=9, capsize=3, color="0.5",
                    linestyle="none", label="after fewer rounds, unseen seeds")
    final = record.get("final")
    if final:
        ax.errorbar([final["total_real_frames"]], [final["real_return_mean"]], [final["real_return_std"]], marker="*",
                    markersize=12, capsize=3, color="k", label=f"final, {final['episodes']} unseen seeds")
    ax.set_xlabel("real frames in all (model data + rounds)")
    ax.set_ylabel("return")
    ax.set_title(f"keycld-gym improve: {record['config']['system']}")
    ax.grid(alpha=0.3)
    if rounds or final or earlier:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
