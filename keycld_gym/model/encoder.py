"""Keypoint encoder: frame -> K heatmaps -> spatial softmax -> keypoints in image units.

CPU-practical design (docs/method/measured-facts.md, "Keypoints from pixels", the prototype):
a stride-2 conv to half resolution, a
few 3x3 convs there, a 1x1 conv to K heatmaps, and a spatial softmax over the
half-resolution grid. With `EncoderConfig.full_resolution` the heatmaps come at the frame's
own resolution instead (measured on cartpole, same data and budget: keypoint error 0.70 px
RMS against 1.01, the pole tip's sub-pixel jitter 0.22 px against 0.34; BENCHMARKS.md).

The softmax runs over the foreground only: pixels that differ from the scene's background
(the data set's median image, a buffer of the model) by more than `foreground_threshold`
in some channel. Measured on the standard cartpole at 64x128 (2026-11-25): without the
mask, in each of 15 short runs (200 to 1,600 steps) with various losses (threshold 0.1 or 0.3, heatmap BCE, liveness
and coverage terms, 4 keypoints), the second keypoint ended dead on the background or
on the cart and the pole angle error stayed at chance (~1.7 rad); a heatmap peaked on a
background feature only gets gradients near its peak, so it never travels to the thin pole.
With the mask, cart and pole tip were found within 100 steps (pole angle 0.03-0.04 rad).
The threshold 0.3 keeps the orange cart and pole and drops the floor shadows (at 0.1, 37%
of the "foreground" was shadow).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from keycld_gym.sim.camera import pixels_to_image


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder settings.

    Attributes:
        channels: channels per conv.
        depth: 3x3 convs after the strided one.
        foreground_threshold: how far (max over channels, in [0, 1]) a pixel must differ from
            the background to be foreground; 0: no mask.
        full_resolution: heatmaps at the frame's resolution (a learned upsampling of the
            half-resolution features joined with a full-resolution view of the frame)
            instead of at half resolution.
        mask_ramp: width of a linear ramp below the threshold over which the mask fades
            in (0: a hard mask). A hard mask moves in whole cells as an edge pixel's
            anti-aliased value crosses the threshold; a ramp moves smoothly.
        coordinates: give the convs each pixel's image coordinates as two more input
            channels. Convolutions see only local appearance; a point that looks like its
            neighbours (the acrobot's elbow on a straight arm) is found only by where it is,
            for example its distance from the shoulder.
        constrained: place the keypoints on the spec's constraints by construction
            (`ConstraintSet.place`, with constants learned in the keypoint phase): each
            heatmap then only has to point along its link, from anywhere on it.
        read_beyond: a constrained keypoint's heatmap is read only beyond this fraction of
            its link's length from the link's start. Read anywhere, the acrobot's upper-arm
            heatmap settled 2-3 px from the shoulder, where a fraction of a pixel turns the
            arm by a tenth of a radian (0.39 rad RMS; BENCHMARKS.md).
        link_clearance: and not within this distance (image units) of the link placed
            before it: the acrobot's lower arm, folded back, lies beside the upper arm.
        mirror_average: encode each frame twice, as it is and mirrored left to right, and
            average the two keypoint sets (`KeyCLDModel.encode`; twice the cost, training
            unchanged). The encoder's errors on a frame and on its mirror image are partly
            independent, so the average is steadier. It needs a camera that looks straight
            at the system's plane of motion, centred on its symmetry (every spec's camera),
            and a keypoint whose identity survives the mirror: the placed keypoints do, free
            keypoints may not (a free pole keypoint was found 22 px off on the mirror image).
    """

    channels: int = 32
    depth: int = 3
    foreground_threshold: float = 0.3
    full_resolution: bool = False
    mask_ramp: float = 0.0
    coordinates: bool = False
    constrained: bool = False
    read_beyond: float = 0.5
    link_clearance: float = 0.08  # 2.6 px at 64 px height: the arm is 1.45 px wide
    mirror_average: bool = False


