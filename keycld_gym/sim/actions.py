"""The agent's side of every env, real or imagined: one action check and one action-repeat loop.

Actions live in `Box(-1, 1)`. A wrongly shaped or non-finite action is an error; an
out-of-range one is clipped, as the real actuator (dm_control's control range) does.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def checked_action(action: Any, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
    """`action` as an array of `shape` clipped to [-1, 1]; any array of the right size is reshaped.

    Raises ValueError, naming the expected shape, for another size or a NaN or infinite entry.
    """
    arr = np.asarray(action, dtype=dtype)
    if arr.shape != shape and arr.size == int(np.prod(shape)):
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape} (Box(-1, 1)), got {np.asarray(action).shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action must be finite, got {action}")
    return np.clip(arr, -1.0, 1.0)


def repeat_action(step: Callable[[], tuple[Any, float, bool, bool, dict]], repeat: int,
                  total: float = 0.0) -> tuple[Any, float, bool, bool, dict, int]:
    """Take up to `repeat` physics steps with `step()` (Gymnasium's step of one held action), adding rewards to `total`.

    Stops early when the episode ends. Returns the last observation, the summed reward,
    terminated, truncated, the last info and the number of steps taken.
    """
    obs, terminated, truncated, info, taken = None, False, False, {}, 0
    for _ in range(repeat):
        obs, reward, terminated, truncated, info = step()
        total += float(reward)
        taken += 1
        if terminated or truncated:
            break
    return obs, total, bool(terminated), bool(truncated), info, taken
