"""Renderer: keypoints -> one Gaussian blob each + a learned background map -> CNN -> RGB frame.

Everything but the keypoints (background, shadows, reflections) comes from the renderer's
own parameters: the learned constant feature map and the decoder's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from keycld_gym.encoder import image_grid


@dataclass(frozen=True)
class RendererConfig:
    """Renderer settings.

    Attributes:
        sigma: Gaussian blob width in image units (0.1 as in the authors' code).
        background_channels: channels of the learned constant feature map.
        channels: decoder width.
    """

    sigma: float = 0.1
    background_channels: int = 8
    channels: int = 32


def gaussian_maps(keypoints: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Blobs exp(-|grid - p_k|^2 / (2 sigma^2)) `(B, K, height, width)` of keypoints `(B, K, 2)`.

    The grid spans the whole frame at any resolution (cell centres), like `spatial_softmax`.
    """
    grid = image_grid(height, width, keypoints.device).to(keypoints.dtype)  # (h, w, 2)
    d2 = ((grid[None, None] - keypoints[:, :, None, None, :]) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * sigma**2))


class KeypointRenderer(nn.Module):
    """Keypoints `(B, K, 2)` -> frames `(B, H, W, 3)` in [0, 1] for an `H x W` image."""

    def __init__(self, num_keypoints: int, height: int, width: int, config: RendererConfig = RendererConfig()):
        super().__init__()
        if height % 2 or width % 2:
            raise ValueError(f"frame size must be even, got {height}x{width}")
        self.config, self.height, self.width = config, height, width
        c, bg = config.channels, config.background_channels
        self.background = nn.Parameter(torch.zeros(1, bg, height // 2, width // 2))
        self.down = nn.Sequential(nn.Conv2d(num_keypoints + bg, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                 nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * c, 3, 4, stride=2, padding=1)  # skip connection in

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Frames `(B, H, W, 3)` in [0, 1] rendered from keypoints `(B, K, 2)`."""
        b = keypoints.shape[0]
        blobs = gaussian_maps(keypoints, self.height // 2, self.width // 2, self.config.sigma)
        x = torch.cat([blobs, self.background.expand(b, -1, -1, -1)], 1)
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.down(x)
        out = self.up(torch.cat([h, self.mid(h)], 1))
        return torch.sigmoid(out).permute(0, 2, 3, 1)
