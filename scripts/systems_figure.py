"""Write docs/systems.png: each system's observation frames at a few states.

Usage: python scripts/systems_figure.py [--out docs/systems.png]
Cartpole is shown at both rail limits (pole pointing outward, the widest reach) and upright.
"""

from __future__ import annotations

import argparse

import numpy as np

from keycld_gym.data.preview import frame_grid, system_frames

PI = np.pi
STATES = {
    "cartpole": [([-2.06, -PI / 2], [0, 0]), ([0.0, PI], [0, 0]), ([0.0, 0.0], [0, 0]), ([2.06, PI / 2], [0, 0])],
    "pendulum": [([PI], [0]), ([PI / 2], [0]), ([0.0], [0]), ([-2.4], [0])],
    "acrobot": [([PI, 0.0], [0, 0]), ([PI / 2, 0.0], [0, 0]), ([0.0, 0.0], [0, 0]), ([-2.0, 1.5], [0, 0])],
}


def main(argv: list[str] | None = None) -> None:
    import imageio.v3 as iio

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/systems.png")
    args = parser.parse_args(argv)
    rows = []
    for name, states in STATES.items():
        frames = system_frames(name, states)
        if frames.shape[2] != 128:  # pad square frames to the cartpole's width, centred
            pad = (128 - frames.shape[2]) // 2
            frames = np.pad(frames, ((0, 0), (0, 0), (pad, pad), (0, 0)), constant_values=255)
        rows.append(frames)
    iio.imwrite(args.out, frame_grid(np.concatenate(rows), columns=4, scale=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
