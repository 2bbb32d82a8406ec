"""keycld-gym: KeyCLD world models behind Gymnasium envs, benchmarked against the real tasks."""

import os

# dm_control reads MUJOCO_GL once, at its first import: choose headless EGL unless the
# user already chose a backend.
os.environ.setdefault("MUJOCO_GL", "egl")

from keycld_gym.errors import (  # noqa: E402
    CheckpointError,
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


def load_model(name_or_path, device="cpu"):
    """A trained KeyCLD model: a system name loads the bundled weights, a path any checkpoint."""
    from keycld_gym.checkpoint import load_model as _load

    return _load(name_or_path, device=device)


def env_id(system: str) -> str:
    """The Gymnasium id of a system's imagined env, e.g. "KeyCLD-Cartpole-v0"."""
    return f"KeyCLD-{system.capitalize()}-v0"


def _register_envs() -> None:
    from gymnasium.envs.registration import register, registry

    for name in SYSTEMS:
        if env_id(name) not in registry:
            register(
                id=env_id(name),
                entry_point="keycld_gym.imagined_env:KeyCLDEnv",
                vector_entry_point="keycld_gym.imagined_env:KeyCLDVectorEnv",
                kwargs={"system": name},
            )


_register_envs()

__all__ = [
    "CheckpointError",
    "SYSTEMS",
    "CameraSpec",
    "Constraint",
    "CorruptShardError",
    "KeyCLDError",
    "ManifestMismatchError",
    "RenderBackendError",
    "SystemSpec",
    "UnknownSystemError",
    "env_id",
    "get_system",
    "load_model",
    "make_real_env",
    "__version__",
]
