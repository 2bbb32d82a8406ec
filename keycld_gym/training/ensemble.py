"""Training an ensemble's members: the model's dynamics phase again, per member another seed and bootstrap.

Member 0 is the finished model itself. Member i (1..K-1) reruns the dynamics phase that
made it (the `TrainConfig` its checkpoint records) behind its encoder, with seed `seed + i`
on a bootstrap sample of the same training sequences (`TrainConfig.bootstrap_seed = seed + i`),
into `OUT/member-i` (a resumable training run). Members after the first start from the
first's fitted start states, refined by a few Gauss-Newton steps, instead of fitting them
cold: the same sequences, and most of a dynamics phase's set-up time. Then the members'
dynamics are added to the model folder (`ensemble.safetensors`, `keycld_gym.model.ensemble`);
the model's own files are left as they were.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from keycld_gym.data.collect import MANIFEST
from keycld_gym.errors import CheckpointError
from keycld_gym.files import portable_path, sha256_file
from keycld_gym.model.checkpoint import checkpoint_folder, load_model, save_ensemble
from keycld_gym.model.ensemble import DynamicsEnsemble, member_state
from keycld_gym.model.keycld import ModelConfig
from keycld_gym.parallel import run_units
from keycld_gym.training.config import TrainConfig
from keycld_gym.training.state import load_state
from keycld_gym.training.trainer import Trainer


def member_config(model_config: dict[str, Any], folder: Path, index: int, data: str | None = None) -> TrainConfig:
    """The `TrainConfig` of member `index` of the model whose checkpoint config is `model_config`."""
    recorded = model_config.get("training", {}).get("config")
    if not recorded:
        raise CheckpointError(f"{folder} records no training config to train ensemble members with")
    base = TrainConfig.from_dict(dict(recorded))
    seed = base.seed + index
    return dataclasses.replace(
        base, data=str(data or base.data), seed=seed, bootstrap_seed=seed, keypoints_from=str(folder), keypoint_steps=0,
        continue_from=None, continue_member=0,  # a model made by continuing is recorded so: the member starts anew
        # the members fit the model as it is now (a refit renderer has other shapes than the recorded one)
        model=ModelConfig.from_dict(model_config["model"]))


_DATA_FIELDS = ("regime", "seed", "sequences", "frames_per_sequence")


def _check_same_data(source: Path, recorded: dict[str, Any], folder: Path) -> None:
    """`source` is the data set the model's dynamics learned from: the same manifest, or the same collection
    (system's sequences from the same seed, regime and length; a manifest also records the command line)."""
    if not (source / MANIFEST).exists():
        raise FileNotFoundError(f"the dynamics data set {source} is missing: pass --data, the folder of that data set")
    if sha256_file(source / MANIFEST) == recorded.get("manifest_sha256"):
        return
    manifest = json.loads((source / MANIFEST).read_text())
    differ = [k for k in _DATA_FIELDS if manifest.get(k) != recorded.get(k)]
    if differ:
        raise CheckpointError(f"{source} is not the data set {folder} was trained on ({', '.join(differ)} differ): "
                              "members must learn from the same sequences; collect it with the model's recorded command")


def train_member(config: TrainConfig, run: Path, starts: tuple[torch.Tensor, torch.Tensor] | None,
                 command: str | None, progress: bool, threads: int | None = None) -> tuple[dict, dict, float]:
    """One member's training run into `run` (resumed where it stopped): its member parameters, encoder
    state and training-loop seconds. A unit of work (`keycld_gym.parallel`): everything it needs is in its arguments."""
    if threads is not None:
        torch.set_num_threads(threads)
    trainer = Trainer(config, run, command=command, progress=progress, start_bank=False, start_states=starts)
    finished = trainer.run(resume=(run / "train_state.json").exists())
    return member_state(finished), finished.encoder.state_dict(), trainer.elapsed


def train_ensemble(checkpoint: str | Path, out: str | Path, members: int, *, data: str | None = None,
                   workers: int = 1, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train members 1..`members`-1 of `checkpoint`'s model into `out` and add them to its folder; returns the record.

    Resumable: finished members are kept, an interrupted one continues from its last checkpoint.
    `data`: the dynamics data set, where it lies elsewhere than the checkpoint records (it
    must be the same data set: the same manifest, or one collected alike, `_check_same_data`).
    `workers` > 1: the members after the first train side by side in that many processes,
    each with an equal share of this process's torch threads (the first's start states start
    them, so it trains alone first).
    """
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members (the model and one more), got {members}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    folder = checkpoint_folder(checkpoint)
    model = load_model(folder)
    config = model.checkpoint_config
    if config.get("training", {}).get("phase") != "done":
        raise CheckpointError(f"{folder} is from an unfinished run: finish its training first")
    source = Path(data or config.get("data", {}).get("path", ""))
    _check_same_data(source, config.get("data", {}), folder)
    out = Path(out)
    configs = [member_config(config, folder, i, str(source)) for i in range(1, members)]
    t0 = time.monotonic()
    first = train_member(configs[0], out / "member-1", None, command, progress)
    # the first member's fitted start states start the others' (the same sequences)
    state = load_state(out / "member-1" / "train_state")
    starts = (state["start_q"], state["start_v"])
    side_by_side = workers > 1 and members > 2
    threads = max(1, torch.get_num_threads() // workers) if side_by_side else None
    rest = run_units(train_member, [(c, out / f"member-{i}", starts, command, progress and not side_by_side, threads)
                                    for i, c in enumerate(configs[1:], start=2)], workers=workers)
    results = [first, *rest]
    for i, (_, encoder, _) in enumerate(results, start=1):
        # the dynamics phase puts keypoints in the constraints' order; a member that reordered
        # them reads frames otherwise than the model and cannot share its encoder
        if any(not torch.equal(a, b) for a, b in zip(encoder.values(), model.encoder.state_dict().values())):
            raise CheckpointError(f"member {i} reordered the model's keypoints: it cannot share the model's encoder")
    trained, seeds, wall = [r[0] for r in results], [c.seed for c in configs], sum(r[2] for r in results)
    ensemble = DynamicsEnsemble(model, trained)
    record = {"members": members, "seeds": seeds,
              "bootstrap": "each member i >= 1: as many training sequences as the data set's, drawn with replacement "
                           "by seed + i; member 0 the model itself, on all of them",
              "data": portable_path(source), "runs": portable_path(out), "command": command,
              # the members' training loops (resumed runs count once), and this call's whole wall time
              # (set-up included: the first member's cold start-state fit is most of it)
              "training_loop_s": round(wall, 1), "call_wall_s": round(time.monotonic() - t0, 1)}
    save_ensemble(folder, ensemble, record)
    return record
