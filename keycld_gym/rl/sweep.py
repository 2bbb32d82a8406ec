"""Sweeps of agents in imagination on Ray Tune (`keycld-gym sweep`): seeds and settings, ranked by real return.

    keycld-gym sweep --system cartpole --seeds 0 1 2 3 --out runs/sweep [--ray ADDRESS]

A trial is one `train-agent` run of the system's bundled keypoint recipe in a model's
imagination, with its own seed and settings (`--grid learning_rate=3e-4,1e-3`, the SB3
algorithm's arguments, or the env's `uncertainty_penalty`/`uncertainty_limit`/`energy_shaping`). It reports
each learning-curve point (imagined return) to Tune as it is measured, and at the end its
real return by the evaluation protocol on a *selection* set of seeds (`SELECTION_SEED`+),
which is not the evaluation's. The sweep ranks the trials by that real return, then measures
the best one on the unseen evaluation seeds (100000+) beside the bundled agent's record.

Real episodes are the scarce resource: a trial costs its selection episodes' frames in the
real task (`real_frames` in the table), the best one the evaluation's; training costs none.

Each trial runs on one CPU and trains into OUT/trials/NAME, resuming what is there, and the
sweep restores Tune's own state from OUT/tune: a sweep that was stopped is continued by the
same command. On a cluster of several machines OUT must be on storage every node sees.
Ray is imported only when a sweep runs (`pip install -e ".[ray]"`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from keycld_gym.agents import bundled_recipe
from keycld_gym.files import portable_paths, write_json
from keycld_gym.model.checkpoint import checkpoint_folder
from keycld_gym.parallel import init_ray
from keycld_gym.rl.agent import bundled_agent_path, load_agent
from keycld_gym.rl.agent_evaluation import evaluate_agent
from keycld_gym.rl.agent_training import (
    STATE,
    AgentTrainConfig,
    curve_interval,
    train_agent,
)
from keycld_gym.sim.systems import get_system

# the selection episodes' seeds: apart from evaluate-agent's (100000+), the learning curve's
# (200000+) and the real-task loop's (301000+)
SELECTION_SEED = 400_000
EVAL_SEED = 100_000
# settings of the training config itself; every other grid key is an argument of the SB3 algorithm
_CONFIG_SETTINGS = ("uncertainty_penalty", "uncertainty_limit", "energy_shaping")
TABLE = "sweep"


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep trains and how it judges (module docstring).

    Attributes:
        system: the system; its bundled keypoint recipe is trained.
        seeds: the trials' training seeds; every seed is crossed with every grid point.
        grid: setting -> the values to try (`uncertainty_penalty`, `uncertainty_limit`, `energy_shaping`, or an
            argument of the recipe's SB3 algorithm such as `learning_rate`).
        checkpoint: the world model (None: the bundled one).
        budget_min: minutes of training per trial (None: the recipe's benchmark budget).
        total_steps: imagined agent steps per trial (None: the recipe's).
        eval_every: agent steps between learning-curve points (None: the benchmark's, about 30
            points and at least 4,000 steps apart).
        selection_episodes, selection_seed: the real episodes each trial is ranked by.
        eval_episodes, eval_seed: the best trial's real evaluation on unseen seeds.
        max_steps: cut every real episode after this many agent steps (a quick check; None: whole episodes).
    """

    system: str = "cartpole"
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    checkpoint: str | None = None
    budget_min: float | None = None
    total_steps: int | None = None
    eval_every: int | None = None
    selection_episodes: int = 3
    selection_seed: int = SELECTION_SEED
    eval_episodes: int = 10
    eval_seed: int = EVAL_SEED
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if bundled_recipe(get_system(self.system).name, "keypoints") is None:
            raise ValueError(f"no bundled keypoint agent recipe for {self.system!r} to sweep")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {list(self.seeds)}")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"--grid {key}: give at least one value")
        if self.selection_episodes < 1 or self.eval_episodes < 0:
            raise ValueError("selection_episodes must be at least 1 and eval_episodes non-negative")
        if self.budget_min is not None and not self.budget_min > 0:
            raise ValueError(f"budget_min must be positive, got {self.budget_min}")
        for trial in self.trials():  # an unknown setting fails here, before any trial starts
            self.train_config(trial).recipe()

    def trials(self) -> list[dict[str, Any]]:
        """Every trial: its name, seed and settings (the seeds crossed with the grid)."""
        keys = sorted(self.grid)
        out = []
        for seed, values in itertools.product(self.seeds, itertools.product(*(self.grid[k] for k in keys))):
            settings = dict(zip(keys, values))
            name = "-".join([f"seed{seed}", *(f"{k}{v}" for k, v in settings.items())])
            out.append({"name": name, "seed": seed, "settings": settings})
        return out

    def train_config(self, trial: dict[str, Any]) -> AgentTrainConfig:
        """The `train-agent` configuration of one trial."""
        recipe = bundled_recipe(get_system(self.system).name, "keypoints")
        steps = self.total_steps or recipe.total_steps
        settings = dict(trial["settings"])
        own = {k: settings.pop(k) for k in _CONFIG_SETTINGS if k in settings}
        budget = recipe.benchmark_budget_min if self.budget_min is None else self.budget_min
        return AgentTrainConfig(
            system=recipe.system, obs_type="keypoints", algo=recipe.algo, seed=trial["seed"],
            checkpoint=str(checkpoint_folder(self.checkpoint, recipe.system)), total_steps=self.total_steps,
            budget_s=budget * 60, eval_every=self.eval_every or curve_interval(steps), hyperparams=settings or None,
            **own)

    def real_frames(self, episodes: int) -> int:
        """Physics steps (camera frames) of `episodes` real episodes under this sweep's `max_steps`."""
        spec = get_system(self.system)
        per_episode = spec.episode_steps if self.max_steps is None else min(spec.episode_steps, self.max_steps * spec.action_repeat)
        return episodes * per_episode

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepConfig":
        return cls(**{**d, "seeds": tuple(d["seeds"]), "grid": {k: tuple(v) for k, v in d["grid"].items()}})


