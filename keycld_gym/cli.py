"""The `keycld-gym` command line: thin wrappers over the package's functions."""

from __future__ import annotations

import argparse
import sys

from keycld_gym.systems import SYSTEMS


def _collect(args: argparse.Namespace) -> int:
    from keycld_gym.collect import CollectConfig, collect, default_command

    config = CollectConfig(
        system=args.system, episodes=args.episodes, frames=args.frames, seed=args.seed,
        regime=args.regime, shard_size=args.shard_size,
    )
    manifest = collect(args.out, config, workers=args.workers, progress=not args.quiet, command=default_command())
    print(
        f"{manifest['system']}: {manifest['sequences']} sequences x {manifest['frames_per_sequence']} frames "
        f"= {manifest['frames']} real frames, regime '{manifest['regime']}' ({manifest['regime_description']}), "
        f"frame interval {manifest['physics_dt']} s -> {args.out}"
    )
    return 0


def _preview(args: argparse.Namespace) -> int:
    from keycld_gym.preview import dataset_preview

    path = dataset_preview(args.data, args.out, sequences=args.sequences, frames=args.frames, stride=args.stride)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keycld-gym`."""
    parser = argparse.ArgumentParser(prog="keycld-gym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="collect real frames, actions, rewards and states from dm_control")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--out", required=True, help="data set folder (rerun the same command to resume)")
    p.add_argument("--episodes", type=int, required=True, help="sequences to collect, one per episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=100, help="frames per sequence, at the physics rate")
    p.add_argument("--regime", choices=("task", "states"), default="task",
                   help="task: the task's own reset + exploration; states: start states set across the state space")
    p.add_argument("--workers", type=int, default=1, help="parallel collection processes")
    p.add_argument("--shard-size", type=int, default=10, help="sequences per shard file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_collect)

    p = sub.add_parser("preview", help="write a PNG of a data set's frames")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--stride", type=int, default=8, help="physics steps between shown frames")
    p.set_defaults(func=_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keycld-gym` console script."""
    from keycld_gym.errors import KeyCLDError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyCLDError, FileNotFoundError, ValueError) as err:
        print(f"keycld-gym {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
