"""Model checkpoints: weights in safetensors beside a JSON config; nothing is unpickled.

A checkpoint is a folder:
    model.safetensors   the model's tensors
    config.json         format and version, system spec, model config, the weights' sha256,
                        the data set (manifest checksum, regime, size) and how it was trained
                        (exact command, seed, wall time).
`load_model("cartpole")` loads the bundled weights shipped in `keycld_gym/weights/cartpole`;
`load_model(path)` loads any checkpoint folder and checks all of the above.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from keycld_gym.errors import CheckpointError, UnknownSystemError
from keycld_gym.files import atomic_write_bytes, read_record, sha256_file, write_json
from keycld_gym.model.ensemble import ENSEMBLE_WEIGHTS, DynamicsEnsemble
from keycld_gym.model.keycld import KeyCLDModel, ModelConfig
from keycld_gym.sim.systems import SYSTEMS, get_system
from keycld_gym.version import __version__

MODEL_FORMAT = "keycld-gym-model"
MODEL_FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
# the real state estimate's measured error beside the weights (rl/observation_noise.py measures it)
NOISE_FILE = "observation_noise.json"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"

# config field: the weights checksums of earlier models whose encoder this one keeps unchanged
# (refits), so their agents read the same keypoints in it
ENCODER_LINEAGE = "encoder_lineage"


def bundled_path(system: str) -> Path:
    """Folder of the bundled checkpoint of `system` (it may not exist yet)."""
    return BUNDLED_DIR / get_system(system).name


def save_checkpoint(path: str | Path, model: KeyCLDModel, meta: dict[str, Any] | None = None) -> Path:
    """Write `model` to the checkpoint folder `path` (atomically per file); returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path / WEIGHTS, lambda f: f.write(save(tensors)))
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "system": model.spec.name,
        "spec": model.spec.to_dict(),
        "model": model.config.to_dict(),
        "action_dim": model.action_dim,
        "weights_sha256": sha256_file(path / WEIGHTS),
        **(meta or {}),
    }
    if model.ensemble is not None:  # a model that carries members keeps them through a save (refits)
        config["ensemble"] = _write_members(path, model.ensemble, (meta or {}).get("ensemble") or
                                            getattr(model, "checkpoint_config", {}).get("ensemble", {}))
    write_json(path / CONFIG, config)
    return path


def _write_members(path: Path, ensemble: DynamicsEnsemble, record: dict[str, Any]) -> dict[str, Any]:
    """Write members 1..K-1 to `path`'s ENSEMBLE_WEIGHTS; returns the config's record of them."""
    tensors = {f"{i}/{n}": t.detach().cpu().clone().contiguous()
               for i, member in enumerate(ensemble.members(), 1) for n, t in member.items()}
    atomic_write_bytes(path / ENSEMBLE_WEIGHTS, lambda f: f.write(save(tensors)))
    return {**record, "members": ensemble.size, "weights_sha256": sha256_file(path / ENSEMBLE_WEIGHTS)}


def save_ensemble(path: str | Path, ensemble: DynamicsEnsemble, record: dict[str, Any]) -> Path:
    """Add (or replace) the ensemble of the checkpoint folder `path` whose model `ensemble` belongs to."""
    path = Path(path)
    config = read_config(path)
    config["ensemble"] = _write_members(path, ensemble, record)
    write_json(path / CONFIG, config)
    return path


