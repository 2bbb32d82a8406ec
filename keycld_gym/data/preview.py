"""Pictures of observation frames: a data set's frames, or a system at chosen states."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keycld_gym.data.dataset import WindowDataset
from keycld_gym.sim.real_env import RealEnv


def frame_grid(frames: np.ndarray, columns: int, scale: int = 2, pad: int = 2) -> np.ndarray:
    """Tile `uint8 (N, H, W, 3)` frames into one image, `scale`x enlarged, white padding."""
    frames = np.asarray(frames, np.uint8)
    n, h, w, _ = frames.shape
    rows = -(-n // columns)
    hs, ws = h * scale, w * scale
    grid = np.full((rows * (hs + pad) + pad, columns * (ws + pad) + pad, 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        big = frame.repeat(scale, 0).repeat(scale, 1)
        grid[pad + r * (hs + pad) : pad + r * (hs + pad) + hs, pad + c * (ws + pad) : pad + c * (ws + pad) + ws] = big
    return grid


def dataset_preview(root: str | Path, out: str | Path, sequences: int = 4, frames: int = 8, stride: int = 8) -> Path:
    """Write a PNG of the first `frames` frames (every `stride`-th) of a few sequences."""
    import imageio.v3 as iio


    ds = WindowDataset(root, frames, stride=stride, split="all", step=10**9)
    picks = np.linspace(0, len(ds) - 1, min(sequences, len(ds))).round().astype(int)
    tiles = np.concatenate([ds[int(i)]["frames"].numpy() for i in picks])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, frame_grid(tiles, columns=frames))
    return out


def system_frames(system: str, states: list[tuple[list[float], list[float]]]) -> np.ndarray:
    """Observation frames `uint8 (N, H, W, 3)` of `system` at the given (qpos, qvel) states."""
    env = RealEnv(system, "pixels")
    env.reset(seed=0)
    frames = []
    for qpos, qvel in states:
        env.set_state(qpos, qvel)
        frames.append(env.camera.render())
    env.close()
    return np.stack(frames)
