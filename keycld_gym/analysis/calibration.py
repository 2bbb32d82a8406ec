"""Does the ensemble know where it is wrong? Its disagreement against the model's actual error, held out.

On held-out real sequences, every member predicts open loop from the same start state (the
model's estimate from the start window) under the recorded actions. At each agent step the
members' disagreement (`DynamicsEnsemble.disagreement`, pixels) is set beside the model's
actual keypoint error: member 0's (the model's own) predicted keypoints against the keypoints
its encoder reads off the real frame at that time (pixels). Reported:

- `spearman_pooled`: rank correlation over every (sequence, step) pair. Both quantities grow
  with the horizon, so this one credits the ensemble for knowing that time passes;
- `spearman_within_step_median`: the rank correlation across sequences at one step, median
  over the steps: does the ensemble tell the sequences it predicts badly from the good ones?
- the VPT against the step where the disagreement first passes a level: the level is the
  median disagreement at the steps where the sequences' VPT ends, and `spearman_vpt` ranks the
  sequences' VPT against their disagreement times (and `median_abs_steps` their distance).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from keycld_gym.model.keycld import KeyCLDModel


@torch.no_grad()
def ensemble_predictions(model: KeyCLDModel, q: torch.Tensor, v: torch.Tensor, actions: torch.Tensor,
                         times: list[int]) -> torch.Tensor:
    """Every member's open-loop keypoints `(M, S, len(times), K, 2)` from states `(S, K, 2)` under physics-rate actions `(S, T, A)`."""
    members = model.ensemble.size
    qa, va = q.expand(members, *q.shape), v.expand(members, *v.shape)
    want, out = set(times), []
    for t in range(1, max(times) + 1):
        qa, va = model.ensemble.step(qa, va, actions[:, t - 1])
        if t in want:
            out.append(qa)
    return torch.stack(out, 2)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def calibration(model: KeyCLDModel, members_q: torch.Tensor, observed: torch.Tensor, vpt: np.ndarray) -> dict[str, Any]:
    """The disagreement of predictions `(M, S, T, K, 2)` against member 0's error to observed keypoints `(S, T, K, 2)`.

    `vpt`: each sequence's valid prediction time in the same steps `(S,)`. See the module docstring.
    """
    pixels = model.spec.image_shape[0] / 2
    spread = model.ensemble.disagreement(members_q).numpy()  # (S, T)
    error = ((members_q[0] - observed).norm(dim=-1).mean(-1) * pixels).numpy()  # (S, T)
    steps = spread.shape[1]
    within = [r for t in range(steps) if (r := _spearman(spread[:, t], error[:, t])) is not None]
    ends = np.clip(vpt.astype(int), 0, steps - 1)  # the first invalid step (0-based) of each sequence
    level = float(np.median(spread[np.arange(len(vpt)), ends]))
    passed = spread > level
    crossing = np.where(passed.any(1), passed.argmax(1), steps)
    return {
        "members": model.ensemble.size, "units": "pixels", "sequences": int(spread.shape[0]), "steps": steps,
        "spearman_pooled": _spearman(spread.ravel(), error.ravel()),
        "spearman_within_step_median": float(np.median(within)) if within else None,
        "disagreement_median_by_step": np.median(spread, 0).round(4).tolist(),
        "error_median_by_step": np.median(error, 0).round(4).tolist(),
        "level": level,
        "spearman_vpt": _spearman(vpt.astype(float), crossing.astype(float)),
        "median_abs_steps": float(np.median(np.abs(crossing - vpt))),
    }
