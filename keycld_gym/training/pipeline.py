"""From nothing to a bundle-ready model folder for one system, by its recipe (`keycld-gym pipeline`).

    keycld-gym pipeline --system pendulum --out runs/pendulum

Steps, in order (the recipe is `keycld_gym/training/recipes.py`):

1. collect the keypoint, dynamics and held-out data sets from the task's own reset;
2. the keypoint phase (encoder and renderer) on the keypoint data, scored against the true
   bodies on the held-out data and trained again with another seed where it missed one
   (`keypoint_check`);
3. the dynamics phase (structured Lagrangian, reward head) on the dynamics data, from that
   encoder; the trainer adds the real start frames the imagined env resets from;
4. the reward head refit on estimated states, then the renderer's read-back refit: OUT/model;
   where the recipe asks for an ensemble (`ensemble_members` > 1), the dynamics phase again
   per further member, with another seed on a bootstrap of the dynamics data (OUT/ensemble);
   the physical constants of the model and every member refit on open-loop predictions over
   the dynamics data's whole sequences (`constants_steps`); and start windows from anywhere
   in the dynamics data, for agents' exploring starts;
5. the real state estimate's error on the held-out data (`observation_noise.json`);
6. the held-out evaluation (OUT/eval.json).

Every step's wall time goes to OUT/pipeline.json. Rerunning continues: finished steps are
skipped, an interrupted collection or training resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from keycld_gym.analysis.evaluation import evaluate_model
from keycld_gym.data.collect import collect
from keycld_gym.data.start_windows import start_bank_from_data
from keycld_gym.errors import CheckpointError, TrainingFailedError
from keycld_gym.files import write_json
from keycld_gym.model.checkpoint import (
    ENCODER_LINEAGE,
    NOISE_FILE,
    checkpoint_folder,
    load_model,
    save_checkpoint,
    write_noise,
)
from keycld_gym.model.start_bank import EXPLORING_STARTS, START_BANK, write_start_bank
from keycld_gym.model.tracking import parse_estimator
from keycld_gym.rl.observation_noise import measure_estimation_error
from keycld_gym.training.constants_fit import fit_constants
from keycld_gym.training.ensemble import train_ensemble
from keycld_gym.training.keypoint_check import (
    attempt_folder,
    attempt_seed,
    score_keypoints,
)
from keycld_gym.training.recipes import ModelRecipe, get_recipe
from keycld_gym.training.renderer_fit import fit_renderer
from keycld_gym.training.reward_fit import fit_reward_head
from keycld_gym.training.trainer import Trainer

RECORD = "pipeline.json"
# checkpoint fields a refit keeps from its source (the rest is the model's own or rewritten)
_OWN_FIELDS = ("format", "format_version", "package_version", "system", "spec", "model", "action_dim", "weights_sha256")


def refit_checkpoint(checkpoint: str | Path, out: str | Path, part: str, fit: Callable[..., dict], *,
                     data: list[str], steps: int, seed: int = 0, progress: bool = True,
                     command: str | None = None, force: bool = False, **kwargs: Any) -> dict:
    """Load `checkpoint`, refit one part with `fit(model, data, ...)`, save to `out`; the fit's record.

    The source's provenance is kept and the refit recorded under `part`; its start frames
    and measured observation noise travel along (neither depends on the reward head or the
    renderer), and the source's weights checksum joins the `ENCODER_LINEAGE` (the models
    whose encoder this one keeps). The new folder is written beside `out` and moved in whole
    once complete; an `out` that holds files is replaced only with `force`.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise CheckpointError(f"{out} is not empty: pick a new --out for the refit model, or pass --force to replace it")
    if steps < 1:
        raise ValueError(f"a refit needs at least one step, got {steps}")
    torch.manual_seed(seed)
    source = checkpoint_folder(checkpoint)
    model = load_model(source)
    result = fit(model, data, steps=steps, seed=seed, progress=progress, **kwargs)
    result["command"] = command
    meta = {k: v for k, v in model.checkpoint_config.items() if k not in _OWN_FIELDS}
    # a refit keeps the encoder, so an agent trained in the source reads the same keypoints here
    meta[ENCODER_LINEAGE] = list(dict.fromkeys([*meta.get(ENCODER_LINEAGE, []),
                                                model.checkpoint_config.get("weights_sha256")]))
    staging = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, model, {**meta, part: result})
    for name in (START_BANK, EXPLORING_STARTS, NOISE_FILE):
        if (source / name).exists():
            shutil.copy2(source / name, staging / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return result


class Pipeline:
    """The steps of one system's recipe into the folder `out` (module docstring)."""

    def __init__(self, recipe: ModelRecipe | str, out: str | Path, *, workers: int = 2, progress: bool = True,
                 command: str | None = None):
        self.recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
        self.out, self.workers, self.progress, self.command = Path(out), workers, progress, command
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / RECORD
        try:
            self.record = json.loads(path.read_text()) if path.exists() else {"system": self.recipe.system, "steps": {}}
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is corrupt ({err}): delete it to rerun every step's check") from err
        if self.record["system"] != self.recipe.system:
            raise ValueError(f"{self.out} holds a {self.record['system']} pipeline, not {self.recipe.system}; "
                             "choose another --out")
        plans = {p.name: dataclasses.asdict(p) for p in (self.recipe.keypoint_data, self.recipe.dynamics_data,
                                                         *self.recipe.eval_plans)}
        if self.record.setdefault("data", plans) != plans:
            raise ValueError(f"{self.out} was started with other data sets ({self.record['data']}) than this recipe's "
                             f"({plans}); choose another --out or the same --training-frames")
        if self.record.setdefault("seed", self.recipe.seed) != self.recipe.seed:
            raise ValueError(f"{self.out} was started with training seed {self.record['seed']}, not {self.recipe.seed}; "
                             "choose another --out for another seed")
        self.record["training_frames"] = self.recipe.training_frames
        self.record["command"] = command

    def data(self, plan_name: str) -> str:
        """The folder of one of the recipe's data sets."""
        return str(self.out / "data" / plan_name)

    @property
    def model_folder(self) -> Path:
        """Where the finished model lands."""
        return self.out / "model"

    def steps(self) -> list[tuple[str, Callable[[], Any]]]:
        """(name, action) of every step, in order."""
        r = self.recipe
        plans = (r.keypoint_data, r.dynamics_data, *r.eval_plans)
        collects = [(f"collect-{p.name}", lambda p=p: collect(self.data(p.name), p.config(r.system), workers=self.workers,
                                                              progress=self.progress, command=self.command))
                    for p in plans]
        return [
            *collects,
            ("keypoints", self._keypoints),
            ("dynamics", lambda: self._train("dynamics", r.dynamics_data.name, keypoint_steps=0,
                                             keypoints_from=str(self.out / self.record.get("keypoint_model", "keypoints")
                                                                / "model"))),
            ("reward", lambda: refit_checkpoint(
                self.out / "dynamics" / "model", self.out / "reward", "reward_head", fit_reward_head,
                data=self._training_data(), steps=r.reward_steps, seed=r.seed, progress=self.progress,
                command=self.command, force=True)),
            ("renderer", lambda: refit_checkpoint(
                self.out / "reward", self.model_folder, "renderer", fit_renderer,
                data=self._training_data(), steps=r.renderer_steps, seed=r.seed, progress=self.progress,
                command=self.command, force=True, **r.renderer_fit)),
            *([("ensemble", lambda: train_ensemble(self.model_folder, self.out / "ensemble", r.ensemble_members,
                                                   workers=self.workers, progress=self.progress,
                                                   command=self.command))]
              if r.ensemble_members > 1 else []),
            # in place, members included: a fresh member is trained from the recorded dynamics
            # phase, so the refit comes after the ensemble
            *([("constants", lambda: refit_checkpoint(
                self.model_folder, self.model_folder, "constants", fit_constants,
                data=[self.data(r.dynamics_data.name)], steps=r.constants_steps, seed=r.seed, progress=self.progress,
                command=self.command, force=True, **r.constants_fit))]
              if r.constants_steps else []),
            ("exploring-starts", lambda: write_start_bank(
                self.model_folder, start_bank_from_data(self.data(r.dynamics_data.name), r.system, seed=r.seed),
                EXPLORING_STARTS)),
            ("observation-noise", self._noise),
            ("evaluate", self._evaluate),
        ]

    def _training_data(self) -> list[str]:
        return [self.data(self.recipe.keypoint_data.name), self.data(self.recipe.dynamics_data.name)]

    def _train(self, name: str, data: str, **overrides: Any) -> None:
        config = self.recipe.train_config(self.data(data), **overrides)
        Trainer(config, self.out / name, command=self.command, progress=self.progress).run(resume=True)

    def _keypoints(self) -> None:
        """The keypoint phase until an attempt passes the recipe's check (`keypoint_check`); each attempt recorded."""
        r = self.recipe
        attempts = self.record.setdefault("keypoint_attempts", [])
        for i in range(r.keypoint_attempts):
            folder = attempt_folder(self.out, i)
            if i == len(attempts):
                self._train(folder.name, r.keypoint_data.name, dynamics_steps=0, seed=attempt_seed(r.seed, i))
                score = ({} if r.keypoint_limit_px is None
                         else score_keypoints(load_model(folder / "model"), self.data(r.eval_data.name)))
                attempts.append({"folder": folder.name, "seed": attempt_seed(r.seed, i), **score})
                write_json(self.out / RECORD, self.record)  # a later interruption keeps this attempt
            if r.keypoint_limit_px is None or attempts[i]["rms_px"] <= r.keypoint_limit_px:
                self.record["keypoint_model"] = attempts[i]["folder"]
                if self.progress and i:
                    print(f"keypoint phase: attempt {i + 1} passed ({attempts[i]['rms_px']:.2f} px)")
                return
            if self.progress:
                print(f"keypoint phase: attempt {i + 1} missed ({attempts[i]['rms_px']:.2f} px against the true bodies, "
                      f"limit {r.keypoint_limit_px} px)")
        scores = ", ".join(f"{a['rms_px']:.2f} px (seed {a['seed']}, {self.out / a['folder']})"
                           for a in attempts[:r.keypoint_attempts])
        raise TrainingFailedError(
            f"the keypoint phase missed on every attempt: {scores}, against the recipe's limit of "
            f"{r.keypoint_limit_px} px on the held-out frames (each keypoint's error: {self.out / RECORD}, "
            "'keypoint_attempts'). More keypoint_steps or keypoint_attempts in the recipe may find the bodies")

    def _noise(self) -> dict:
        estimator = self.recipe.noise_estimator
        result = measure_estimation_error(load_model(self.model_folder), self.data(self.recipe.eval_data.name),
                                          tracking=None if estimator is None else parse_estimator(estimator))
        write_noise(self.model_folder, result)
        return result

    def eval_sets(self) -> list[str]:
        """The folders of the held-out sets the evaluation scores models on."""
        return [self.data(p.name) for p in self.recipe.eval_plans]

    def _evaluate(self) -> dict:
        result = evaluate_model(load_model(self.model_folder), self.eval_sets())
        write_json(self.out / "eval.json", result)
        return result

    def run(self, until: str | None = None) -> dict:
        """Run every unfinished step (up to and including `until`); returns the record."""
        names = [n for n, _ in self.steps()]
        if until is not None and until not in names:
            raise ValueError(f"unknown step {until!r}; steps: {', '.join(names)}")
        for name, action in self.steps():
            if name in self.record["steps"]:
                if self.progress:
                    print(f"== {name}: done already ({self.record['steps'][name]['wall_s']:.0f} s)")
            else:
                if self.progress:
                    print(f"== {name}")
                t0 = time.monotonic()
                action()
                self.record["steps"][name] = {"wall_s": round(time.monotonic() - t0, 1)}
                self.record["total_wall_s"] = round(sum(s["wall_s"] for s in self.record["steps"].values()), 1)
                write_json(self.out / RECORD, self.record)
            if name == until:
                break
        return self.record
