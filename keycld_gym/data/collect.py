"""Data collection: sequences of real frames, actions, rewards and true states, as shards.

Layout of a data set folder::

    manifest.json        system spec, regime, seed, counts, one record per shard (sha256)
    shard_00000.npz      `shard_size` sequences, compressed, loaded without pickle

Every sequence is a pure function of (seed, sequence index), so an interrupted run that is
started again with the same command redoes only the shards that are missing or damaged,
and a run with more `--episodes` extends the set. Every file write is atomic
(write to a temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from keycld_gym.errors import ManifestMismatchError
from keycld_gym.files import atomic_write_bytes, differing_keys, sha256_file, write_json
from keycld_gym.parallel import run_units
from keycld_gym.sim.exploration import ExplorationConfig, Explorer
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import SystemSpec, get_system
from keycld_gym.version import __version__

DATASET_FORMAT = "keycld-gym-dataset"
DATASET_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REGIMES = {
    "task": "the task's own reset, then exploratory actions (what a real robot allows)",
    "states": "start states set uniformly across the state space in the simulator",
}
# Fields that must agree for a rerun to resume (or extend) an existing data set (and the
# spec's fields that change physics or images, `SystemSpec.differences`).
_RESUME_KEYS = ("format", "format_version", "system", "regime", "seed",
                "frames_per_sequence", "shard_size", "exploration")


@dataclass(frozen=True)
class CollectConfig:
    """What to collect.

    Attributes:
        system: system name.
        episodes: number of sequences (one per episode of the real task).
        frames: frames per sequence, at the physics rate (any stride can be taken later).
        seed: root seed; sequence i is drawn from the generator seeded with [seed, i].
        regime: ``"task"`` or ``"states"`` (see `REGIMES`).
        shard_size: sequences per shard (the unit of resumption and parallelism).
        exploration: how actions are drawn.
    """

    system: str
    episodes: int
    frames: int = 100
    seed: int = 0
    regime: str = "task"
    shard_size: int = 10
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)

    def __post_init__(self) -> None:
        spec = get_system(self.system)
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {self.regime!r}")
        if self.episodes < 1 or self.shard_size < 1:
            raise ValueError("episodes and shard_size must be positive")
        if not 2 <= self.frames <= spec.episode_steps:
            raise ValueError(f"frames must be in [2, {spec.episode_steps}] for {spec.name}, got {self.frames}")


def sequence_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that decides everything about sequence `index`."""
    return np.random.default_rng([seed, index])


def record_sequence(env: Any, config: CollectConfig, index: int) -> dict[str, Any]:
    """Run one sequence on a `RealEnv` (obs_type "state", action_repeat 1) and record it.

    Returns arrays: frames `uint8 (T, H, W, 3)`, actions `float32 (T, A)` (action t is
    applied after frame t), rewards `float32 (T,)` (reward of that step), qpos `(T, nq)`,
    qvel `(T, nv)`, plus the start step within the episode and the explorer kind.
    """
    spec: SystemSpec = env.system
    rng = sequence_rng(config.seed, index)
    _, info = env.reset(seed=int(rng.integers(2**31 - 1)))
    explorer = Explorer(spec, env.physics, rng, config.exploration)
    burn_in = 0
    if config.regime == "states":
        qpos = rng.uniform(spec.state_qpos_low, spec.state_qpos_high)
        qvel = rng.uniform(spec.state_qvel_low, spec.state_qvel_high)
        env.set_state(qpos, qvel)
        info = env.state_info()
    else:
        # Start anywhere in the episode, reached by the explorer from the task's reset.
        burn_in = int(rng.integers(0, spec.episode_steps - config.frames + 1))
        for _ in range(burn_in):
            _, _, _, _, info = env.step(explorer(info["qpos"], info["qvel"]))
    t_len, nu = config.frames, env.action_space.shape[0]
    out = {
        "frames": np.empty((t_len, *env.frame_shape), np.uint8),
        "actions": np.empty((t_len, nu), np.float32),
        "rewards": np.empty((t_len,), np.float32),
        "qpos": np.empty((t_len, env.physics.model.nq), np.float64),
        "qvel": np.empty((t_len, env.physics.model.nv), np.float64),
    }
    for t in range(t_len):
        out["frames"][t] = env.camera.render()
        out["qpos"][t], out["qvel"][t] = info["qpos"], info["qvel"]
        action = explorer(info["qpos"], info["qvel"])
        _, reward, _, _, info = env.step(action)
        out["actions"][t], out["rewards"][t] = action, reward
    out["start_step"] = burn_in
    out["explorer"] = explorer.kind
    return out


def shard_name(shard: int) -> str:
    """File name of shard number `shard`."""
    return f"shard_{shard:05d}.npz"


def plan_shards(config: CollectConfig) -> list[list[int]]:
    """Sequence indices of each shard."""
    ids = list(range(config.episodes))
    return [ids[i : i + config.shard_size] for i in range(0, len(ids), config.shard_size)]


_WORKER_ENV: dict[str, Any] = {}


def _worker_env(system: str) -> Any:
    """One real env per process (building it and its GL context is the slow part)."""
    if system not in _WORKER_ENV:
        _WORKER_ENV[system] = RealEnv(system, "state", action_repeat=1)
    return _WORKER_ENV[system]


