"""The keypoint phase's losses: foreground-weighted reconstruction and the terms that keep keypoints on the parts.

Only about 2.5% of a cartpole frame is foreground; without weighting it up the thin pole is
ignored (docs/method/measured-facts.md, "Keypoints from pixels").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from keycld_gym.model.encoder import image_grid, spatial_softmax
from keycld_gym.model.keycld import KeyCLDModel, constraint_quantities
from keycld_gym.model.renderer import gaussian_maps, segment_distance2
from keycld_gym.training.config import TrainConfig


def foreground_weights(frames: torch.Tensor, median: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """Per-pixel loss weights `(B, H, W, 1)`: 1, plus `weight` where a frame differs from the median image."""
    diff = (frames - median).abs().amax(-1, keepdim=True)
    return 1.0 + weight * (diff > threshold).float()


def heatmap_sharpness_loss(heatmaps: torch.Tensor, keypoints: torch.Tensor, sigma: float) -> torch.Tensor:
    """BCE between max-normalised heatmaps `(B, K, h, w)` and stop-gradient blobs at keypoints `(B, K, 2)`."""
    probs = torch.softmax(heatmaps.flatten(-2), -1).reshape(heatmaps.shape)
    probs = probs / probs.amax((-2, -1), keepdim=True)
    target = gaussian_maps(keypoints.detach(), *heatmaps.shape[-2:], sigma)
    return torch.nn.functional.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), target)


def coverage_loss(q: torch.Tensor, foreground: torch.Tensor, links: list[tuple[int, int]], cutoff: float,
                  pivots: torch.Tensor | None = None, pivoted: Sequence[int] = ()) -> torch.Tensor:
    """How badly the keypoints and their links cover the foreground, a stick-figure Chamfer distance.

    q: keypoints `(B, K, 2)`; foreground: masks `(B, h, w)` in {0, 1} (pixels that differ from
    the median image); links: keypoint pairs joined by a rigid link; pivots `(P, 2)` and
    pivoted: the links from a learned pivot to a keypoint (`KeypointRenderer.pivot_links`). Two terms, squared
    image-unit distances truncated at `cutoff`**2 (shadows and reflections are foreground
    too): each foreground pixel to the nearest keypoint or link segment, and each keypoint to
    the nearest foreground pixel. Unlike the reconstruction's gradient, which reaches a
    keypoint only once the decoder has learned to draw with it, this pulls a link's free end
    along the thin part it should cover (the cartpole pole) from the first step.
    """
    h, w = foreground.shape[-2:]
    grid = image_grid(h, w, q.device).to(q.dtype).reshape(1, h * w, 2)  # (1, P, 2)
    fg = foreground.reshape(len(q), h * w).to(q.dtype)
    d2 = ((grid[:, :, None] - q[:, None]) ** 2).sum(-1)  # (B, P, K)
    dists = [d2]
    for a, b in links:
        dists.append(segment_distance2(grid, q[:, None, a], q[:, None, b])[..., None])
    for i, k in enumerate(pivoted):
        dists.append(segment_distance2(grid, pivots[i].to(q.dtype), q[:, None, k])[..., None])
    cap = cutoff**2
    nearest_part = torch.cat(dists, -1).amin(-1).clamp(max=cap)  # (B, P)
    cover = (fg * nearest_part).sum(1) / fg.sum(1).clamp(min=1)
    # not truncated: a keypoint far from all foreground (a dead one) is pulled onto it
    on_fg = torch.where(fg[:, :, None] > 0, d2, torch.full_like(d2, 100.0)).amin(1)  # (B, K)
    return (cover + on_fg.mean(1)).mean()


def constraint_consistency(q: torch.Tensor, constraints: Sequence, pivots: torch.Tensor | None = None,
                           pivoted: Sequence[int] = ()) -> torch.Tensor:
    """Summed variance over a batch of keypoints `(B, K, 2)` of each constraint's quantity (a height, a link length).

    Zero when the keypoints keep the system's constraints in every frame. A pivot link's
    length is measured to the renderer's learned pivot of that keypoint (`pivots` `(P, 2)`,
    `pivoted`). A keypoint that sits on the pivot keeps its own zero length, but then the
    link from it to the next keypoint (from the shoulder to the acrobot's tip) changes
    length: only keypoints on the elbow and the tip keep both.
    """
    pivot_of = {k: pivots[i] for i, k in enumerate(pivoted)}
    terms = [quantity.var() for quantity in constraint_quantities(q, constraints, pivot_of.get)]
    return torch.stack(terms).sum() if terms else q.new_zeros(())


def pivot_closeness(q: torch.Tensor, pivots: torch.Tensor | None, sigma: float) -> torch.Tensor:
    """Gaussian overlap of keypoints `(B, K, 2)` with the learned pivots `(P, 2)`: a keypoint on a fixed point carries no state.

    On the acrobot the link from the elbow keypoint folds back onto the upper arm when the
    tip keypoint sits on the shoulder: its length stays constant (the upper arm's), and the
    coverage loss, which pulls a segment's end only along pixels nearest to it, does not
    move it out along the lower arm.
    """
    if pivots is None:
        return q.new_zeros(())
    d2 = ((q[:, :, None] - pivots.to(q.dtype)[None, None]) ** 2).sum(-1)  # (B, K, P)
    return torch.exp(-d2 / (2 * sigma**2)).mean()


def keypoint_liveness(q: torch.Tensor, min_spread: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalties against dead and doubled keypoints, for keypoints `(B, K, 2)` of a batch of frames.

    spread: how far each keypoint's spread over the batch falls short of `min_spread` (a
    keypoint that sits still on the background explains nothing and gets almost no gradient);
    closeness: Gaussian overlap of keypoint pairs (two keypoints on the cart leave the pole
    unexplained). Both are zero for keypoints that track distinct moving parts.
    """
    spread = torch.relu(min_spread - q.std(0).norm(dim=-1)).sum()
    k = q.shape[1]
    if k < 2:
        return spread, q.new_zeros(())
    d2 = ((q[:, :, None] - q[:, None]) ** 2).sum(-1)  # (B, K, K)
    pairs = torch.triu(torch.ones(k, k, dtype=torch.bool, device=q.device), 1)
    return spread, torch.exp(-d2[:, pairs] / (2 * sigma**2)).mean()


def reconstruction_loss(model: KeyCLDModel, frames: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Foreground-weighted MSE (+ coverage, liveness and heatmap terms) of uint8 frames `(B, H, W, 3)`."""
    c = config
    heat = model.heatmaps(frames)
    q = model.keypoints(heat)
    target = frames.float() / 255.0
    recon = model.render(q)
    w = foreground_weights(target, model.background, c.foreground_weight, c.model.encoder.foreground_threshold)
    loss = (w * (recon - target) ** 2).mean()
    values = {"recon_weighted": loss.item(), "mse": ((recon - target) ** 2).mean().item()}
    if c.coverage_weight > 0:
        fg = (w[..., 0] > 1).float()[:, None]  # (B, 1, H, W)
        fg_half = torch.nn.functional.max_pool2d(fg, 2)[:, 0]
        cov = coverage_loss(q, fg_half, model.renderer.links.tolist(), c.coverage_cutoff, *model.renderer.pivot_links())
        loss = loss + c.coverage_weight * cov
        values["coverage"] = cov.item()
    if c.constraint_weight > 0:
        cons = constraint_consistency(q, model.spec.constraints, *model.renderer.pivot_links())
        loss = loss + c.constraint_weight * cons
        values["constraint_var"] = cons.item()
    if c.pivot_separation_weight > 0:
        near = pivot_closeness(q, model.renderer.pivot_links()[0], model.renderer.config.sigma)
        loss = loss + c.pivot_separation_weight * near
        values["pivot_closeness"] = near.item()
    if c.spread_weight > 0 or c.separation_weight > 0:
        spread, close = keypoint_liveness(q, c.min_spread, model.renderer.config.sigma)
        loss = loss + c.spread_weight * spread + c.separation_weight * close
        values["dead_spread"], values["closeness"] = spread.item(), close.item()
    if c.heatmap_weight > 0:
        h = heatmap_sharpness_loss(heat, spatial_softmax(heat), model.renderer.config.sigma)
        loss = loss + c.heatmap_weight * h
        values["heatmap_bce"] = h.item()
    return loss, values
