"""Measure a model's real keypoint-estimate error and store it beside its weights.

    python scripts/observation_noise.py --checkpoint keycld_gym/weights/cartpole --data data/cartpole-eval

The causal 17-frame estimate (what `RealKeypointEnv` gives a policy) against a centred
33-frame reference on held-out real sequences; the per-coordinate standard deviations are
what `KeypointNoise` adds to imagined keypoint observations when an agent recipe asks for
observation noise "measured"; one frame's encoder error against the same reference
(`frame_std`) is what a keycld-encoder pixel agent's imagined keypoints get. Use data the
model never trained on.
"""

from __future__ import annotations

import argparse
import json

import torch

from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.rl.observation_noise import measure_estimation_error, write_noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model folder (or a bundled name); the result is written into it")
    parser.add_argument("--data", required=True, help="held-out real sequences (a collected data set)")
    parser.add_argument("--max-sequences", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder to write observation_noise.json to (default: the checkpoint)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    result = measure_estimation_error(model, args.data, max_sequences=args.max_sequences)
    k = model.spec.num_keypoints
    print(json.dumps({"position_std": result["std"][: 2 * k], "velocity_std": result["std"][2 * k:],
                      "frame_std": result["frame_std"],
                      "samples": result["samples"], "seconds": result["seconds"]}))
    folder = args.out or checkpoint_folder(args.checkpoint)
    path = write_noise(folder, result)
    print("wrote", path)


if __name__ == "__main__":
    main()
