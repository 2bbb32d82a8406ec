"""Pixel agents through the world model's keypoint encoder: frames -> keypoints, per step.

A pixel policy that learns its own CNN in imagination (SB3's NatureCNN on stacked frames)
learned nothing in the 12 minutes a CPU gives it (real return 75, BENCHMARKS.md). The
world model already holds a CNN that reads these frames: its keypoint encoder, trained on
real frames. A pixel agent with ``features="keycld-encoder"`` sees every frame, imagined or
real, through that frozen encoder (as the Transporter paper, Kulkarni et al. 2019, fed
unsupervised keypoints to RL agents) and its policy is an MLP on the last `frame_stack`
frames' keypoints, so the velocities come from the frames alone, with no dynamics model
or tracker on the real side.

The encoder runs once per frame as the frame arrives (`VecEncodeFrames`), not inside the
policy: off-policy training would otherwise re-encode every replayed frame at every
gradient step (about 1 ms a frame on a CPU core, five passes of 3 x 256 frames per step),
and the replay buffer would hold frames (73 kB each) instead of 12 numbers.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from keycld_gym.model.keycld import KeyCLDModel


class VecEncodeFrames(VecEnvWrapper):
    """uint8 frames `(N, H, W, 3)` of an SB3 VecEnv -> the model's keypoints of each, float32 `(N, 2K)`.

    `noise_std` `(2K,)`: Gaussian noise added to the keypoints (in imagination: the real
    frames' measured encoder error, `observation_noise.json`'s `frame_std`).
    """

    def __init__(self, venv: VecEnv, model: KeyCLDModel, noise_std: np.ndarray | None = None, seed: int | None = None):
        space = venv.observation_space
        if not isinstance(space, spaces.Box) or space.dtype != np.uint8 or tuple(space.shape) != model.spec.image_shape:
            raise ValueError(f"VecEncodeFrames needs uint8 frames of shape {model.spec.image_shape} "
                             f"({model.spec.name}'s camera), got {space}")
        self.model = model
        k = model.spec.num_keypoints
        # keypoints live in image units: y in [-1, 1], x in [-W/H, W/H]
        bound = float(model.spec.image_shape[1]) / model.spec.image_shape[0]
        super().__init__(venv, observation_space=spaces.Box(-bound, bound, (2 * k,), np.float32))
        if noise_std is not None:
            noise_std = np.asarray(noise_std, np.float32)
            if noise_std.shape != (2 * k,):
                raise ValueError(f"noise_std must have shape ({2 * k},) (one per keypoint coordinate), got {noise_std.shape}")
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Keypoints float32 `(N, 2K)` of uint8 frames `(N, H, W, 3)`."""
        kp = self.model.encode_frames(np.asarray(frames)).flatten(1).numpy()
        if self.noise_std is not None:
            kp = kp + self.rng.normal(size=kp.shape) * self.noise_std
        return kp.astype(np.float32)

    def reset(self) -> np.ndarray:
        return self.encode(self.venv.reset())

    def step_wait(self):
        frames, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self.encode(info["terminal_observation"][None])[0]
        return self.encode(frames), rewards, dones, infos
