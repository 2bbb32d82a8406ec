"""The pipeline's keypoint phase, checked: a phase whose keypoints miss a body is trained again with another seed.

Keypoints learned without labels settle where the training's seed leads them; on a hard scene
one seed can leave a body unfound (cartpole's pole, on 9,950 training frames; BENCHMARKS.md,
"The data-efficiency curve"), and every later step inherits the miss. The pipeline's data
come from the simulator, whose joint positions every shard records, so the finished phase
is scored against the true bodies on held-out frames: the keypoint error in pixels against
the point each keypoint tracks on its body (`diagnostics.tracked_point_error`). Where that
error passes the recipe's limit, the phase is trained again with the next seed of
`attempt_seed`, up to the recipe's number of attempts; the first attempt within the limit
is the one the dynamics phase builds on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from keycld_gym.analysis import diagnostics
from keycld_gym.analysis.evaluation import keypoint_state_metrics
from keycld_gym.model.keycld import KeyCLDModel

# far from any seed the recipes or `pipeline --seed` use for a whole run, so a retry of seed s
# never repeats the first attempt of a run of seed s + 1
SEED_STRIDE = 1000
# every 25th held-out frame: 1,600 frames of the recipes' 40 x 1,000, seconds to encode
EVERY = 25


def attempt_seed(seed: int, attempt: int) -> int:
    """The training seed of a keypoint phase's `attempt` (0 first) in a run of `seed`."""
    return seed + SEED_STRIDE * attempt


def attempt_folder(out: str | Path, attempt: int) -> Path:
    """Where a pipeline run's keypoint attempt trains: OUT/keypoints, then OUT/keypoints-2, -3, ..."""
    return Path(out) / ("keypoints" if attempt == 0 else f"keypoints-{attempt + 1}")


def score_keypoints(model: KeyCLDModel, data: str | Path, every: int = EVERY) -> dict[str, Any]:
    """A keypoint model against the true bodies on every `every`-th frame of held-out `data`.

    `rms_px`: the error against the point each keypoint tracks, after one affine map (pixels);
    `state`: link angles (rad) and rail positions read from the keypoints against the joints.
    Unconstrained keypoints are put in the constraints' order first, as the dynamics phase
    puts them.
    """
    samples = diagnostics.true_keypoint_samples(model, data, every=every)
    keypoints = samples.keypoints[:, model.keypoint_order(torch.from_numpy(samples.keypoints))]
    kmap = diagnostics.tracked_keypoint_map(model, keypoints, samples.points)
    error = diagnostics.tracked_point_error(model, keypoints, samples.points, kmap)
    return {"rms_px": round(error["rms_px"], 4), "per_keypoint_rms_px": error["per_keypoint_rms_px"],
            "state": {k: round(v, 5) for k, v in keypoint_state_metrics(keypoints, samples.qpos, model.spec).items()},
            "frames": len(keypoints)}
