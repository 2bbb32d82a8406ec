"""The project page's ablation study for one system, on a finished pipeline run (`keycld-gym ablations`).

    keycld-gym pipeline --system pendulum --out runs/pendulum
    keycld-gym ablations --run runs/pendulum

KeyCLD against its two ablations, the Lagrangian without constraints and the second-order
neural ODE (`ABLATION_DYNAMICS`). Each ablation's dynamics phase runs on the run's dynamics
data with the recipe's training settings and budget, from the finished model's encoder and
renderer, so that only the dynamics differ. Every model is scored by `evaluate_model` on the
run's held-out data (same start windows, same epsilon); the hold-frame floor and the noisy
true simulator come with KeyCLD's evaluation (the pipeline's `eval.json`).

Writes RUN/ablations/KIND/ (each ablation's training run and `eval.json`), and the table as
RUN/ablations.json and RUN/ablations.md. Rerunning continues: a finished ablation is not
trained or evaluated again, an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from keycld_gym.analysis.evaluation import evaluate_model
from keycld_gym.files import write_json
from keycld_gym.model.checkpoint import load_model
from keycld_gym.parallel import run_units
from keycld_gym.training.pipeline import RECORD, Pipeline
from keycld_gym.training.recipes import ModelRecipe
from keycld_gym.training.trainer import Trainer

# The ablations as the project page defines them, the same for every system: what each
# changes in the recipe's dynamics (MLP sizes stay the recipe's). Without constraints there
# is no joint to put a torque or a damping on, so the Lagrangian on free keypoints takes the
# general forms: an MLP potential, a state-dependent input matrix on every keypoint and a
# damping per keypoint.
ABLATION_DYNAMICS: dict[str, dict[str, Any]] = {
    "unconstrained": dict(kind="unconstrained", input_matrix="state", input_keypoints=None, damping="keypoints",
                          linear_potential=False, potential_mlp=True),
    "neural_ode": dict(kind="neural_ode"),
}
LABELS = {
    "constrained": "KeyCLD",
    "unconstrained": "ablation: Lagrangian without constraints",
    "neural_ode": "ablation: neural ODE",
    "hold_frame": "reference: hold the last start frame",
    "true_simulator_noisy": "reference: true simulator from a noisy true state",
}
TABLE = "ablations"


class AblationStudy:
    """KeyCLD and its ablations on the data of one finished pipeline run `run` (module docstring)."""

    def __init__(self, run: str | Path, *, recipe: ModelRecipe | None = None, progress: bool = True,
                 command: str | None = None):
        self.run = Path(run)
        record_path = self.run / RECORD
        if not record_path.exists():
            raise FileNotFoundError(f"{record_path} not found: run `keycld-gym pipeline --system X --out {self.run}` first")
        record = json.loads(record_path.read_text())
        missing = [step for step in ("dynamics", "renderer", "evaluate") if step not in record["steps"]]
        if missing:
            raise ValueError(f"the pipeline in {self.run} has not finished ({', '.join(missing)} to run): "
                             f"rerun `keycld-gym pipeline --system {record['system']} --out {self.run}`")
        self.pipeline = Pipeline(recipe or record["system"], self.run, progress=progress, command=command)
        self.recipe = self.pipeline.recipe
        self.progress, self.command = progress, command

    def folder(self, kind: str) -> Path:
        """Where one ablation's training run and evaluation go."""
        return self.run / "ablations" / kind

    def train(self, kind: str) -> Path:
        """Train (or resume) one ablation's dynamics phase; its model folder."""
        dynamics = dataclasses.replace(self.recipe.model.dynamics, **ABLATION_DYNAMICS[kind])
        model = dataclasses.replace(self.recipe.model, dynamics=dynamics)
        config = dataclasses.replace(
            self.recipe.train_config(self.pipeline.data(self.recipe.dynamics_data.name), keypoint_steps=0,
                                     keypoints_from=str(self.pipeline.model_folder)),
            model=model)
        Trainer(config, self.folder(kind), command=self.command, progress=self.progress).run(resume=True)
        return self.folder(kind) / "model"

    def evaluate(self, kind: str) -> dict[str, Any]:
        """One ablation's held-out evaluation (trained first where needed; cached in its folder)."""
        path = self.folder(kind) / "eval.json"
        if path.exists():
            return json.loads(path.read_text())
        model = self.train(kind)
        if self.progress:
            print(f"== evaluating {kind}")
        result = evaluate_model(load_model(model), self.pipeline.eval_sets(), references=False)
        write_json(path, result)
        return result

    def run_all(self, *, workers: int = 1, ray: str | None = None, threads: int | None = None) -> list[dict[str, Any]]:
        """Train and evaluate every ablation; the table's rows (written to RUN/ablations.json and .md).

        Each ablation is a unit of work (`keycld_gym.parallel`): one after another here, side by
        side in `workers` local processes, or as Ray tasks (`ray`), each on `threads` torch
        threads. Every unit reads and writes the run folder, so on a cluster of several machines
        it must lie on storage every node sees.
        """
        keycld = json.loads((self.run / "eval.json").read_text())
        kinds = list(ABLATION_DYNAMICS)
        if workers <= 1 and ray is None:
            evaluated = [self.evaluate(kind) for kind in kinds]
        else:
            units = [(str(self.run), kind, self.recipe, threads, self.command) for kind in kinds]
            evaluated = run_units(ablation_unit, units, workers=workers, ray=ray)
        results = {"constrained": keycld, **dict(zip(kinds, evaluated))}
        rows = [table_row(kind, r["model"], r) for kind, r in results.items()]
        rows += [table_row(ref, keycld[ref]) for ref in ("hold_frame", "true_simulator_noisy") if ref in keycld]
        write_json(self.run / f"{TABLE}.json", {"system": self.recipe.system, "data": keycld["data"],
                                                "sequences": keycld["sequences"], "rows": rows})
        (self.run / f"{TABLE}.md").write_text(format_table(rows) + "\n")
        return rows


