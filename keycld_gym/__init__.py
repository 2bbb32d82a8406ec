"""keycld-gym: KeyCLD world models behind Gymnasium envs, benchmarked against the real tasks."""

import os

# dm_control reads MUJOCO_GL once, at its first import: choose headless EGL unless the
# user already chose a backend.
os.environ.setdefault("MUJOCO_GL", "egl")

from keycld_gym.errors import (  # noqa: E402
    CorruptShardError,
    KeyCLDError,
    ManifestMismatchError,
    RenderBackendError,
    UnknownSystemError,
)
from keycld_gym.systems import SYSTEMS, CameraSpec, Constraint, SystemSpec, get_system  # noqa: E402

__version__ = "0.1.0"


def make_real_env(*args, **kwargs):
    """The real dm_control task as a Gymnasium env; see `keycld_gym.real_env.make_real_env`."""
    from keycld_gym.real_env import make_real_env as _make

    return _make(*args, **kwargs)


__all__ = [
    "SYSTEMS",
    "CameraSpec",
    "Constraint",
    "CorruptShardError",
    "KeyCLDError",
    "ManifestMismatchError",
    "RenderBackendError",
    "SystemSpec",
    "UnknownSystemError",
    "get_system",
    "make_real_env",
    "__version__",
]
