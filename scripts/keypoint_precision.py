"""The keypoint phase alone, with an encoder variant, scored in pixels against the true bodies.

    python scripts/keypoint_precision.py --system cartpole --data DATA --eval HELD_OUT --out OUT \
        [--full-resolution] [--mask-ramp 0.15] [--coordinates] [--constrained] [--fixed-pivots] [--local-renderer] \
        [--steps 1500] [--renderer sigma=0.04 ...] [--train constraint_weight=1 ...]

Trains the system recipe's keypoint phase (`dynamics_steps=0`) on DATA, with the recipe's
settings except the encoder's `full_resolution`, `mask_ramp`, `coordinates` and `constrained`
(`EncoderConfig`), the renderer's `learn_pivots`, `local` and any field given by
`--renderer`, and any `TrainConfig` field given by `--train`. The keypoints are then put in the order that best keeps the
constraints (`keypoint_order`, as the dynamics phase does first; constrained keypoints are
in that order already), and the encoder is scored
on every 5th frame of HELD_OUT: the error against the true bodies after one affine map
(`diagnostics.keypoint_error`), the response to sub-pixel shifts
(`diagnostics.subpixel_response`), and the link angles as `keycld-gym evaluate-model`
measures them. Prints and writes OUT/keypoint_precision.json. A rerun resumes an
interrupted training, or only scores a finished one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from keycld_gym.analysis import diagnostics
from keycld_gym.analysis.evaluation import keypoint_state_metrics
from keycld_gym.data.dataset import iter_sequences
from keycld_gym.model.checkpoint import load_model
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.training.recipes import RECIPES, get_recipe
from keycld_gym.training.trainer import Trainer

EVERY = 5  # score every 5th held-out frame


def parse_overrides(items: list[str]) -> dict:
    """`FIELD=VALUE` strings -> {field: JSON value}."""
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected FIELD=VALUE, got {item!r}")
        out[field] = json.loads(value)
    return out


def training_keypoints(model: KeyCLDModel, data: str, frames: int = 2000) -> np.ndarray:
    """Encoded keypoints `(N, K, 2)` of every 5th frame of the first sequences of a training data set."""
    out, n = [], 0
    for seq in iter_sequences(data, model.spec.name):
        out.append(model.encode_frames(seq["frames"][::EVERY]).numpy())
        n += len(out[-1])
        if n >= frames:
            break
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(RECIPES), default="cartpole")
    parser.add_argument("--data", required=True, help="training data set (keypoint phase)")
    parser.add_argument("--eval", required=True, help="held-out data set (another seed)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--full-resolution", action="store_true", help="heatmaps at the frame's resolution")
    parser.add_argument("--mask-ramp", type=float, default=0.0, help="the foreground mask's ramp (0: hard)")
    parser.add_argument("--steps", type=int, default=None, help="keypoint steps (default: the recipe's)")
    parser.add_argument("--fixed-pivots", action="store_true", help="hold pivoted links' pivots at the image centre")
    parser.add_argument("--local-renderer", action="store_true", help="a decoder without spatial reach")
    parser.add_argument("--coordinates", action="store_true", help="pixel coordinates as encoder input channels")
    parser.add_argument("--constrained", action="store_true", help="keypoints placed on the constraints by construction")
    parser.add_argument("--renderer", action="append", default=[], metavar="FIELD=VALUE",
                        help="a RendererConfig field (a JSON value), e.g. sigma=0.04; repeatable")
    parser.add_argument("--train", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field (a JSON value), e.g. constraint_weight=1; repeatable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = get_recipe(args.system)
    encoder = dataclasses.replace(recipe.model.encoder, full_resolution=args.full_resolution, mask_ramp=args.mask_ramp,
                                  coordinates=args.coordinates, constrained=args.constrained)
    renderer = dataclasses.replace(recipe.model.renderer, learn_pivots=not args.fixed_pivots, local=args.local_renderer,
                                   **parse_overrides(args.renderer))
    model = dataclasses.replace(recipe.model, encoder=encoder, renderer=renderer)
    train_overrides = parse_overrides(args.train)
    overrides = {"dynamics_steps": 0, "seed": args.seed, **train_overrides}
    if args.steps is not None:
        overrides["keypoint_steps"] = args.steps
    config = dataclasses.replace(recipe.train_config(args.data, **overrides), model=model)
    out = Path(args.out)
    started = time.time()
    # an interrupted run continues; a finished one is only scored
    Trainer(config, out, command="scripts/keypoint_precision.py", progress=False).run(resume=True)
    train_s = time.time() - started

    trained = load_model(out / "model")
    order = trained.keypoint_order(torch.from_numpy(training_keypoints(trained, args.data)))
    trained.permute_keypoints(order)
    started = time.time()
    keypoints, points, sampled, qpos = diagnostics.true_keypoint_samples(trained, args.eval, every=EVERY)
    encode_s = time.time() - started
    kmap = diagnostics.fit_keypoint_map(keypoints, points)
    result = {
        "system": args.system, "data": args.data, "eval": args.eval, "encoder": dataclasses.asdict(encoder),
        "renderer": dataclasses.asdict(renderer), "train_overrides": train_overrides,
        "keypoint_order": order, "keypoint_steps": config.keypoint_steps, "train_s": round(train_s, 1),
        "encode_ms_per_frame": round(1000 * encode_s / len(keypoints), 3),
        "error": diagnostics.keypoint_error(trained, keypoints, points, kmap),
        "tracked": diagnostics.tracked_point_error(trained, keypoints, points,
                                                   diagnostics.tracked_keypoint_map(trained, keypoints, points)),
        "state": keypoint_state_metrics(keypoints, sampled, trained.spec),
        "subpixel": diagnostics.subpixel_response(trained, qpos, kmap),
    }
    print(json.dumps(result, indent=1))
    (out / "keypoint_precision.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
