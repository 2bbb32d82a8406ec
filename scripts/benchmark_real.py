"""Benchmark the real side: real-env steps/s with and without pixels, and collection frames/s.

Usage:
    python scripts/benchmark_real.py --system cartpole --json runs/bench_real.json
Prints a table and writes the numbers as JSON (machine, versions and date included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def env_steps_per_second(system: str, obs_type: str, action_repeat: int | None, seconds: float) -> dict:
    """Agent steps/s of `make_real_env` under random actions, resets included."""
    from keycld_gym import make_real_env

    env = make_real_env(system, obs_type, action_repeat=action_repeat)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        steps += 1
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    return {"obs_type": obs_type, "action_repeat": env.action_repeat, "agent_steps_per_s": steps / elapsed,
            "physics_steps_per_s": steps * env.action_repeat / elapsed}


def collection_frames_per_second(system: str, episodes: int, frames: int, workers: int) -> dict:
    """Frames/s of a fresh `collect` run (process start-up and compression included)."""
    from keycld_gym.data.collect import CollectConfig, collect

    root = Path(tempfile.mkdtemp(prefix="keycld-bench-"))
    try:
        start = time.perf_counter()
        manifest = collect(root / "data", CollectConfig(system, episodes=episodes, frames=frames, seed=0),
                           workers=workers, progress=False)
        elapsed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (root / "data").glob("*.npz"))
    finally:
        shutil.rmtree(root)
    return {"episodes": episodes, "frames_per_sequence": frames, "workers": workers, "seconds": elapsed,
            "frames_per_s": manifest["frames"] / elapsed, "bytes_per_frame": size / manifest["frames"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="cartpole")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each env measurement")
    parser.add_argument("--episodes", type=int, default=40, help="sequences in the collection measurement")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default="runs/bench_real.json")
    args = parser.parse_args(argv)

    import torch

    from keycld_gym import __version__, get_system

    spec = get_system(args.system)
    env_rows = [
        env_steps_per_second(args.system, "pixels", None, args.seconds),
        env_steps_per_second(args.system, "state", None, args.seconds),
        env_steps_per_second(args.system, "pixels", 1, args.seconds),
        env_steps_per_second(args.system, "state", 1, args.seconds),
    ]
    collection = collection_frames_per_second(args.system, args.episodes, args.frames, args.workers)
    result = {
        "system": args.system, "image_shape": list(spec.image_shape), "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "mujoco_gl": os.environ.get("MUJOCO_GL"), "keycld_gym": __version__,
        "real_env": env_rows, "collection": collection,
    }
    print(f"{args.system}: frames {spec.camera.height}x{spec.camera.width}, {result['machine']}")
    print(f"{'obs':8} {'repeat':>6} {'agent steps/s':>14} {'physics steps/s':>16}")
    for row in env_rows:
        print(f"{row['obs_type']:8} {row['action_repeat']:>6} {row['agent_steps_per_s']:>14.1f} {row['physics_steps_per_s']:>16.1f}")
    c = collection
    print(f"collection: {c['episodes']} x {c['frames_per_sequence']} frames, {c['workers']} workers: "
          f"{c['frames_per_s']:.1f} frames/s ({c['seconds']:.1f} s), {c['bytes_per_frame']:.0f} bytes/frame on disk")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
