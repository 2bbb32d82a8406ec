"""Renderer: keypoints -> one Gaussian blob each + a learned background map -> CNN -> RGB frame.

Everything but the keypoints (background, shadows, reflections) comes from the renderer's
own parameters: the learned constant feature map and the decoder's weights.

Beside the blobs, each rigid link that the system's constraints name is drawn as a Gaussian
line: between two keypoints at a fixed distance (the cartpole pole, ~1.7 px wide), and from
a learned pivot to a keypoint at a fixed distance from it (the pendulum's rod, the
acrobot's upper arm). The thin part is then drawn by a channel that moves with the
keypoints instead of by a decoder that must learn to join two distant blobs. On its own the line did
not make the pole findable (two runs, pole angle error at chance; `keycld_gym.model.encoder` says
what did); the measured and bundled configuration uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from keycld_gym.model.encoder import image_grid


@dataclass(frozen=True)
class RendererConfig:
    """Renderer settings.

    Attributes:
        sigma: Gaussian blob width in image units (0.1 as in the authors' code).
        background_channels: channels of the learned constant feature map.
        channels: decoder width.
        link_sigma: width of the line drawn along each rigid link (image units); 0: no lines.
        learn_pivots: learn where each pivoted link starts; False holds it at the image centre,
            where every spec's camera looks at the pivot.
        local: a decoder without spatial reach (pointwise layers, then the upsampling): it
            can only colour what the blobs and lines cover, so a link is drawn only where the
            keypoints put it (the default decoder can extend a line from a keypoint in the
            link's middle).
        compact: blobs and lines of compact support, (1 - d^2 / (2 sigma)^2)^2 out to twice
            their width and exactly zero beyond, instead of Gaussians: a decoder can
            threshold a Gaussian's tail at any radius and so paint a broad smear; with
            compact parts and `local`, nothing is drawn farther than 2 sigma from them.
        full_resolution: draw the blobs, lines and background at the frame's resolution and
            decode there, instead of at half resolution and upsampling: a half-resolution
            pole comes out about twice as thick as the real one, with dark halos.
    """

    sigma: float = 0.1
    background_channels: int = 8
    channels: int = 32
    link_sigma: float = 0.05
    learn_pivots: bool = True
    local: bool = False
    compact: bool = False
    full_resolution: bool = False


def part_kernel(d2: torch.Tensor, sigma: float, compact: bool = False) -> torch.Tensor:
    """A blob's or line's intensity at squared distance `d2`: a Gaussian, or of compact support (`RendererConfig.compact`)."""
    if compact:
        return torch.relu(1 - d2 / (2 * sigma) ** 2) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


def gaussian_maps(keypoints: torch.Tensor, height: int, width: int, sigma: float, compact: bool = False) -> torch.Tensor:
    """Blobs exp(-|grid - p_k|^2 / (2 sigma^2)) `(B, K, height, width)` of keypoints `(B, K, 2)` (`compact`: see `part_kernel`).

    The grid spans the whole frame at any resolution (cell centres), like `spatial_softmax`.
    """
    grid = image_grid(height, width, keypoints.device).to(keypoints.dtype)  # (h, w, 2)
    d2 = ((grid[None, None] - keypoints[:, :, None, None, :]) ** 2).sum(-1)
    return part_kernel(d2, sigma, compact)


def segment_distance2(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance of points `(..., 2)` to the segments from a to b (broadcast, `(..., 2)`): `(...)`."""
    d = b - a
    t = (((points - a) * d).sum(-1, keepdim=True) / ((d * d).sum(-1, keepdim=True) + 1e-6)).clamp(0, 1)
    return ((points - a - t * d) ** 2).sum(-1)


def line_maps(keypoints: torch.Tensor, links: list[tuple[int, int]], height: int, width: int, sigma: float,
              pivots: torch.Tensor | None = None, pivoted: Sequence[int] = (), compact: bool = False) -> torch.Tensor:
    """Gaussian lines along the rigid links of keypoints `(B, K, 2)`: `(B, len(links) + len(pivoted), height, width)`.

    First the segments between linked keypoints, then from each pivot `pivots[i]` `(P, 2)`
    to keypoint `pivoted[i]` (`compact`: see `part_kernel`).
    """
    grid = image_grid(height, width, keypoints.device).to(keypoints.dtype)[None]  # (1, h, w, 2)
    maps = [part_kernel(segment_distance2(grid, keypoints[:, a, None, None], keypoints[:, b, None, None]), sigma, compact)
            for a, b in links]
    maps += [part_kernel(segment_distance2(grid, pivots[i].to(keypoints.dtype), keypoints[:, k, None, None]), sigma, compact)
             for i, k in enumerate(pivoted)]
    return torch.stack(maps, 1)


class KeypointRenderer(nn.Module):
    """Keypoints `(B, K, 2)` -> frames `(B, H, W, 3)` in [0, 1] for an `H x W` image.

    `links`: pairs of keypoints joined by a rigid link; `pivoted`: keypoints joined by a rigid
    link to a pivot of their own (learned); both drawn as lines (see the module docstring).
    """

    def __init__(self, num_keypoints: int, height: int, width: int, config: RendererConfig = RendererConfig(),
                 links: list[tuple[int, int]] | tuple = (), pivoted: list[int] | tuple = ()):
        super().__init__()
        if height % 2 or width % 2:
            raise ValueError(f"frame size must be even, got {height}x{width}")
        self.config, self.height, self.width = config, height, width
        links = [tuple(link) for link in links] if config.link_sigma > 0 else []
        pivoted = [int(k) for k in pivoted] if config.link_sigma > 0 else []
        # buffers, so a reordering of the keypoints (model.permute_keypoints) is saved with the weights
        self.register_buffer("links", torch.tensor(links, dtype=torch.long).reshape(-1, 2))
        if pivoted:
            self.register_buffer("pivoted", torch.tensor(pivoted, dtype=torch.long))
            # where each pivoted link starts; the frontal cameras look at the pivot, so the centre
            self.pivots = nn.Parameter(torch.zeros(len(pivoted), 2), requires_grad=config.learn_pivots)
        self.num_keypoints = num_keypoints
        c, bg = config.channels, config.background_channels
        self.scale = 1 if config.full_resolution else 2  # the frame's size over the maps'
        self.background = nn.Parameter(torch.zeros(1, bg, height // self.scale, width // self.scale))
        n_in = num_keypoints + len(links) + len(pivoted) + bg
        if config.local:
            self.down = nn.Sequential(nn.Conv2d(n_in, c, 1), nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU())
            self.mid = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())
        else:
            self.down = nn.Sequential(nn.Conv2d(n_in, c, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
            self.mid = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                     nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.ReLU())
        if config.full_resolution:  # skip connection in
            self.up = nn.Conv2d(2 * c, 3, 1) if config.local else nn.Conv2d(2 * c, 3, 3, padding=1)
        else:
            self.up = nn.ConvTranspose2d(2 * c, 3, 4, stride=2, padding=1)

    def pivot_links(self) -> tuple[torch.Tensor | None, list[int]]:
        """The learned pivots `(P, 2)` and the keypoint each is linked to (None and [] without any)."""
        if not hasattr(self, "pivoted"):
            return None, []
        return self.pivots, self.pivoted.tolist()

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Frames `(B, H, W, 3)` in [0, 1] rendered from keypoints `(B, K, 2)`."""
        b = keypoints.shape[0]
        h, w = self.height // self.scale, self.width // self.scale
        maps = [gaussian_maps(keypoints, h, w, self.config.sigma, self.config.compact)]
        pivots, pivoted = self.pivot_links()
        if len(self.links) or pivoted:
            maps.append(line_maps(keypoints, self.links.tolist(), h, w, self.config.link_sigma, pivots, pivoted,
                                  self.config.compact))
        x = torch.cat([*maps, self.background.expand(b, -1, -1, -1)], 1)
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.down(x)
        out = self.up(torch.cat([h, self.mid(h)], 1))
        return torch.sigmoid(out).permute(0, 2, 3, 1)
