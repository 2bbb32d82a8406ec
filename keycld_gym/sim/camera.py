"""Observation cameras: render frames of a dm_control physics and project points into them.

Image coordinates used across the package (docs/method/keypoints.md, "State"): origin at the image
centre, x to the right, y upwards; the frame's *height* spans y in [-1, 1] and x is in the
same units, so a 64x128 frame spans x in [-2, 2].
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from keycld_gym.errors import RenderBackendError
from keycld_gym.sim.systems import CameraSpec

# Must be set before dm_control is first imported; EGL renders headless (Mesa or a GPU).
os.environ.setdefault("MUJOCO_GL", "egl")

_GL_HELP = (
    "Set MUJOCO_GL before importing keycld_gym (or dm_control): 'egl' renders headless and "
    "needs libEGL (Debian/Ubuntu: apt-get install libegl1 libgl1), 'osmesa' needs "
    "libosmesa6 (apt-get install libosmesa6 libgl1-mesa-dri), 'glfw' needs a display."
)


# The process that made this module's first GL context (None: none yet). A forked child
# inherits the value, which is how it knows its GL state is the parent's.
_GL_OWNER: int | None = None


def _check_gl_not_inherited() -> None:
    """Fail clearly, instead of hanging, in a process forked from one that had already rendered."""
    if _GL_OWNER is None or _GL_OWNER == os.getpid() or os.environ.get("MUJOCO_GL") == "osmesa":
        return
    raise RenderBackendError(
        f"this process was forked from one (pid {_GL_OWNER}) that had already rendered with MUJOCO_GL="
        f"{os.environ.get('MUJOCO_GL')!r}: a GL context does not survive a fork, and rendering here would hang. "
        "Start the workers fresh instead of forked: gym.make_vec(id, num_envs, vectorization_mode='async', "
        "vector_kwargs={'context': 'spawn'}), SubprocVecEnv(..., start_method='forkserver'), or "
        "multiprocessing.get_context('spawn')"
    )


def render_backend_error(err: BaseException) -> RenderBackendError:
    """Wrap an OpenGL failure into an error that names MUJOCO_GL and what to install."""
    backend = os.environ.get("MUJOCO_GL")
    return RenderBackendError(
        f"MuJoCo could not render with MUJOCO_GL={backend!r}: {type(err).__name__}: {str(err).rstrip('.')}. "
        + _GL_HELP
    )


def _is_gl_failure(err: BaseException) -> bool:
    """Whether an import error was raised by the OpenGL backend (not, say, a missing package)."""
    if "MUJOCO_GL" in str(err):
        return True
    tb = err.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/OpenGL/" in filename or "dm_control/_render" in filename:
            return True
        tb = tb.tb_next
    return False


def import_dm_control() -> tuple[Any, Any]:
    """Import dm_control's suite and engine, turning GL backend failures into clear errors.

    dm_control loads its OpenGL backend (MUJOCO_GL) at import time, so a bad or missing
    backend fails here, before any frame is rendered.
    """
    try:
        from dm_control import suite
        from dm_control.mujoco import engine
    except (RuntimeError, ImportError, AttributeError, OSError) as err:
        if _is_gl_failure(err):
            raise render_backend_error(err) from err
        raise
    return suite, engine


class ObservationCamera:
    """Renders `uint8 (H, W, 3)` frames of one physics from a `CameraSpec`.

    Holds one dm_control camera (its scene is reused across frames, cheaper than
    `physics.render`), and projects world points into the package's image coordinates.
    """

    def __init__(self, physics: Any, spec: CameraSpec):
        global _GL_OWNER
        _check_gl_not_inherited()
        _, engine = import_dm_control()
        self.spec = spec
        self.physics = physics
        try:
            if spec.name is None:
                cam = engine.MovableCamera(physics, spec.height, spec.width)
                cam.set_pose(np.asarray(spec.lookat, float), spec.distance, spec.azimuth, spec.elevation)
            else:
                cam = engine.Camera(physics, spec.height, spec.width, spec.name)
        except ValueError:
            raise  # bad camera name or size: not a GL problem
        except Exception as err:  # noqa: BLE001 - any GL library failure surfaces here
            raise render_backend_error(err) from err
        self._camera = cam
        _GL_OWNER = os.getpid()

    def render(self) -> np.ndarray:
        """The current frame, `uint8 (H, W, 3)` (a fresh array)."""
        try:
            return np.array(self._camera.render(), dtype=np.uint8, copy=True)
        except Exception as err:  # noqa: BLE001
            raise render_backend_error(err) from err

    def project_pixels(self, points: np.ndarray) -> np.ndarray:
        """World points `(N, 3)` -> pixel coordinates `(N, 2)` as (column, row)."""
        points = np.asarray(points, dtype=float).reshape(-1, 3)
        homog = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ self._camera.matrix.T
        return homog[:, :2] / homog[:, 2:3]

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points `(N, 3)` -> image coordinates `(N, 2)` (x right, y up, height = [-1, 1])."""
        return pixels_to_image(self.project_pixels(points), self.spec.height, self.spec.width)


def pixels_to_image(pixels, height: int, width: int):
    """Pixel (column, row) `(..., 2)` -> image coordinates (x right, y up, half-height = 1).

    Works on numpy arrays and torch tensors alike: the one definition of the convention.
    """
    half = height / 2.0
    x = (pixels[..., 0] - (width - 1) / 2.0) / half
    y = ((height - 1) / 2.0 - pixels[..., 1]) / half
    if isinstance(pixels, np.ndarray):
        return np.stack([x, y], axis=-1)
    import torch

    return torch.stack([x, y], dim=-1)
