"""Reading collected data sets: manifest checks, shard loading, training windows.

`WindowDataset` serves windows of T consecutive frames (at any stride of the physics
rate) with the actions between them, split into train and validation *by sequence*, so no
validation frame is ever seen in training.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keycld_gym.data.collect import DATASET_FORMAT, DATASET_FORMAT_VERSION, MANIFEST
from keycld_gym.errors import CorruptShardError, ManifestMismatchError
from keycld_gym.files import read_record, sha256_file
from keycld_gym.sim.systems import get_system

_ARRAYS = ("frames", "actions", "rewards", "qpos", "qvel", "sequence_ids", "start_steps", "explorers")


def load_manifest(root: str | Path, system: str | None = None, *, require_complete: bool = True) -> dict:
    """Read and check a data set's manifest (format, version, spec of its system)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: collect a data set there with `keycld-gym collect --out {root}`")
    manifest = read_record(path, "data set manifest", DATASET_FORMAT, DATASET_FORMAT_VERSION, ManifestMismatchError,
                           "recollect it with this version's `keycld-gym collect`")
    name = manifest.get("system")
    if system is not None and name != get_system(system).name:
        raise ManifestMismatchError(f"{root} holds {name!r} data, but {system!r} data was asked for")
    differ = get_system(name).differences(manifest.get("spec"))
    if differ:
        raise ManifestMismatchError(
            f"{root} was collected with another spec of {name!r} (differs in: {', '.join(differ)}); "
            "recollect it with this version's `keycld-gym collect`"
        )
    if require_complete and not manifest.get("complete"):
        raise ManifestMismatchError(
            f"{root} is incomplete ({manifest.get('sequences')} of {manifest.get('episodes')} sequences): "
            f"rerun its collect command to finish it: {manifest.get('command') or 'keycld-gym collect ...'}"
        )
    return manifest


def load_shard(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Load one shard's arrays (no pickle), checking its checksum when given."""
    path = Path(path)
    if not path.exists():
        raise CorruptShardError(f"shard {path} is missing: rerun the data set's collect command to regenerate it")
    if sha256 is not None and sha256_file(path) != sha256:
        raise CorruptShardError(
            f"shard {path} fails its sha256 checksum (corrupt or truncated): delete it and rerun the "
            "data set's collect command to regenerate it"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as err:
        raise CorruptShardError(
            f"shard {path} is corrupt or truncated ({type(err).__name__}: {err}): delete it and rerun the "
            "data set's collect command to regenerate it"
        ) from err
    return arrays


def iter_shards(root: str | Path, system: str | None = None, *, verify: bool = True,
                manifest: dict | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The arrays of each shard of a complete data set in turn, checked (manifest, spec, checksums unless not `verify`).

    `manifest`: the data set's manifest if the caller has already loaded and checked it.

    Arrays: frames uint8 `(S, T, H, W, 3)`, actions `(S, T, A)`, rewards `(S, T)`, qpos, qvel,
    sequence_ids, start_steps, explorers `(S,)`: one shard's S sequences of T frames.
    """
    root = Path(root)
    manifest = manifest if manifest is not None else load_manifest(root, system)
    for record in manifest["shards"]:
        yield load_shard(root / record["file"], record["sha256"] if verify else None)


def iter_sequences(root: str | Path, system: str | None = None, *, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Each sequence of a data set in turn: its shard's arrays (see `iter_shards`) indexed by sequence, ids as ints."""
    for shard in iter_shards(root, system, verify=verify):
        for i in range(len(shard["sequence_ids"])):
            yield {k: (int(v[i]) if k in ("sequence_ids", "start_steps") else v[i]) for k, v in shard.items()}


def is_validation(sequence_id: int, val_fraction: float, split_seed: int = 0) -> bool:
    """Whether a sequence belongs to the validation split (stable when a set is extended)."""
    return bool(np.random.default_rng([split_seed, int(sequence_id), 7919]).random() < val_fraction)


def split_sequences(root: str | Path, system: str | None, val_fraction: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A data set's arrays (`WindowDataset.data`) of its training and of its validation sequences, read once."""
    data = WindowDataset(root, 1, split="all", system=system).data
    held = np.array([is_validation(i, val_fraction) for i in data["sequence_ids"]], bool)
    return {k: v[~held] for k, v in data.items()}, {k: v[held] for k, v in data.items()}


class WindowDataset(torch.utils.data.Dataset):
    """Windows of `window` frames, `stride` physics steps apart, from one split of a data set.

    Item (a dict of tensors):
        frames:  uint8 `(T, H, W, 3)` (channels last; `.permute(0, 3, 1, 2)` for conv nets)
        actions: float32 `(T - 1, stride, A)`: the physics-rate actions between frames
        rewards: float32 `(T - 1, stride)`: the rewards of those physics steps
        qpos, qvel: float64 `(T, nq)`, `(T, nv)`: true state (evaluation only)
        sequence: int, the sequence id; start: int, first frame's index in the sequence
    Attribute `dt`: seconds between consecutive frames of a window.
    """

    def __init__(
        self,
        root: str | Path,
        window: int,
        *,
        stride: int = 1,
        split: str = "train",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        system: str | None = None,
        step: int = 1,
        verify: bool = True,
    ):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        if window < 1 or stride < 1 or step < 1:
            raise ValueError("window, stride and step must be positive")
        self.root = Path(root)
        self.manifest = load_manifest(self.root, system)
        self.spec = get_system(self.manifest["system"])
        self.window, self.stride = window, stride
        self.dt = stride * self.spec.physics_dt
        span = (window - 1) * stride + 1
        length = self.manifest["frames_per_sequence"]
        if span > length:
            raise ValueError(
                f"a window of {window} frames at stride {stride} spans {span} frames, but sequences in "
                f"{self.root} have {length}"
            )
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS}
        for shard in iter_shards(self.root, verify=verify, manifest=self.manifest):
            if split == "all":
                keep = np.ones(len(shard["sequence_ids"]), bool)
            else:
                val = np.array([is_validation(i, val_fraction, split_seed) for i in shard["sequence_ids"]], bool)
                keep = val if split == "val" else ~val
            for k in _ARRAYS:
                parts[k].append(shard[k][keep])
        self.data = {k: np.concatenate(v) if v else np.empty((0,)) for k, v in parts.items()}
        starts = np.arange(0, length - span + 1, step)
        n_seq = len(self.data["sequence_ids"])
        self.index = np.stack(np.meshgrid(np.arange(n_seq), starts, indexing="ij"), -1).reshape(-1, 2)

    @property
    def num_sequences(self) -> int:
        """Sequences in this split."""
        return len(self.data["sequence_ids"])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        seq, start = (int(v) for v in self.index[i])
        s, t = self.stride, self.window
        frame_idx = start + s * np.arange(t)
        act = slice(start, start + s * (t - 1))
        d = self.data
        n_act = d["actions"].shape[-1]
        return {
            "frames": torch.from_numpy(d["frames"][seq, frame_idx]),
            "actions": torch.from_numpy(d["actions"][seq, act].reshape(t - 1, s, n_act)),
            "rewards": torch.from_numpy(d["rewards"][seq, act].reshape(t - 1, s)),
            "qpos": torch.from_numpy(d["qpos"][seq, frame_idx]),
            "qvel": torch.from_numpy(d["qvel"][seq, frame_idx]),
            "sequence": int(d["sequence_ids"][seq]),
            "start": start,
        }
