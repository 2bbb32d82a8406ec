"""Start frames shipped with a model: the files, beside the checkpoint's weights.

The imagined env starts its episodes from these, through the model's own encoder and
start-state estimation, as it would from a real camera: each entry is `frames` consecutive
real frames, one physics step apart, with the actions between them
(`keycld_gym.data.start_windows` collects them).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from keycld_gym.errors import CheckpointError
from keycld_gym.files import atomic_write_bytes

START_BANK = "start_frames.npz"
# Start windows drawn from a model's training data, anywhere in its sequences: an imagined
# env can start where a real robot cannot be put (upright, mid-swing), which is where an
# agent of a sparse task first finds its reward ("exploring starts").
EXPLORING_STARTS = "exploring_starts.npz"


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
            f"`keycld_gym.model.start_bank.write_start_bank(folder, keycld_gym.data.start_windows.collect_start_bank(system))`"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("frames", "actions", "seeds")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); rewrite it with collect_start_bank") from err