def _read_tensors(weights: Path, sha256: str | None, remedy: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked: present, its recorded `sha256` (if any), readable, finite."""
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing: {remedy}")
    if sha256 and sha256_file(weights) != sha256:
        raise CheckpointError(f"{weights} fails its sha256 checksum (corrupt, truncated or replaced): {remedy}")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({err}): {remedy}") from err
    broken = sorted(name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if broken:
        raise CheckpointError(f"{weights} holds non-finite values in {', '.join(broken[:3])}"
                              f"{' and more' if len(broken) > 3 else ''}: {remedy}")
    return tensors


def _load_members(path: Path, config: dict[str, Any], model: KeyCLDModel) -> DynamicsEnsemble | None:
    """The ensemble recorded in `config` (None where it records none), checked against its checksum and the model."""
    record = config.get("ensemble")
    if not record:
        return None
    weights = path / ENSEMBLE_WEIGHTS
    remedy = f"{path / CONFIG} records {record.get('members')} members: rebuild them with `keycld-gym ensemble " \
             f"--checkpoint {path} ...`"
    tensors = _read_tensors(weights, record.get("weights_sha256"), remedy)
    members: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition("/")
        members.setdefault(int(index), {})[name] = tensor
    if sorted(members) != list(range(1, int(record["members"]))):
        raise CheckpointError(f"{weights} holds members {sorted(members)}, the config records {record['members']}: {remedy}")
    try:
        return DynamicsEnsemble(model, [members[i] for i in sorted(members)])
    except ValueError as err:
        raise CheckpointError(f"{weights}: {err}: {remedy}") from err


def read_config(path: str | Path) -> dict[str, Any]:
    """The checked `config.json` of a checkpoint folder."""
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.exists():
        raise CheckpointError(
            f"{path} is not a keycld-gym checkpoint (no {CONFIG}): pass a folder written by `keycld-gym train`"
        )
    config = read_record(cfg_path, "model config", MODEL_FORMAT, MODEL_FORMAT_VERSION, CheckpointError,
                         "retrain it with this version's `keycld-gym train`, or restore the checkpoint")
    name = config.get("system")
    if name not in SYSTEMS:
        raise CheckpointError(f"{path} is a model of unknown system {name!r}; known: {', '.join(sorted(SYSTEMS))}")
    differ = get_system(name).differences(config.get("spec"))
    if differ:
        raise CheckpointError(
            f"{path} was trained for another spec of {name!r} (differs in: {', '.join(differ)}); "
            "retrain it with this version's `keycld-gym train`"
        )
    return config


def checkpoint_folder(name_or_path: str | Path | None, system: str | None = None) -> Path:
    """The folder of a checkpoint given as a folder, a system name (its bundled weights), or None (`system`'s)."""
    if name_or_path is None:
        if system is None:
            raise ValueError("no checkpoint given and no system to take the bundled weights of")
        name_or_path = get_system(system).name
    path = Path(name_or_path)
    # A bare name is a system's bundled model, even where the working directory holds a folder of
    # that name (a data set, a run): a local folder is passed as a path ("./cartpole").
    if isinstance(name_or_path, str) and "/" not in name_or_path and (name_or_path in SYSTEMS or not path.exists()):
        try:
            path = bundled_path(name_or_path)
        except UnknownSystemError as err:
            raise CheckpointError(f"{name_or_path!r} is neither a checkpoint folder nor a system: {err}") from err
        if not (path / CONFIG).exists():
            raise CheckpointError(
                f"no bundled weights for {name_or_path!r} yet: make a model with `keycld-gym pipeline --system "
                f"{name_or_path} --out runs/{name_or_path}`, then pass runs/{name_or_path}/model as the checkpoint"
            )
    elif not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> KeyCLDModel:
    """A model in eval mode from a system name (bundled weights) or a checkpoint folder."""
    path = checkpoint_folder(name_or_path)
    config = read_config(path)
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG} has an invalid model config ({err})") from err
    weights = path / WEIGHTS
    model = KeyCLDModel(config["system"], model_config, action_dim=int(config.get("action_dim", 1)))
    tensors = _read_tensors(weights, config.get("weights_sha256"), "the checkpoint is incomplete, corrupt or "
                            "diverged: retrain or restore it")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not fit the model its config describes: {err}") from err
    model.checkpoint_config = config
    model.folder = path  # where its other files (measured noise, start frames) lie
    model = model.to(device).eval()
    model.ensemble = _load_members(path, config, model)
    return model


def set_mirror_average(name_or_path: str | Path, on: bool, command: str | None = None) -> Path:
    """Turn `EncoderConfig.mirror_average` on or off in a checkpoint's config; the weights are untouched.

    It changes what the encoder gives, not what it learned, so a trained model can take it.
    The change is recorded in the config's `edits` (with `command`, for the model card). Its
    measured real-estimate error (`observation_noise.json`) is then of the other encoder:
    measure it again with `keycld-gym observation-noise`.
    """
    path = checkpoint_folder(name_or_path)
    config = read_config(path)
    encoder = config.get("model", {}).get("encoder")
    if not isinstance(encoder, dict):
        raise CheckpointError(f"{path / CONFIG} has no encoder config: retrain it with this version's `keycld-gym train`")
    encoder["mirror_average"] = bool(on)
    ModelConfig.from_dict(config["model"])  # still a valid config
    config.setdefault("edits", []).append({"encoder.mirror_average": bool(on), "command": command})
    write_json(path / CONFIG, config)
    return path


def write_noise(folder: str | Path, measurement: dict[str, Any]) -> Path:
    """Store a measurement beside a model's weights."""
    path = Path(folder) / NOISE_FILE
    write_json(path, measurement)
    return path


def read_noise(folder: str | Path, key: str = "std") -> np.ndarray:
    """Per-coordinate standard deviations stored beside a model's weights.

    `key` "std": the state estimate's `(4K,)`; "frame_std": one frame's encoded keypoints' `(2K,)`.
    """
    path = Path(folder) / NOISE_FILE
    if not path.exists():
        raise CheckpointError(
            f"{path} is missing: measure the model's estimation error with "
            f"`keycld-gym observation-noise --checkpoint {folder} --data HELD_OUT_DATA`, or train with noise 'none'"
        )
    try:
        measured = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); measure it again with `keycld-gym observation-noise`") from err
    if key not in measured:
        raise CheckpointError(f"{path} has no {key!r} (an older measurement): measure it again with `keycld-gym observation-noise`")
    try:
        return np.asarray(measured[key], np.float32)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); measure it again with `keycld-gym observation-noise`") from err
