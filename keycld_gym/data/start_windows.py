"""Start windows for a model's start bank: real windows from the task's own reset, or from a data set.

Each window is `frames` consecutive real frames, one physics step apart, with the actions
between them; `keycld_gym.model.start_bank` writes and reads them beside a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keycld_gym.data.dataset import iter_sequences
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import WINDOWS, get_system


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
