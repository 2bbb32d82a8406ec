"""An agent's real episodes as dynamics data: recorded frame by frame, cut into sequences, added to a data set.

The real-task loop (`keycld-gym improve`) keeps what a real robot gives: the camera's frames,
the actions sent and the rewards. Nothing of the simulator's state is kept (a robot has
none to give): the shards' `qpos` and `qvel` are NaN, so that nothing downstream can lean on
them unnoticed.

A grown data set is a folder of the usual layout (`keycld_gym.data.collect`): the base data
set's shards, linked (or copied) with their checksums, then one shard per batch of added
episodes, each recorded with its `source` (round, agent, seeds, returns). Sequence ids
continue after the base's, so the validation split of every old sequence stays the same.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import load_manifest
from keycld_gym.errors import ManifestMismatchError
from keycld_gym.files import atomic_write_bytes, portable_path, sha256_file, write_json

AGENT_REGIME = "agent"
AGENT_REGIME_DESCRIPTION = "an agent's real episodes from the task's own reset (frames, actions, rewards; no state)"


class EpisodeRecorder:
    """The frames, actions and rewards of each physics step of an env's episodes.

    `begin(frame)` at a reset, `step(action, reward, frame)` after every physics step. A
    reset ends the episode before it (kept if it took a step). `take()` returns the finished
    episodes and forgets them; the running one stays.
    """

    def __init__(self) -> None:
        self.finished: list[dict[str, np.ndarray]] = []
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []

    def begin(self, frame: np.ndarray) -> None:
        """A new episode from its first frame `uint8 (H, W, 3)`."""
        self.end()
        self._frames = [np.array(frame, np.uint8)]

    def step(self, action: np.ndarray, reward: float, frame: np.ndarray) -> None:
        """One physics step: the action `(A,)` applied after the last frame, its reward, the next frame."""
        if not self._frames:
            raise RuntimeError("EpisodeRecorder.step before begin: reset the env first")
        self._actions.append(np.array(action, np.float32))
        self._rewards.append(float(reward))
        self._frames.append(np.array(frame, np.uint8))

    def end(self) -> None:
        """Close the running episode (kept if it took a step)."""
        if self._actions:
            self.finished.append({
                # action t is applied after frame t: the last frame has none and is dropped
                "frames": np.stack(self._frames[:-1]), "actions": np.stack(self._actions),
                "rewards": np.asarray(self._rewards, np.float32)})
        self._frames, self._actions, self._rewards = [], [], []

    def take(self) -> list[dict[str, np.ndarray]]:
        """The finished episodes (frames `uint8 (T, H, W, 3)`, actions `(T, A)`, rewards `(T,)`), forgotten here."""
        out, self.finished = self.finished, []
        return out


def episode_sequences(episode: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """An episode cut into consecutive sequences of `length` frames (a shorter remainder is dropped): arrays `(S, length, ...)`."""
    if length < 2:
        raise ValueError(f"sequences need at least 2 frames, got {length}")
    n = len(episode["actions"]) // length
    return {k: episode[k][: n * length].reshape(n, length, *episode[k].shape[1:])
            for k in ("frames", "actions", "rewards")}


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def grow_dataset(out: str | Path, base: str | Path) -> dict[str, Any]:
    """Start the data set `out` from the complete data set `base` (its shards linked or copied); returns its manifest.

    Idempotent: an `out` already grown from the same `base` is left as it is (episodes added
    since included); one grown from another base is refused.
    """
    out, base = Path(out), Path(base)
    source = load_manifest(base)
    base_sha = sha256_file(base / MANIFEST)
    if (out / MANIFEST).exists():
        manifest = load_manifest(out)
        if manifest.get("base", {}).get("manifest_sha256") != base_sha:
            raise ManifestMismatchError(f"{out} was grown from another data set than {base}: choose another folder")
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    for record in source["shards"]:
        target = out / record["file"]
        if not target.exists() or sha256_file(target) != record["sha256"]:
            target.unlink(missing_ok=True)
            _link_or_copy(base / record["file"], target)
    manifest = {**source, "shards": [dict(r, source={"base": True}) for r in source["shards"]],
                "regime": f"{source['regime']}+{AGENT_REGIME}",
                "regime_description": f"{source.get('regime_description')}; then {AGENT_REGIME_DESCRIPTION}",
                "base": {"path": portable_path(base), "manifest_sha256": base_sha, "sequences": source["sequences"],
                         "frames": source["frames"], "regime": source["regime"], "seed": source["seed"]},
                "command": None}
    write_json(out / MANIFEST, manifest)
    return manifest


def add_episodes(out: str | Path, episodes: list[dict[str, np.ndarray]], source: dict[str, Any]) -> dict[str, Any]:
    """Add `episodes` (`EpisodeRecorder.take`'s) to the grown data set `out` as one shard; returns the shard's record.

    `source` says where they came from; its `"name"` is unique in the data set: adding a
    name that is there already returns that shard's record and writes nothing (a resumed
    loop does not add its episodes twice).
    """
    out = Path(out)
    manifest = load_manifest(out)
    if "base" not in manifest:
        raise ManifestMismatchError(f"{out} is not a grown data set (`grow_dataset`): episodes are added to a copy, "
                                    "never to a collected set")
    for record in manifest["shards"]:
        if record.get("source", {}).get("name") == source["name"]:
            return record
    length = manifest["frames_per_sequence"]
    parts = [episode_sequences(e, length) for e in episodes]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in ("frames", "actions", "rewards")}
    n = len(arrays["frames"])
    if n == 0:
        raise ValueError(f"no episode holds a whole sequence of {length} frames: nothing to add")
    if arrays["frames"].shape[2:] != tuple(manifest["image_shape"]):
        raise ManifestMismatchError(f"the episodes' frames are {arrays['frames'].shape[2:]}, {out}'s "
                                    f"{tuple(manifest['image_shape'])}")
    first = 1 + max((max(r["sequences"]) for r in manifest["shards"]), default=-1)
    ids = list(range(first, first + n))
    nq, nv = (len(manifest["spec"].get(k) or []) for k in ("state_qpos_low", "state_qvel_low"))
    arrays.update(
        qpos=np.full((n, length, nq), np.nan), qvel=np.full((n, length, nv), np.nan),  # no simulator state
        sequence_ids=np.asarray(ids, np.int64), start_steps=np.zeros(n, np.int64),
        explorers=np.full(n, AGENT_REGIME, dtype="U16"))
    path = out / f"shard_{len(manifest['shards']):05d}.npz"
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))
    record = {"file": path.name, "sequences": ids, "frames": n * length, "sha256": sha256_file(path),
              "explorers": {AGENT_REGIME: n}, "source": json.loads(json.dumps(source))}
    manifest["shards"].append(record)
    manifest["sequences"] += n
    manifest["frames"] += n * length
    manifest["episodes"] = manifest["sequences"]
    write_json(out / MANIFEST, manifest)
    return record
