"""The real task behind one factory, with any observation type a policy may read.

Pixels and dm_control's state come straight from `RealEnv`; keypoints are estimated from the
real frames by a model (`RealKeypointEnv`), so one keypoint policy runs in imagination and in
the real task alike.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from keycld_gym.envs.real_keypoints import RealKeypointEnv
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.tracking import Estimator, Tracking
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import SystemSpec, get_system


def make_real_env(
    system: str | SystemSpec,
    obs_type: str = "pixels",
    *,
    image_size: tuple[int, int] | None = None,
    action_repeat: int | None = None,
    render_mode: str | None = None,
    model: KeyCLDModel | None = None,
    checkpoint: str | Path | None = None,
    tracking: Estimator | None = None,
    record: bool = False,
) -> gym.Env:
    """The real dm_control task of `system` as a Gymnasium env (see `RealEnv`).

    `obs_type="keypoints"`: real frames are encoded into the imagined env's keypoint
    observation (see `RealKeypointEnv`) by `model` (a `KeyCLDModel`), or else by the model in
    `checkpoint` (a folder; None: the system's bundled model), estimated as `tracking` (a
    `Tracking` or `Filtering`, `model/tracking.py`; None: the default) says; `record` keeps its
    episodes' frames, actions and rewards (`RealKeypointEnv.take_episodes`).
    """
    if record and obs_type != "keypoints":
        raise ValueError("record=True is for obs_type='keypoints' (it records every physics step's frame)")
    if obs_type == "keypoints":
        if model is None:
            model = load_model(checkpoint_folder(checkpoint, get_system(system).name))
        elif checkpoint is not None:
            raise ValueError("pass either model or checkpoint, not both")
        if image_size is not None:
            raise ValueError("obs_type='keypoints' uses the model's own frame size; drop image_size")
        return RealKeypointEnv(system, model, action_repeat=action_repeat, tracking=tracking or Tracking(),
                               render_mode=render_mode, record=record)
    if model is not None or checkpoint is not None:
        raise ValueError(f"obs_type={obs_type!r} reads no model; model and checkpoint are for obs_type='keypoints'")
    return RealEnv(system, obs_type, image_size=image_size, action_repeat=action_repeat, render_mode=render_mode)