def record_shard(config: CollectConfig, ids: list[int]) -> tuple[bytes, dict[str, int]]:
    """Record the sequences `ids`: the shard file's bytes (compressed npz) and how many sequences each explorer drove.

    The bytes, not a file: the unit may run on another machine (`keycld_gym.parallel`), and the
    caller writes what comes back.
    """
    env = _worker_env(config.system)
    seqs = [record_sequence(env, config, i) for i in ids]
    arrays = {k: np.stack([s[k] for s in seqs]) for k in ("frames", "actions", "rewards", "qpos", "qvel")}
    arrays["sequence_ids"] = np.asarray(ids, np.int64)
    arrays["start_steps"] = np.asarray([s["start_step"] for s in seqs], np.int64)
    arrays["explorers"] = np.asarray([s["explorer"] for s in seqs], dtype="U16")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # numpy dates every zip member 1980: the bytes are the data's alone
    return buffer.getvalue(), {str(k): int(v) for k, v in zip(*np.unique(arrays["explorers"], return_counts=True))}


def write_shard(out: Path, config: CollectConfig, shard: int, ids: list[int], recorded: tuple[bytes, dict[str, int]]) -> dict:
    """Write a `record_shard` result as shard number `shard` of `out`; returns its manifest record."""
    data, explorers = recorded
    path = out / shard_name(shard)
    atomic_write_bytes(path, lambda f: f.write(data))
    return {"file": path.name, "sequences": ids, "frames": len(ids) * config.frames,
            "sha256": sha256_file(path), "explorers": explorers}


def new_manifest(config: CollectConfig, command: str | None) -> dict:
    """The manifest of an empty data set for `config`."""
    spec = get_system(config.system)
    return {
        "format": DATASET_FORMAT,
        "format_version": DATASET_FORMAT_VERSION,
        "package_version": __version__,
        "system": spec.name,
        "spec": spec.to_dict(),
        "regime": config.regime,
        "regime_description": REGIMES[config.regime],
        "seed": config.seed,
        "frames_per_sequence": config.frames,
        "shard_size": config.shard_size,
        "exploration": dataclasses.asdict(config.exploration),
        "physics_dt": spec.physics_dt,
        "image_shape": list(spec.image_shape),
        "episodes": config.episodes,
        "command": command,
        "shards": [],
        "sequences": 0,
        "frames": 0,
        "complete": False,
    }


def resume_manifest(out: Path, config: CollectConfig, command: str | None) -> dict:
    """The manifest to continue from: the existing one if compatible, else a new one."""
    fresh = new_manifest(config, command)
    path = out / MANIFEST
    if not path.exists():
        return fresh
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestMismatchError(f"{path} is not valid JSON ({err}); delete the folder or choose another --out") from err
    differ = differing_keys(old, fresh, _RESUME_KEYS)
    differ += [f"spec.{k}" for k in get_system(config.system).differences(old.get("spec"))]
    if differ:
        raise ManifestMismatchError(
            f"{out} holds a data set collected with other settings (differs in: {', '.join(differ)}); "
            "rerun with the same arguments to resume it, or choose another --out"
        )
    fresh["shards"] = old.get("shards", [])
    fresh["command"] = command or old.get("command")
    return fresh


def _finished(out: Path, record: dict, ids: list[int]) -> bool:
    path = out / record["file"]
    return record["sequences"] == ids and path.exists() and sha256_file(path) == record["sha256"]


def collect(
    out: str | Path,
    config: CollectConfig,
    *,
    workers: int = 1,
    ray: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Collect (or resume collecting) a data set into `out`; returns the final manifest.

    Shards are the units of work (`keycld_gym.parallel.run_units`): recorded one after another,
    in `workers` local processes, or as Ray tasks (`ray`: "local", "auto" or an address); each
    is written and entered in the manifest as it finishes, so what finished is kept.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = resume_manifest(out, config, command)
    plan = plan_shards(config)
    done = {r["file"]: r for r in manifest["shards"]}
    keep = {}
    todo = []
    for shard, ids in enumerate(plan):
        record = done.get(shard_name(shard))
        if record is not None and _finished(out, record, ids):
            keep[shard] = record
        else:
            todo.append((shard, ids))

    def save() -> None:
        records = [keep[s] for s in sorted(keep)]
        manifest["shards"] = records
        manifest["sequences"] = sum(len(r["sequences"]) for r in records)
        manifest["frames"] = sum(r["frames"] for r in records)
        manifest["complete"] = len(records) == len(plan)
        write_json(out / MANIFEST, manifest)

    save()
    if keep and progress:
        tqdm.write(f"resuming {out}: {len(keep)} of {len(plan)} shards already complete and verified")
    bar = tqdm(total=config.episodes, initial=config.episodes - sum(len(i) for _, i in todo),
               desc=f"collect {config.system}/{config.regime}", unit="seq", disable=not progress)

    def finished(i: int, recorded: tuple[bytes, dict[str, int]]) -> None:
        shard, ids = todo[i]
        keep[shard] = write_shard(out, config, shard, ids, recorded)
        save()
        bar.update(len(ids))

    try:
        run_units(record_shard, [(config, ids) for _, ids in todo], workers=workers, ray=ray, on_result=finished)
    finally:
        bar.close()
    return manifest
