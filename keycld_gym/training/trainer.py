"""Training a KeyCLD model from a collected data set, on a CPU, resumable.

Two phases, both inside one `keycld-gym train` run (CPU-practical; the authors' joint U-Net
training costs ~20 h on 2 cores): the keypoint phase (`keypoint_phase.py`: encoder and
renderer on single frames) and the dynamics phase (`dynamics_phase.py`: the Lagrangian and
reward head on rollouts against the encoded keypoints). This module runs them in turn.

Everything needed for an exact resume (weights, optimizer state, start states, RNG states,
step) is written every `checkpoint_every_s` seconds to `OUT/train_state.*` (`state.py`); the
model itself to `OUT/model` (a checkpoint folder for `load_model`). When the run is done, the
model folder gets the real start frames the imagined env resets from (`start_bank`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import WindowDataset
from keycld_gym.data.start_windows import collect_start_bank
from keycld_gym.errors import CheckpointError
from keycld_gym.files import sha256_file
from keycld_gym.model.checkpoint import load_model, save_checkpoint
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.start_bank import START_BANK, write_start_bank
from keycld_gym.training.config import TrainConfig
from keycld_gym.training.dynamics_phase import DynamicsPhase
from keycld_gym.training.keypoint_phase import KeypointPhase, median_image
from keycld_gym.training.run_log import RunLog
from keycld_gym.training.state import check_run_config, load_state, save_state

PHASES = ("keypoints", "dynamics", "done")


class Trainer:
    """Runs (and resumes) the two training phases of `TrainConfig` into the folder `out`."""

    def __init__(self, config: TrainConfig, out: str | Path, *, command: str | None = None, progress: bool = True,
                 start_bank: bool = True, start_states: tuple[torch.Tensor, torch.Tensor] | None = None,
                 keypoints: torch.Tensor | None = None):
        """`start_states`: the dynamics phase's start states `(S', G, K, 2)` x2 of the first S' training sequences,
        fitted by a run on the same data (refined here; the rest fitted cold). `keypoints`: the training
        sequences' keypoints `(S, T, K, 2)` as this model's encoder reads them, where the caller has them."""
        self.config, self.out, self.command, self.progress = config, Path(out), command, progress
        self.start_bank = start_bank  # write the real start frames when done (an ensemble member needs none)
        torch.manual_seed(config.seed)
        self.train = WindowDataset(config.data, 1, split="train", val_fraction=config.val_fraction, system=config.system)
        self.val = WindowDataset(config.data, 1, split="val", val_fraction=config.val_fraction, system=config.system)
        if self.train.num_sequences == 0:
            raise ValueError(f"{config.data} has no training sequences")
        self.manifest = self.train.manifest
        action_dim = self.train.data["actions"].shape[-1]
        self.model = KeyCLDModel(config.system, config.model, action_dim=action_dim)
        self._keypoints_source = self._reuse_keypoints() if config.keypoints_from else None
        self._continued = self._continue_dynamics() if config.continue_from else None
        if not config.keypoints_from:
            self.model.background.copy_(median_image(self.train.data, config.seed))
        self.rng = np.random.default_rng(config.seed)
        self.keypoints = KeypointPhase(self.model, config, self.train, self.val, self.rng)
        self.dynamics = DynamicsPhase(self.model, config, self.train, self.rng, self.out, start_states, keypoints)
        self.phase, self.step, self.elapsed = ("keypoints" if config.keypoint_steps else "dynamics"), 0, 0.0
        self.optimizer: torch.optim.Optimizer | None = None
        # recorded (or checked against the record) only once everything above is valid, so that
        # a start that fails leaves no settings behind to block the corrected command
        self.out.mkdir(parents=True, exist_ok=True)
        check_run_config(self.out / "train_config.json", config.to_dict(),
                         dataclasses.asdict(TrainConfig(config.system, config.data)))
        self.log = RunLog(self.out)

    def _reuse_keypoints(self) -> dict[str, Any]:
        """Take the keypoint phase of `keypoints_from` (`KeyCLDModel.load_keypoint_phase`); returns its provenance."""
        src = load_model(self.config.keypoints_from)
        self.model.load_keypoint_phase(src)
        if src.checkpoint_config.get("keypoints_from"):
            # that model reused its encoder and renderer in turn: they (and their data) come from further up
            return {**src.checkpoint_config["keypoints_from"], "via": str(self.config.keypoints_from)}
        return {"checkpoint": str(self.config.keypoints_from), "data": src.checkpoint_config.get("data"),
                "training": {k: v for k, v in src.checkpoint_config.get("training", {}).items() if k != "config"}}

    def _continue_dynamics(self) -> dict[str, Any]:
        """Start from all of `continue_from`'s weights, its member `continue_member`'s dynamics; returns the provenance."""
        src = load_model(self.config.continue_from)
        member = self.config.continue_member
        size = src.ensemble.size if src.ensemble is not None else 1
        if member >= size:
            raise CheckpointError(f"{self.config.continue_from} has {size} dynamics member(s): no member {member}")
        self.model.load_state_dict(src.state_dict())
        if member:
            self.model.load_state_dict(src.ensemble.members()[member - 1], strict=False)
        return {"checkpoint": str(self.config.continue_from), "member": member,
                "weights_sha256": src.checkpoint_config.get("weights_sha256"), "data": src.checkpoint_config.get("data")}

    @property
    def state_path(self) -> Path:
        """Stem of the training state files (`.json` and `.safetensors`)."""
        return self.out / "train_state"

    @property
    def current(self) -> KeypointPhase | DynamicsPhase:
        """The phase being trained."""
        return self.keypoints if self.phase == "keypoints" else self.dynamics

    def _make_optimizer(self) -> None:
        self.optimizer = self.current.make_optimizer() if self.phase != "done" else None

    # -- checkpoint and resume ------------------------------------------------------------
    def save(self) -> None:
        """Write the training state (exact resume) and the model checkpoint."""
        state = {
            "phase": self.phase, "step": self.step, "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            **self.dynamics.state(), **self.keypoints.state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
        }
        save_state(self.state_path, state)
        folder = save_checkpoint(self.out / "model", self.model, self.meta())
        if self.phase == "done" and self.start_bank and not (folder / START_BANK).exists():
            write_start_bank(folder, collect_start_bank(self.config.system, seed=self.config.start_bank_seed))

    def resume(self) -> bool:
        """Load the last saved state if there is one; returns whether it did."""
        if not self.state_path.with_suffix(".json").exists():
            return False
        state = load_state(self.state_path)
        self.model.load_state_dict(state["model"])
        self.phase, self.step, self.elapsed = state["phase"], int(state["step"]), float(state["elapsed"])
        self.keypoints.load_state(state)
        self.dynamics.load_state(state)
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self._make_optimizer()
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        return True

    def meta(self) -> dict[str, Any]:
        """What the checkpoint records about its data and training."""
        m = self.manifest
        return {
            "data": {
                "path": str(self.config.data),
                "manifest_sha256": sha256_file(Path(self.config.data) / MANIFEST),
                "regime": m["regime"], "regime_description": m.get("regime_description"),
                "sequences": m["sequences"], "frames": m["frames"],
                "frames_per_sequence": m["frames_per_sequence"], "seed": m["seed"],
                "train_sequences": self.train.num_sequences,
                "train_frames": int(np.prod(self.train.data["frames"].shape[:2])),
                "val_fraction": self.config.val_fraction,
            },
            "keypoints_from": self._keypoints_source,
            "continued_from": self._continued,
            "training": {
                "command": self.command, "seed": self.config.seed, "config": self.config.to_dict(),
                "phase": self.phase, "step": self.step, "wall_time_s": round(self.elapsed, 1),
                "torch_threads": torch.get_num_threads(),
            },
        }

    # -- the run loop ---------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> KeyCLDModel:
        """Train to the end (resuming from the last state when asked); returns the model.

        `stop_after` stops (after saving) once this call has taken that many steps, as an
        interruption would; `run(resume=True)` then continues exactly.
        """
        if resume:
            self.resume()
        elif self.state_path.with_suffix(".json").exists():
            raise CheckpointError(f"{self.out} already holds a training run: pass --resume to continue it, or pick a new --out")
        if self.optimizer is None and self.phase != "done":
            self._make_optimizer()
        last_save = tick = time.monotonic()
        taken = 0
        while self.phase != "done":
            phase = self.current
            total = phase.total_steps
            offset = 0 if self.phase == "keypoints" else self.config.keypoint_steps  # TensorBoard's global step
            bar = tqdm(total=total, initial=self.step, desc=f"train {self.config.system}/{self.phase}",
                       disable=not self.progress, dynamic_ncols=True)
            while self.step < total:
                values = phase.step(self.optimizer, self.step)
                self.step += 1
                now = time.monotonic()  # wall time of everything: steps, logs, saves, set-up
                self.elapsed, tick = self.elapsed + now - tick, now
                bar.update(1)
                taken += 1
                if self.step % self.config.log_every == 0 or self.step == total:
                    values.update(phase.extra_log(self.step))
                    self.log.write(self.phase, self.step, self.elapsed, values, offset + self.step)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(values.items())[:3]})
                if time.monotonic() - last_save > self.config.checkpoint_every_s:
                    self.save()
                    last_save = time.monotonic()
                if stop_after is not None and taken >= stop_after:
                    bar.close()
                    self.save()
                    return self.model
            bar.close()
            self.phase = PHASES[PHASES.index(self.phase) + 1]
            self.step = 0
            self._make_optimizer()
            self.save()
            last_save = time.monotonic()
        self.log.close()
        return self.model