def run_trial(params: dict[str, Any]) -> None:
    """One trial, as Ray Tune runs it (a function trainable): train, report the curve, select by real return."""
    from ray import tune

    torch.set_num_threads(1)  # the trial's one CPU
    config = SweepConfig.from_dict(params["sweep"])
    trial = params["trial"]
    folder = Path(params["out"]) / "trials" / trial["name"]
    train = config.train_config(trial)
    key = train.return_key

    def report(point: dict[str, Any]) -> None:
        tune.report({"steps": point["steps"], key: point[key]})

    state = train_agent(train, folder, resume=(folder / STATE).exists(), progress=False, on_point=report)
    selection = folder / "selection.json"
    if not selection.exists():
        result = evaluate_agent(load_agent(folder / "agent"), episodes=config.selection_episodes,
                                seed=config.selection_seed, checkpoint=train.checkpoint, imagined=False, workers=1,
                                max_steps=config.max_steps)
        write_json(selection, portable_paths(result))
    result = json.loads(selection.read_text())
    tune.report({"steps": state["curve"][-1]["steps"], key: state["curve"][-1][key],
                 "real_return": result["real_return_mean"]})


def trial_row(config: SweepConfig, trial: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """A finished trial's row of the table (None while it has not finished)."""
    state_path, selection_path = folder / STATE, folder / "selection.json"
    if not (state_path.exists() and selection_path.exists()):
        return None
    state, selection = json.loads(state_path.read_text()), json.loads(selection_path.read_text())
    last = state["curve"][-1]
    return {"trial": trial["name"], "seed": trial["seed"], "settings": trial["settings"], "steps": last["steps"],
            "wall_s": state.get("wall_s"), "imagined_return": last.get("imagined_return"),
            "real_return": selection["real_return_mean"], "real_return_std": selection["real_return_std"],
            "real_returns": selection["real_returns"], "real_frames": config.real_frames(config.selection_episodes),
            "agent": portable_paths(str(folder / "agent"))}


def sweep(config: SweepConfig, out: str | Path, *, ray: str | None = None, command: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run (or continue) the sweep into `out` on Ray Tune (`ray`: an address; None: a Ray on this machine); its record."""
    out = Path(out).resolve()
    # absolute: Tune runs each trial in a folder of its own
    config = dataclasses.replace(config, checkpoint=str(checkpoint_folder(config.checkpoint, config.system).resolve()))
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / f"{TABLE}.json"
    if record_path.exists():
        old = json.loads(record_path.read_text()).get("config")
        if old is not None and old != portable_paths(config.to_dict()):
            raise ValueError(f"{out} holds a sweep with other settings: rerun it with the same ones to continue, or "
                             "choose another --out")
    write_json(record_path, {"config": portable_paths(config.to_dict()), "command": command, "complete": False})
    init_ray(ray or "local")
    from ray import tune

    trainable = tune.with_resources(run_trial, {"cpu": 1})
    storage = out / "tune"
    if tune.Tuner.can_restore(storage / TABLE):
        tuner = tune.Tuner.restore(str(storage / TABLE), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(config.trials()), "sweep": config.to_dict(), "out": str(out)},
            run_config=tune.RunConfig(name=TABLE, storage_path=str(storage), verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=2)))
    tuner.fit()
    rows = [trial_row(config, t, out / "trials" / t["name"]) for t in config.trials()]
    missing = [t["name"] for t, r in zip(config.trials(), rows) if r is None]
    if missing:
        raise RuntimeError(f"trials {missing} did not finish (their errors are under {storage / TABLE}); rerun the "
                           "same command to continue them")
    rows.sort(key=lambda r: -r["real_return"])
    record: dict[str, Any] = {"config": portable_paths(config.to_dict()), "command": command, "complete": True, "rows": rows,
                              "real_frames_selection": sum(r["real_frames"] for r in rows)}
    best = rows[0]
    if config.eval_episodes:
        agent = load_agent(out / "trials" / best["trial"] / "agent")
        eval_path = out / "best-eval.json"
        best_eval = json.loads(eval_path.read_text()) if eval_path.exists() else {}
        if best_eval.get("agent_weights_sha256") != agent.info.get("weights_sha256"):  # not yet, or another best
            best_eval = evaluate_agent(agent, episodes=config.eval_episodes, seed=config.eval_seed,
                                       checkpoint=config.checkpoint, workers=1, ray=ray or "local",
                                       max_steps=config.max_steps)
            best_eval["command"] = command
            write_json(eval_path, portable_paths(best_eval))
        record["best"] = {"trial": best["trial"], "real_return": best_eval["real_return_mean"],
                          "real_return_std": best_eval["real_return_std"], "seed": config.eval_seed,
                          "imagined_return": best_eval.get("imagined_return_mean"),
                          "bundle": f"keycld-gym bundle-agent --agent {best['agent']} --eval "
                                    f"{portable_paths(str(out / 'best-eval.json'))}"}
    bundled = bundled_agent_path(config.system, "keypoints")
    if (bundled / "agent.json").exists():
        evaluation = load_agent(bundled).info.get("evaluation") or {}
        record["bundled"] = {k: evaluation.get(k) for k in ("real_return_mean", "real_return_std", "seed", "episodes")}
    write_json(record_path, record)
    (out / f"{TABLE}.md").write_text(format_table(record) + "\n")
    return record


def format_table(record: dict[str, Any]) -> str:
    """The sweep's table, best first, as Markdown."""
    lines = ["| trial | seed | settings | steps | imagined return | real return (selection seeds) | real frames |",
             "|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "the recipe's"
        lines.append(f"| {r['trial']} | {r['seed']} | {settings} | {r['steps']} | {r['imagined_return']:.1f} | "
                     f"{r['real_return']:.1f} ± {r['real_return_std']:.1f} | {r['real_frames']} |")
    if "best" in record:
        b = record["best"]
        lines.append(f"\nBest, {b['trial']}, on the unseen evaluation seeds {b['seed']}+: real "
                     f"{b['real_return']:.1f} ± {b['real_return_std']:.1f}. Bundle it: `{b['bundle']}`")
    if record.get("bundled", {}).get("real_return_mean") is not None:
        o = record["bundled"]
        lines.append(f"The bundled agent's record: {o['real_return_mean']:.1f} ± {o['real_return_std']:.1f} "
                     f"(seeds {o['seed']}+).")
    return "\n".join(lines)
