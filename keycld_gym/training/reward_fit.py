"""Refitting a model's reward head on estimated states: `keycld-gym fit-reward`.

The dynamics phase trains the reward head on the model's own rollouts, whose states drift
from the truth as the horizon grows. Measured on the bundled cartpole model: reward RMSE
0.088 per physics step on held-out data, and the head all but ignored the task's centring
term (upright near the rail stop predicted 0.85-0.9 where the task pays 0.5-0.6), so an
agent trained in imagination let the cart drift to the stop and the pole fall. Here the
head is fitted, with the rest of the model frozen, on the states that shooting estimates
from short windows of the training sequences (as the real keypoint env estimates them).
Reward t belongs to arriving at state t + 1 under action t.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import is_validation, iter_sequences
from keycld_gym.files import sha256_file
from keycld_gym.model.estimation import fit_trajectory
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import WINDOWS


def window_samples(model: KeyCLDModel, data: str | Path, *, window: int | None = None, every: int = 8,
                   val_fraction: float = 0.1, chunk: int = 512) -> dict[str, dict[str, torch.Tensor]]:
    """Reward-head samples of a data set, split by sequence: {"train"|"val": {"x": (N, 4K + A), "r": (N,)}}.

    x is the estimated state the system arrives at and the action that took it there.
    """
    if window is None:
        window = model.spec.frames(WINDOWS.smoothing)
    kps, acts, rews, val = [], [], [], []
    for seq in iter_sequences(data, model.spec.name):
        frames, actions, rewards = seq["frames"], seq["actions"], seq["rewards"]
        kp = model.encode_frames(frames)
        for t in range(0, len(frames) - window + 1, every):
            kps.append(kp[t: t + window])
            acts.append(torch.from_numpy(actions[t: t + window - 1].astype(np.float32)))
            rews.append(torch.from_numpy(rewards[t: t + window - 1].astype(np.float32)))
            val.append(is_validation(seq["sequence_ids"], val_fraction))
    xs = []
    for i in range(0, len(kps), chunk):
        a = torch.stack(acts[i: i + chunk])
        qs, vs = fit_trajectory(model, torch.stack(kps[i: i + chunk]), a)
        # arrival states 1..window-1 with the actions 0..window-2 that led there
        xs.append(torch.cat([qs[:, 1:].flatten(2), vs[:, 1:].flatten(2), a], -1))
    x, r, v = torch.cat(xs), torch.stack(rews), torch.tensor(val)
    return {name: {"x": x[mask].flatten(0, 1), "r": r[mask].flatten()} for name, mask in (("train", ~v), ("val", v))}


def fit_reward_head(model: KeyCLDModel, data: list[str | Path], *, steps: int = 4000, batch: int = 1024,
                    lr: float = 1e-3, seed: int = 0, progress: bool = True, **window_kwargs: Any) -> dict[str, Any]:
    """Fit `model.reward_net` (in place) on the training sequences of `data`; returns RMSEs before and after."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    parts = [window_samples(model, d, **window_kwargs) for d in data]
    train = {k: torch.cat([p["train"][k] for p in parts]) for k in ("x", "r")}
    val = {k: torch.cat([p["val"][k] for p in parts]) for k in ("x", "r")}
    k = model.spec.num_keypoints

    def rmse(split: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            x = split["x"]
            pred = model.reward(x[:, : 2 * k].reshape(-1, k, 2), x[:, 2 * k: 4 * k].reshape(-1, k, 2), x[:, 4 * k:])
            return float(((pred - split["r"]) ** 2).mean().sqrt())

    before = {"train": rmse(train), "val": rmse(val)}
    opt = torch.optim.Adam(model.reward_net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x, r = train["x"], train["r"]
    for _ in tqdm(range(steps), desc="fit-reward", disable=not progress):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        xb = x[idx]
        pred = model.reward(xb[:, : 2 * k].reshape(-1, k, 2), xb[:, 2 * k: 4 * k].reshape(-1, k, 2), xb[:, 4 * k:])
        loss = ((pred - r[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    after = {"train": rmse(train), "val": rmse(val)}
    return {
        "rmse_before": before, "rmse_after": after, "samples": {"train": len(x), "val": len(val["x"])},
        "data": [{"path": str(d), "manifest_sha256": sha256_file(Path(d) / MANIFEST)} for d in data],
        "window": window_kwargs.get("window") or model.spec.frames(WINDOWS.smoothing), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
        "wall_time_s": round(time.time() - t0, 1),
    }
