"""Resumable training state: nested dicts of tensors and JSON scalars, nothing unpickled.

`save_state(path, state)` writes the tensors (weights, optimizer moments, fitted start
states, RNG states) to `path.safetensors` and the rest with their places to `path.json`;
`load_state` puts them back together and checks the checksum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from keycld_gym.errors import CheckpointError
from keycld_gym.files import (
    atomic_write_bytes,
    differing_keys,
    json_roundtrip,
    sha256_file,
    write_json,
)


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_split(k, f"{prefix}.k{i}", tensors), _split(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {_join(k, tensors): _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, dict) and "__list__" in obj:
        return [_join(v, tensors) for v in obj["__list__"]]
    return obj


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Store nested state (dicts, lists, tensors, JSON scalars) as `path`.safetensors + `path`.json."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "s", tensors)
    atomic_write_bytes(path.with_suffix(".safetensors"), lambda f: f.write(save(tensors)))
    write_json(path.with_suffix(".json"), {"sha256": sha256_file(path.with_suffix(".safetensors")), "state": skeleton})


def load_state(path: str | Path) -> dict[str, Any]:
    """Inverse of `save_state`; a missing or corrupt file raises CheckpointError."""
    path = Path(path)
    meta_path, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
    try:
        meta = json.loads(meta_path.read_text())
        if sha256_file(weights) != meta["sha256"]:
            raise CheckpointError(f"{weights} fails its checksum: delete {path.parent} to start over")
        return _join(meta["state"], load_file(weights))
    except (OSError, json.JSONDecodeError, KeyError, SafetensorError) as err:
        raise CheckpointError(f"training state {path} is unreadable ({err}): delete it to start over") from err


def check_run_config(path: str | Path, config: dict, defaults: dict) -> None:
    """Record a run's settings at `path`, or check them against the ones recorded there.

    Settings added since that run was started count as equal when at their `defaults`; any
    other difference raises `CheckpointError` naming the fields.
    """
    path = Path(path)
    if not path.exists():
        write_json(path, config)
        return
    theirs, mine = json.loads(path.read_text()), json_roundtrip(config)
    for k, v in json_roundtrip(defaults).items():
        if k not in theirs and mine.get(k) == v:
            theirs[k] = v
    differ = differing_keys(theirs, mine, set(mine) | set(theirs))
    if differ:
        raise CheckpointError(
            f"{path.parent} holds a run with other settings (differ in: {', '.join(differ)}): resume it with "
            f"the same arguments, or train into a new --out folder"
        )
