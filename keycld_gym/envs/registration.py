"""The Gymnasium ids, registered when `keycld_gym` is imported: one id per system and observation type.

After ALE's `-ram-` convention, the observation type is part of the id, so that every tool
that calls plain `gym.make(env_id)` (RL Zoo, CleanRL-style scripts, SB3 given a string) can
ask for it:

    KeyCLD-<System>-v0                 imagined pixels (the model's rendered frames)
    KeyCLD-<System>-keypoints-v0       imagined keypoint state (positions, velocities)
    KeyCLD-<System>-dict-v0            imagined {"pixels", "keypoints"}
    KeyCLD-<System>-real-v0            the real dm_control task, pixels from the system camera
    KeyCLD-<System>-real-keypoints-v0  the real task, keypoints estimated from its rendered
                                       frames by the bundled model

Each pair (imagined, real) has the same spaces, so one policy runs on both. Entry points are
strings: nothing heavy is built or imported until `gym.make`; `gym.make("keycld_gym:<id>")`
imports the package (and so registers) by itself. A system without bundled weights fails at
make with the command that trains them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gymnasium.envs.registration import register, registry

from keycld_gym.sim.systems import SYSTEMS, get_system


@dataclass(frozen=True)
class Variant:
    """One registered observation type: its id suffix, entry points and observation type."""

    suffix: str  # between the system and the version: "" or e.g. "-keypoints"
    entry_point: str
    obs_type: str
    vector_entry_point: str | None = None  # None: gymnasium's sync and async vector envs only


_IMAGINED = "keycld_gym.envs.imagined_env:KeyCLDEnv"
_IMAGINED_VECTOR = "keycld_gym.envs.imagined_env:KeyCLDVectorEnv"
_REAL = "keycld_gym.envs.real:make_real_env"

VARIANTS: dict[str, Variant] = {
    "pixels": Variant("", _IMAGINED, "pixels", _IMAGINED_VECTOR),
    "keypoints": Variant("-keypoints", _IMAGINED, "keypoints", _IMAGINED_VECTOR),
    "dict": Variant("-dict", _IMAGINED, "dict", _IMAGINED_VECTOR),
    "real": Variant("-real", _REAL, "pixels"),
    "real-keypoints": Variant("-real-keypoints", _REAL, "keypoints"),
}


def env_id(system: str, variant: str = "pixels") -> str:
    """The Gymnasium id of a system's env, e.g. "KeyCLD-Cartpole-v0", "KeyCLD-Cartpole-real-keypoints-v0"."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown env variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return f"KeyCLD-{get_system(system).name.capitalize()}{VARIANTS[variant].suffix}-v0"


def env_ids() -> list[str]:
    """Every KeyCLD id, system by system."""
    return [env_id(name, variant) for name in SYSTEMS for variant in VARIANTS]


def register_envs() -> None:
    """Register every system's envs, with `max_episode_steps` in agent steps (the task's episode)."""
    for name, spec in SYSTEMS.items():
        for variant_name, variant in VARIANTS.items():
            id_ = env_id(name, variant_name)
            if id_ in registry:
                continue
            register(
                id=id_,
                entry_point=variant.entry_point,
                vector_entry_point=variant.vector_entry_point,
                max_episode_steps=spec.agent_steps,
                kwargs={"system": name, "obs_type": variant.obs_type},
            )
