"""The package's exceptions: each says what was wrong and what to do."""


class KeyCLDError(Exception):
    """Base class of keycld_gym's errors."""


class UnknownSystemError(KeyCLDError, ValueError):
    """A system name that has no spec."""


class RenderBackendError(KeyCLDError, RuntimeError):
    """MuJoCo could not render with the configured OpenGL backend (MUJOCO_GL)."""


class CorruptShardError(KeyCLDError, OSError):
    """A data shard is unreadable, truncated or fails its checksum."""


class ManifestMismatchError(KeyCLDError, ValueError):
    """A data set's manifest belongs to another system, spec, format version or command."""


class CheckpointError(KeyCLDError, ValueError):
    """A model or training checkpoint is missing, corrupt, or belongs to another system or version."""


class TrainingFailedError(KeyCLDError, RuntimeError):
    """A training phase missed what it must learn on every attempt its recipe allows."""
