"""The Gymnasium ids of the imagined envs, registered when `keycld_gym` is imported."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from keycld_gym.sim.systems import SYSTEMS


def env_id(system: str) -> str:
    """The Gymnasium id of a system's imagined env, e.g. "KeyCLD-Cartpole-v0"."""
    return f"KeyCLD-{system.capitalize()}-v0"


def register_envs() -> None:
    """Register every system's imagined env (string entry points: nothing is built until `gym.make`)."""
    for name in SYSTEMS:
        if env_id(name) not in registry:
            register(
                id=env_id(name),
                entry_point="keycld_gym.envs.imagined_env:KeyCLDEnv",
                vector_entry_point="keycld_gym.envs.imagined_env:KeyCLDVectorEnv",
                kwargs={"system": name},
            )
