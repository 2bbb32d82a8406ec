"""The real side's keypoint-estimate error, measured, and the same error put into imagination.

In the real task a keypoint policy sees states estimated from the last 17 frames
(`RealKeypointEnv`): positions carry the encoder's jitter and velocities the shooting fit's
error. In imagination it would see exact states and learn to rely on a precision it will
not have. `measure_estimation_error` measures the causal estimate (the real env's
`Tracking`: window, Gauss-Newton iterations, Huber threshold) on held-out real sequences
against a smoothed reference (the state at the middle of a 33-frame window, whose
velocity is determined from both sides); `KeypointNoise` adds zero-mean Gaussian noise with
those per-coordinate standard deviations to imagined keypoint observations. The same
measurement gives the error of one frame's encoded keypoints against the reference
(`frame_std`), the noise a keycld-encoder pixel agent's imagined keypoints get
(`keycld_gym.rl.frame_encoding`). It is stored beside the model's weights
(`observation_noise.json`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper

from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import iter_sequences
from keycld_gym.envs.real_keypoints import Tracking
from keycld_gym.errors import CheckpointError
from keycld_gym.files import sha256_file, write_json
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import WINDOWS

NOISE_FILE = "observation_noise.json"


def measure_estimation_error(
    model: KeyCLDModel, data: str | Path, *, tracking: Tracking = Tracking(), reference: int | None = None, every: int = 8,
    max_sequences: int | None = None,
) -> dict[str, Any]:
    """Error of the real env's causal state estimate (`tracking`) against a centred `reference`-frame fit on real sequences in `data`.

    Returns per-coordinate `std` and `mean` of (estimate - reference) over the observation's
    4K numbers (positions, then velocities), with what it was measured on.
    """
    window = tracking.frames(model.spec)
    if reference is None:
        reference = model.spec.frames(WINDOWS.start_fit)
    if reference % 2 == 0 or reference <= window:
        raise ValueError(f"reference must be an odd number of frames above window={window}, got {reference}")
    half = reference // 2
    kps, acts, used = [], [], 0
    t0 = time.time()
    for seq in iter_sequences(data, model.spec.name):
        if max_sequences is not None and used >= max_sequences:
            break
        frames = seq["frames"]
        kp = model.encode_frames(frames)  # (T, K, 2)
        a = torch.from_numpy(seq["actions"].astype(np.float32))
        # frame t's window ends at t; the reference is centred on t
        for t in range(max(window - 1, half), len(frames) - half, every):
            kps.append((kp[t - window + 1: t + 1], kp[t - half: t + half + 1]))
            acts.append((a[t - window + 1: t], a[t - half: t + half]))
        used += 1
    if not kps:
        raise ValueError(f"{data} has no sequence of at least {reference} frames to measure on")
    causal_q, causal_v = tracking.fit(model, torch.stack([k[0] for k in kps]), torch.stack([a[0] for a in acts]))
    ref_q, ref_v = tracking.fit(model, torch.stack([k[1] for k in kps]), torch.stack([a[1] for a in acts]))
    estimate = torch.cat([causal_q[:, -1].flatten(1), causal_v[:, -1].flatten(1)], 1)
    truth = torch.cat([ref_q[:, half].flatten(1), ref_v[:, half].flatten(1)], 1)
    err = (estimate - truth).numpy()
    # one frame's encoder output against the reference position: what a policy reading
    # single frames (a keycld-encoder pixel agent) sees
    frame_err = (torch.stack([k[1][half] for k in kps]) - ref_q[:, half]).flatten(1).numpy()
    return {
        "std": err.std(0).round(6).tolist(),
        "mean": err.mean(0).round(6).tolist(),
        "frame_std": frame_err.std(0).round(6).tolist(),
        "frame_mean": frame_err.mean(0).round(6).tolist(),
        "window": window, "iterations": tracking.iterations, "robust": tracking.robust,
        "reference": reference, "every": every,
        "samples": len(err), "sequences": used,
        "data": str(data), "data_manifest_sha256": sha256_file(Path(data) / MANIFEST),
        "seconds": round(time.time() - t0, 1),
    }


def write_noise(folder: str | Path, measurement: dict[str, Any]) -> Path:
    """Store a measurement beside a model's weights."""
    path = Path(folder) / NOISE_FILE
    write_json(path, measurement)
    return path


def read_noise(folder: str | Path, key: str = "std") -> np.ndarray:
    """Per-coordinate standard deviations stored beside a model's weights.

    `key` "std": the state estimate's `(4K,)`; "frame_std": one frame's encoded keypoints' `(2K,)`.
    """
    path = Path(folder) / NOISE_FILE
    if not path.exists():
        raise CheckpointError(
            f"{path} is missing: measure the model's estimation error with "
            f"`keycld-gym observation-noise --checkpoint {folder} --data HELD_OUT_DATA`, or train with noise 'none'"
        )
    try:
        measured = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); measure it again with `keycld-gym observation-noise`") from err
    if key not in measured:
        raise CheckpointError(f"{path} has no {key!r} (an older measurement): measure it again with `keycld-gym observation-noise`")
    try:
        return np.asarray(measured[key], np.float32)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); measure it again with `keycld-gym observation-noise`") from err


class KeypointNoise(VectorWrapper):
    """Zero-mean Gaussian noise of per-coordinate std `(4K,)` on a vector env's keypoint observations.

    Also on `info["final_obs"]` of envs that ended (gymnasium's observation wrappers refuse
    SAME_STEP autoreset envs for want of that).
    """

    def __init__(self, env: VectorEnv, std: np.ndarray, seed: int | None = None):
        super().__init__(env)
        space = env.single_observation_space
        std = np.asarray(std, np.float32)
        if not isinstance(space, gym.spaces.Box) or space.shape != std.shape:
            raise ValueError(f"noise std of shape {std.shape} does not fit observations {space}: use obs_type='keypoints'")
        self.std = std
        self.rng = np.random.default_rng(seed)

    def _noisy(self, observations: np.ndarray) -> np.ndarray:
        return (observations + self.rng.normal(size=observations.shape) * self.std).astype(np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        return self._noisy(obs), info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        if "final_obs" in info:
            final = info["final_obs"].copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = self._noisy(final[i])
            info = {**info, "final_obs": final}
        return self._noisy(obs), reward, terminated, truncated, info
