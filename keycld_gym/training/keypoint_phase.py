"""Phase 1 of training: the encoder and renderer learn keypoints from single frames.

The loss (`losses.reconstruction_loss`) is the reconstruction MSE with the foreground
weighted up, plus small terms against dead and doubled keypoints and for covering the
foreground with the keypoints and their links. The encoder's softmax runs over the
foreground only (`keycld_gym.model.encoder`): that is what finds the thin cartpole pole.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from keycld_gym.data.dataset import WindowDataset
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.training.config import TrainConfig
from keycld_gym.training.losses import reconstruction_loss

# Frames in the median image: enough for a stable background, cheap to take the median of.
_MEDIAN_FRAMES = 2000
_VAL_FRAMES = 128
_VAL_SEED = 12345


def random_frames(data: dict, n: int, rng: np.random.Generator) -> torch.Tensor:
    """`n` uint8 frames `(n, H, W, 3)` drawn at random from a data set's frames `(S, T, H, W, 3)`."""
    s, t = data["frames"].shape[:2]
    seq, idx = rng.integers(0, s, n), rng.integers(0, t, n)
    return torch.from_numpy(data["frames"][seq, idx])


def median_image(data: dict, seed: int) -> torch.Tensor:
    """The scene without its moving parts `(H, W, 3)` in [0, 1]: the median of a sample of the frames."""
    frames = data["frames"]
    flat = frames.reshape(-1, *frames.shape[2:])
    pick = np.random.default_rng(seed).choice(len(flat), min(_MEDIAN_FRAMES, len(flat)), replace=False)
    return torch.from_numpy(flat[np.sort(pick)]).float().div(255).median(0).values


class KeypointPhase:
    """Steps of phase 1 on `train`'s frames, drawing batches from the run's generator `rng`."""

    name = "keypoints"

    def __init__(self, model: KeyCLDModel, config: TrainConfig, train: WindowDataset, val: WindowDataset,
                 rng: np.random.Generator):
        self.model, self.config, self.train, self.val, self.rng = model, config, train, val, rng

    @property
    def total_steps(self) -> int:
        """Optimizer steps of this phase."""
        return self.config.keypoint_steps

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the encoder and renderer."""
        return torch.optim.Adam(self.model.keypoint_parameters(), lr=self.config.keypoint_lr)

    def learning_rate(self, step: int) -> float:
        """Adam's learning rate at `step`: cosine from `keypoint_lr` to `keypoint_lr * keypoint_lr_final` at the last step."""
        c = self.config
        progress = step / max(c.keypoint_steps - 1, 1)
        return c.keypoint_lr * (c.keypoint_lr_final + (1 - c.keypoint_lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """One optimizer step on a random batch of frames; returns the logged values."""
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        frames = random_frames(self.train.data, self.config.keypoint_batch, self.rng)
        loss, values = reconstruction_loss(self.model, frames, self.config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(optimizer.param_groups[0]["params"], self.config.grad_clip)
        optimizer.step()
        return values

    def extra_log(self, step: int) -> dict[str, float]:
        """The validation reconstruction error, every tenth log line."""
        if step % (10 * self.config.log_every):
            return {}
        return {"val_recon": self.validation_reconstruction()}

    @torch.no_grad()
    def validation_reconstruction(self) -> float:
        """Reconstruction MSE on a fixed sample of validation frames (training frames if there are none)."""
        data = self.val.data if self.val.num_sequences else self.train.data
        frames = random_frames(data, _VAL_FRAMES, np.random.default_rng(_VAL_SEED))
        target = frames.float() / 255.0
        return float(((self.model.render(self.model.encode(frames)) - target) ** 2).mean())

    def state(self) -> dict:
        """What an exact resume needs beyond the model and optimizer: nothing."""
        return {}

    def load_state(self, state: dict) -> None:
        """Inverse of `state`."""
