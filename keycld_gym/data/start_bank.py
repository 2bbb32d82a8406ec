"""Start frames shipped with a model: real windows from the task's own reset distribution.

The imagined env starts its episodes from these, through the model's own encoder and
start-state estimation, as it would from a real camera: each entry is `frames` consecutive
real frames, one physics step apart, from a fresh reset of the standard task, with the
(zero) actions between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keycld_gym.data.dataset import iter_sequences
from keycld_gym.errors import CheckpointError
from keycld_gym.files import atomic_write_bytes
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import WINDOWS, get_system

START_BANK = "start_frames.npz"
# Start windows drawn from a model's training data, anywhere in its sequences: an imagined
# env can start where a real robot cannot be put (upright, mid-swing), which is where an
# agent of a sparse task first finds its reward ("exploring starts").
EXPLORING_STARTS = "exploring_starts.npz"


def collect_start_bank(system: str, count: int = 32, frames: int | None = None, seed: int = 10_000) -> dict[str, np.ndarray]:
    """Real start windows: frames uint8 `(count, frames, H, W, 3)`, actions `(count, frames - 1, A)`, seeds `(count,)`."""
    spec = get_system(system)
    if frames is None:
        frames = spec.frames(WINDOWS.start_bank)
    env = RealEnv(spec, "state", action_repeat=1)
    nu = env.action_space.shape[0]
    out = np.empty((count, frames, *env.frame_shape), np.uint8)
    seeds = np.arange(seed, seed + count)
    for i, s in enumerate(seeds):
        env.reset(seed=int(s))
        for t in range(frames):
            out[i, t] = env.camera.render()
            if t < frames - 1:
                env.step(np.zeros(nu))
    env.close()
    return {"frames": out, "actions": np.zeros((count, frames - 1, nu), np.float32), "seeds": seeds}


def start_bank_from_data(data: str | Path, system: str, count: int = 256, frames: int | None = None,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Start windows from anywhere in a data set's sequences, in `collect_start_bank`'s format (seeds: -1)."""
    spec = get_system(system)
    if frames is None:
        frames = spec.frames(WINDOWS.start_bank)
    rng = np.random.default_rng(seed)
    windows, acts = [], []
    for seq in iter_sequences(data, spec.name):
        t = len(seq["frames"])
        for s in rng.integers(0, t - frames + 1, max(1, count // 10)):
            windows.append(seq["frames"][s:s + frames])
            acts.append(seq["actions"][s:s + frames - 1].astype(np.float32))
    pick = rng.permutation(len(windows))[:count]
    return {"frames": np.stack([windows[i] for i in pick]), "actions": np.stack([acts[i] for i in pick]),
            "seeds": np.full(len(pick), -1)}


def write_start_bank(folder: str | Path, bank: dict[str, np.ndarray], name: str = START_BANK) -> Path:
    """Write a start bank into a checkpoint folder (compressed: mostly background)."""
    path = Path(folder) / name
    atomic_write_bytes(path, lambda f: np.savez_compressed(f, **bank))
    return path


def read_start_bank(folder: str | Path, name: str = START_BANK) -> dict[str, np.ndarray]:
    """The start bank (or with `name`, the exploring starts) of a checkpoint folder."""
    path = Path(folder) / name
    if not path.exists():
        raise CheckpointError(
            f"{path} is missing: the imagined env starts episodes from it; write one with "
            f"`keycld_gym.data.start_bank.write_start_bank(folder, collect_start_bank(system))`"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("frames", "actions", "seeds")}
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); rewrite it with collect_start_bank") from err