def ablation_unit(run: str, kind: str, recipe: ModelRecipe, threads: int | None, command: str | None) -> dict[str, Any]:
    """One ablation trained and evaluated in its own process (a unit of `keycld_gym.parallel`); its evaluation."""
    if threads is not None:
        torch.set_num_threads(threads)
    return AblationStudy(run, recipe=recipe, progress=False, command=command).evaluate(kind)


def table_row(kind: str, vpt: dict[str, Any], evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the table: VPT (an `evaluate_model` block) and, for a model, its other measures."""
    row: dict[str, Any] = {"model": LABELS[kind], **{k: vpt[k] for k in (
        "vpt_agent_median", "vpt_agent_mean", "vpt_physics_median", "vpt_physics_mean")}}
    if evaluation is not None:
        training = evaluation["checkpoint"]["training"]
        row.update(
            reconstruction_mse=evaluation["reconstruction_mse"],
            keypoints=evaluation["keypoints"],
            start_fit_residual=evaluation["start_fit_residual_median"],
            max_constraint_violation=evaluation["long_rollout"]["max_abs_constraint_violation"],
            rollout_steps=evaluation["long_rollout"]["steps"],
            rollout_finite=evaluation["long_rollout"]["finite"],
            training_min=round(training.get("wall_time_s", float("nan")) / 60, 1),
            training_threads=training.get("torch_threads"),
        )
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    steps = next((r["rollout_steps"] for r in rows if "rollout_steps" in r), "")
    head = ("| model | VPT agent median / mean | VPT physics median / mean | reconstruction MSE | "
            f"state recovery | start-fit residual | max constraint violation, {steps} open-loop steps | training |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["model"], f"{r['vpt_agent_median']:.1f} / {r['vpt_agent_mean']:.1f}",
                 f"{r['vpt_physics_median']:.1f} / {r['vpt_physics_mean']:.1f}"]
        if "reconstruction_mse" in r:
            violation = f"{r['max_constraint_violation']:.2g}" if r["rollout_finite"] else "diverged"
            cells += [f"{r['reconstruction_mse']:.5f}", ", ".join(f"{k} {v:.4f}" for k, v in r["keypoints"].items()),
                      f"{r['start_fit_residual']:.4f}", violation,
                      f"{r['training_min']} min ({r['training_threads']} threads)"]
        else:
            cells += [""] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