def image_grid(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Image coordinates of pixel centres `(H, W, 2)`: x right, y up, y in [-1, 1] over the height."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return pixels_to_image(torch.stack([cols, rows], -1), height, width)


def foreground_mask(frames: torch.Tensor, background: torch.Tensor, threshold: float, ramp: float = 0.0) -> torch.Tensor:
    """How much each pixel of frames `(B, H, W, 3)` (uint8 or [0, 1]) is foreground: `(B, H, W)` in [0, 1].

    1 where it differs from `background` `(H, W, 3)` by more than `threshold` in some channel;
    with a `ramp`, rising linearly from 0 at `threshold - ramp` (else 0 or 1 only).
    """
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    diff = (x - background).abs().amax(-1)
    if ramp <= 0:
        return (diff > threshold).float()
    return ((diff - threshold) / ramp + 1.0).clamp(0.0, 1.0)


def mask_heatmaps(heatmaps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Heatmap logits `(B, K, h, w)` weighted by the foreground `mask` `(B, H, W)` in [0, 1] (any resolution multiple).

    A cell takes its strongest pixel's weight w (the logit gains log w); cells without any
    foreground are pushed to -1e4. A frame without any foreground keeps its heatmaps as they are.
    """
    h, w = heatmaps.shape[-2:]
    cells = torch.nn.functional.adaptive_max_pool2d(mask[:, None].float(), (h, w))  # (B, 1, h, w)
    has_any = cells.flatten(1).amax(1) > 0
    weighted = torch.where(cells > 0, heatmaps + torch.log(cells.clamp(min=1e-12)), heatmaps - 1e4)
    return torch.where(has_any[:, None, None, None], weighted, heatmaps)


def spatial_softmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """Expected image position of each heatmap: `(..., K, h, w)` -> `(..., K, 2)`.

    The grid spans the whole frame whatever the heatmap resolution (cell centres of the
    coarser grid), so keypoints are in the same units as `image_grid` of the frame.
    """
    h, w = heatmaps.shape[-2:]
    grid = image_grid(h, w, heatmaps.device).to(heatmaps.dtype)  # (h, w, 2), in frame units
    probs = torch.softmax(heatmaps.flatten(-2), -1)  # (..., K, h*w)
    return probs @ grid.reshape(h * w, 2)


class KeypointEncoder(nn.Module):
    """uint8 or float frames `(B, H, W, 3)` -> keypoints `(B, K, 2)` (and heatmaps)."""

    def __init__(self, num_keypoints: int, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        c = config.channels
        self.coordinates = config.coordinates
        n_in = 5 if config.coordinates else 3
        layers: list[nn.Module] = [nn.Conv2d(n_in, c, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(config.depth):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        self.full_resolution = config.full_resolution
        if config.full_resolution:
            self.net = nn.Sequential(*layers)
            # thin at full resolution: the encoder runs on every real frame
            self.up = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), nn.ReLU())
            self.fine = nn.Sequential(nn.Conv2d(n_in, c // 2, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(2 * (c // 2), num_keypoints, 3, padding=1)
        else:
            # the original layout (bundled checkpoints' parameter names): the head ends `net`
            self.net = nn.Sequential(*layers, nn.Conv2d(c, num_keypoints, 1))
        self.num_keypoints = num_keypoints

    @property
    def output_conv(self) -> nn.Conv2d:
        """The conv whose output channels are the K heatmaps (reordering them reorders the keypoints)."""
        return self.head if self.full_resolution else self.net[-1]

    def heatmaps(self, frames: torch.Tensor) -> torch.Tensor:
        """Heatmap logits `(B, K, H/2, W/2)` of frames `(B, H, W, 3)` (uint8 0..255 or float 0..1); `(B, K, H, W)` at full resolution."""
        x = frames_to_input(frames)
        if self.coordinates:
            grid = image_grid(*x.shape[-2:], x.device).permute(2, 0, 1).expand(len(x), -1, -1, -1)
            x = torch.cat([x, grid], 1).contiguous(memory_format=torch.channels_last)
        if not self.full_resolution:
            return self.net(x)
        return self.head(torch.cat([self.up(self.net(x)), self.fine(x)], 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Keypoints `(B, K, 2)` of frames `(B, H, W, 3)`."""
        return spatial_softmax(self.heatmaps(frames))


def frames_to_input(frames: torch.Tensor) -> torch.Tensor:
    """`(B, H, W, 3)` uint8 or float frames -> float `(B, 3, H, W)` in [0, 1], channels-last memory."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (B, H, W, 3), got {tuple(frames.shape)}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
