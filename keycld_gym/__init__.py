"""keycld-gym: KeyCLD world models behind Gymnasium envs, benchmarked against the real tasks.

The public API: `make_real_env` (the real dm_control task), `load_model` (a trained KeyCLD
model), `get_system` (a system's spec), and the env ids `KeyCLD-<System>-v0`, registered on
import. The subpackages are floors that follow the data flow, each importing only those below it:

    sim -> data -> model -> envs -> agents (the recipes) -> rl -> analysis -> training -> benchmark, cli
"""

import os

# dm_control reads MUJOCO_GL once, at its first import: choose headless EGL unless the
# user already chose a backend.
os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

# A process forked after torch ran a parallel op hangs at its next one (its OpenMP pool does
# not survive a fork), and forking is how gymnasium's AsyncVectorEnv starts its workers by
# default on Linux: forked children run torch on one thread, as PyTorch's DataLoader workers do.
os.register_at_fork(after_in_child=lambda: torch.set_num_threads(1))

from keycld_gym.envs.real import make_real_env  # noqa: E402
from keycld_gym.envs.registration import env_id, register_envs  # noqa: E402
from keycld_gym.errors import (  # noqa: E402
    CheckpointError,
    CorruptShardError,
    KeyCLDError,
    ManifestMismatchError,
    RenderBackendError,
    UnknownSystemError,
)
from keycld_gym.model.checkpoint import load_model  # noqa: E402
from keycld_gym.sim.systems import (  # noqa: E402
    SYSTEMS,
    Actuator,
    CameraSpec,
    Constraint,
    Joint,
    SystemSpec,
    get_system,
)
from keycld_gym.version import __version__  # noqa: E402

register_envs()

__all__ = [
    "CheckpointError",
    "SYSTEMS",
    "Actuator",
    "CameraSpec",
    "Constraint",
    "CorruptShardError",
    "Joint",
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
