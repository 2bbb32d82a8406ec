"""Angles of the real systems' joints, compared and steered modulo a full turn."""

from __future__ import annotations

import numpy as np


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """An angle (or array of them) in radians wrapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi
