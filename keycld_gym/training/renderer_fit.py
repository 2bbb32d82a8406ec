"""Refitting a model's renderer so its frames read back as the state they show: `keycld-gym fit-renderer`.

The keypoint phase trains encoder and renderer for reconstruction only. Measured on the
bundled cartpole model (2026-12-01): an imagined frame read back through the encoder
misses the keypoints it was drawn from by 0.05 RMS at the pole tip's x (the encoder on real
frames: 0.008 against the true state), and by up to 0.5 when the pole lies near
horizontal, where the tip keypoint falls onto the cart. A pixel agent in imagination then
sees a pole several times noisier than the real one. Here the renderer alone is fitted,
the encoder frozen, on keypoints q of the training frames, to

    foreground-weighted reconstruction MSE (as in training) + weight * |encode(render(q)) - q|^2

with the second term's gradient reaching the renderer through the frozen encoder. The
encoder, dynamics and reward head are untouched, so everything that runs on keypoints (the
keypoint env, the real state estimate, keypoint agents) is unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import split_sequences
from keycld_gym.files import sha256_file
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.parameters import frozen
from keycld_gym.training.config import TrainConfig
from keycld_gym.training.losses import foreground_weights


def split_frames(data: list[str | Path], system: str, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames `(N, H, W, 3)` of the training and of the validation sequences of the data sets (each read once)."""
    train, val = [], []
    for d in data:
        t, v = split_sequences(d, system, val_fraction)
        train.append(t["frames"].reshape(-1, *t["frames"].shape[2:]))
        val.append(v["frames"].reshape(-1, *v["frames"].shape[2:]))
    return np.concatenate(train), np.concatenate(val)


@torch.no_grad()
def render_scores(model: KeyCLDModel, frames: np.ndarray, batch: int = 256) -> dict[str, Any]:
    """Of frames uint8 `(N, H, W, 3)`: reconstruction MSE, and the RMS per keypoint coordinate `(2K,)`
    and largest error of encode(render(q)) - q with q the frames' keypoints."""
    sq, mse, worst = [], [], 0.0
    for i in range(0, len(frames), batch):
        f = torch.from_numpy(frames[i: i + batch])
        q = model.encode(f)
        recon = model.render(q)
        err = model.encode(recon) - q
        sq.append((err ** 2).flatten(1))
        mse.append(((recon - f.float() / 255.0) ** 2).mean((1, 2, 3)))
        worst = max(worst, float(err.abs().max()))
    per_coord = torch.cat(sq).mean(0).sqrt()
    return {"reencode_rms": [round(float(x), 5) for x in per_coord], "reencode_max": round(worst, 4),
            "recon_mse": round(float(torch.cat(mse).mean()), 6)}


def fit_renderer(model: KeyCLDModel, data: list[str | Path], *, steps: int = 1000, batch: int = 32, lr: float = 3e-4,
                 weight: float = 10.0, foreground_weight: float = TrainConfig.foreground_weight,
                 val_fraction: float | None = None, fresh_renderer: dict[str, Any] | None = None, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Fit `model.renderer` (in place) on the training sequences of `data`; returns its scores before and after.

    `fresh_renderer`: fit a fresh renderer in its place, of the model's renderer settings with
    these changes (`{}`: the same settings; `KeyCLDModel.replace_renderer`); `fresh` then
    scores it untrained.

    The split is the model's own (`val_fraction`, default: the one it was trained with), so
    its validation sequences stay held out. Scores are on (up to 2,048) frames of the
    validation sequences, on training frames if the data sets have none (`scored_on` says which).
    """
    t0 = time.time()
    if val_fraction is None:
        val_fraction = float(model.checkpoint_config.get("data", {}).get("val_fraction", 0.1))
    gen = torch.Generator().manual_seed(seed)
    train, val = split_frames(data, model.spec.name, val_fraction)
    if len(train) == 0:
        raise ValueError(f"no training sequences in {[str(d) for d in data]}")
    scored_on = "val" if len(val) else "train"  # a tiny data set may hold no validation sequence
    val = val if len(val) else train
    val = val[np.random.default_rng(seed).choice(len(val), min(2048, len(val)), replace=False)]
    before = render_scores(model, val)
    fresh = None
    if fresh_renderer is not None:
        model.replace_renderer(dataclasses.replace(model.config.renderer, **fresh_renderer))
        fresh = render_scores(model, val)
    threshold = model.config.encoder.foreground_threshold
    opt = torch.optim.Adam(model.renderer.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    # the encoder is frozen: each frame's keypoints are read once, when first drawn (the
    # encoder, not the renderer, is most of a step's cost)
    keypoints = torch.full((len(train), model.spec.num_keypoints, 2), math.nan)
    # the read-back's gradient passes through the encoder, not into it
    with frozen(model):
        model.renderer.requires_grad_(True)
        for _ in tqdm(range(steps), desc="fit-renderer", disable=not progress):
            idx = torch.randint(0, len(train), (batch,), generator=gen)
            f = torch.from_numpy(train[idx.numpy()])
            unread = idx[keypoints[idx, 0, 0].isnan()].unique()
            if len(unread):
                with torch.no_grad():
                    keypoints[unread] = model.encode(torch.from_numpy(train[unread.numpy()]))
            target = f.float() / 255.0
            q = keypoints[idx]
            recon = model.render(q)
            w = foreground_weights(target, model.background, foreground_weight, threshold)
            loss = (w * (recon - target) ** 2).mean()
            if weight:  # the read-back runs the encoder on every step: skipped when it counts for nothing
                loss = loss + weight * ((model.encode(recon) - q) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return {
        "before": before, "after": render_scores(model, val), "scored_on": scored_on, "scored_frames": len(val),
        "train_frames": len(train),
        "data": [{"path": str(d), "manifest_sha256": sha256_file(Path(d) / MANIFEST)} for d in data],
        "fresh_renderer": fresh_renderer, "fresh": fresh,
        "steps": steps, "batch": batch, "lr": lr, "weight": weight, "foreground_weight": foreground_weight,
        "seed": seed, "wall_time_s": round(time.time() - t0, 1),
    }
