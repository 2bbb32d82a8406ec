"""The real side's keypoint-estimate error, measured, and the same error put into imagination.

In the real task a keypoint policy sees states estimated online from the frames
(`RealKeypointEnv`, with its recipe's estimator: the sliding-window fit or the Kalman
filter): positions carry the encoder's jitter and velocities the estimator's error. In
imagination it would see exact states and learn to rely on a precision it will not have.
`measure_estimation_error` measures the causal estimate on held-out real sequences
against a smoothed reference (the state at the middle of a 33-frame window, whose
velocity is determined from both sides); `KeypointNoise` adds zero-mean Gaussian noise with
those per-coordinate standard deviations to imagined keypoint observations. The same
measurement gives the error of one frame's encoded keypoints against the reference
(`frame_std`), the noise a keycld-encoder pixel agent's imagined keypoints get
(`keycld_gym.rl.frame_encoding`). It is stored beside the model's weights
(`observation_noise.json`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv, VectorWrapper

from keycld_gym.agents import bundled_recipe
from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import iter_sequences
from keycld_gym.files import sha256_file
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.tracking import Estimator, Filtering, Tracking, estimator_to_dict
from keycld_gym.sim.systems import WINDOWS


def measure_estimation_error(
    model: KeyCLDModel, data: str | Path, *, tracking: Estimator | None = None, reference: int | None = None,
    every: int | None = None, max_sequences: int | None = None,
) -> dict[str, Any]:
    """Error of the real env's causal state estimate (`tracking`) against a centred `reference`-frame fit on real sequences in `data`.

    `tracking` None: the estimator of the system's bundled keypoint recipe, the one its
    agents meet in the real env. The estimator runs through each sequence frame by frame as
    in the real env, and is read every `every` frames (default: the system's action repeat,
    as an agent reads it).
    Returns per-coordinate `std` and `mean` of (estimate - reference) over the observation's
    4K numbers (positions, then velocities), with what it was measured on.
    """
    if tracking is None:
        recipe = bundled_recipe(model.spec.name, "keypoints")
        tracking = Tracking() if recipe is None else recipe.real_estimator
    if reference is None:
        reference = model.spec.frames(WINDOWS.start_fit)
    if reference % 2 == 0 or reference < 3:
        raise ValueError(f"reference must be an odd number of frames, at least 3, got {reference}")
    every = model.spec.action_repeat if every is None else every
    half = reference // 2
    t0 = time.time()
    sequences = []
    for seq in iter_sequences(data, model.spec.name):
        if max_sequences is not None and len(sequences) >= max_sequences:
            break
        if len(seq["frames"]) >= reference:
            sequences.append((model.encode_frames(seq["frames"]), torch.from_numpy(seq["actions"].astype(np.float32))))
    if not sequences:
        raise ValueError(f"{data} has no sequence of at least {reference} frames to measure on")
    groups = [(torch.stack([k for k, _ in sequences if len(k) == length]),  # (B, T, K, 2)
               torch.stack([a for k, a in sequences if len(k) == length]))  # (B, T - 1, A)
              for length in sorted({len(kp) for kp, _ in sequences})]  # sequences of one length run as one batch

    def reads(length: int) -> list[int]:
        """The frames an agent reads the estimate at that have a whole reference window around them."""
        return [t for t in range(half, length - half) if t % every == 0]

    windows = [kp[:, t - half: t + half + 1] for kp, _ in groups for t in reads(kp.shape[1])]
    window_actions = [acts[:, t - half: t + half] for kp, acts in groups for t in reads(kp.shape[1])]
    ref_q, ref_v = Tracking().fit(model, torch.cat(windows), torch.cat(window_actions))
    truth = torch.cat([ref_q[:, half].flatten(1), ref_v[:, half].flatten(1)], 1)
    # one frame's encoder output against the reference position: what a policy reading
    # single frames (a keycld-encoder pixel agent) sees, and what a filter is told to expect
    frame_err = (torch.cat(windows)[:, half] - ref_q[:, half]).flatten(1).numpy()
    estimating = tracking
    if isinstance(tracking, Filtering) and tracking.measurement_std is None:  # the frame error just measured
        estimating = dataclasses.replace(tracking, measurement_std=tuple(frame_err.std(0).tolist()))
    causal = []
    for kp, acts in groups:
        estimator, read = estimating.start(model), set(reads(kp.shape[1]))
        for t in range(kp.shape[1] - half):
            estimator.add(kp[:, t], None if t == 0 else acts[:, t - 1])
            if t in read:
                q, v = estimator.estimate()
                causal.append(torch.cat([q.flatten(1), v.flatten(1)], 1))
    err = (torch.cat(causal) - truth).numpy()
    return {
        "std": err.std(0).round(6).tolist(),
        "mean": err.mean(0).round(6).tolist(),
        "frame_std": frame_err.std(0).round(6).tolist(),
        "frame_mean": frame_err.mean(0).round(6).tolist(),
        "estimator": estimator_to_dict(tracking),
        "reference": reference, "every": every,
        "samples": len(err), "sequences": len(sequences),
        "data": str(data), "data_manifest_sha256": sha256_file(Path(data) / MANIFEST),
        "seconds": round(time.time() - t0, 1),
    }


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


class EstimatedKeypoints(VectorWrapper):
    """Imagined keypoint observations as the real env makes them: frames' noisy keypoints through `estimator`.

    Each physics frame's keypoints (`KeyCLDVectorEnv.frame_keypoints`) get zero-mean
    Gaussian noise of std `frame_std` `(2K,)` (one real frame's measured encoder error) and
    go, with the actions, through the real env's estimator (a `Filtering`, one per env), so
    the agent sees errors with the real estimate's size and its structure over time (lag,
    correlation), not independent draws. An episode's first observation is its start state
    plus noise of std `start_std` `(4K,)` (the estimate's measured error), where the filter
    starts too.
    """

    def __init__(self, env: VectorEnv, estimator: Filtering, frame_std: np.ndarray, start_std: np.ndarray,
                 seed: int | None = None):
        super().__init__(env)
        self.sim = getattr(env.unwrapped, "sim", None)
        if self.sim is None or getattr(env.unwrapped, "obs_type", None) != "keypoints":
            raise ValueError("EstimatedKeypoints wraps a KeyCLDVectorEnv with obs_type='keypoints'")
        d = env.single_observation_space.shape[0]
        self.frame_std = torch.as_tensor(np.asarray(frame_std, np.float32))
        self.start_std = torch.as_tensor(np.asarray(start_std, np.float32))
        if self.frame_std.shape != (d // 2,) or self.start_std.shape != (d,):
            raise ValueError(f"frame_std must be ({d // 2},) and start_std ({d},), got {tuple(self.frame_std.shape)} "
                             f"and {tuple(self.start_std.shape)}")
        self.estimator = estimator.resolved(self.sim.model)  # read once, not at every reset
        self.sim.record_frames = True
        self.generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))

    def _noise(self, shape: tuple[int, ...], std: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator) * std

    def _noisy_start(self, obs: np.ndarray) -> torch.Tensor:
        """Episodes' first observations `(n, 4K)` as the estimate sees them: plus noise of `start_std`."""
        return torch.from_numpy(obs) + self._noise(obs.shape, self.start_std)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        self.filter = self.estimator.start(self.sim.model)
        self.filter.begin(self._noisy_start(obs), self.start_std)
        return self.filter.observation().numpy().astype(np.float32), info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        frames = self.sim.frame_keypoints.cpu()  # (N, R, K, 2)
        acts = torch.as_tensor(np.asarray(actions, np.float32)).reshape(len(obs), -1)
        for r in range(frames.shape[1]):
            self.filter.add(frames[:, r] + self._noise(frames[:, r].shape, self.frame_std.reshape(-1, 2)), acts)
        estimate = self.filter.observation().numpy().astype(np.float32)
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            final = info["final_obs"].copy()
            for i in done:
                final[i] = estimate[i]
            info = {**info, "final_obs": final}
            index = torch.from_numpy(done)
            self.filter.set_rows(index, self._noisy_start(obs[done]), self.start_std)
            estimate[done] = self.filter.observation()[index].numpy()
        return estimate, reward, terminated, truncated, info
