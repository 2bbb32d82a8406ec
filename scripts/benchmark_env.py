"""Throughput of the imagined env against the real one, measured in the same run.

    python scripts/benchmark_env.py --system cartpole [--checkpoint DIR] [--seconds 10] [--json runs/bench_env.json]

Rows: the real pixel env (action repeat of the spec), the imagined env single (pixels,
keypoints) and batched (64 and 256 envs; pixels, keypoints). Agent steps per second count
every env of a batch; resets (autoresets) are included. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from keycld_gym import make_real_env
from keycld_gym.envs.imagined_env import KeyCLDEnv, KeyCLDVectorEnv


def _rate(step, seconds: float, per_call: int) -> float:
    step()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * per_call / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", default="cartpole")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="runs/bench_env.json")
    p.add_argument("--ensemble-modes", nargs="+", default=["member"], choices=("member", "mean", "off"),
                   help="how a model with an ensemble steps (each mode a row; 'off': the model's own dynamics alone)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []

    real = make_real_env(args.system, "pixels")
    real.reset(seed=0)

    def real_step():
        _, _, term, trunc, _ = real.step(rng.uniform(-1, 1, real.action_space.shape))
        if term or trunc:
            real.reset()

    real_rate = _rate(real_step, args.seconds, 1)
    rows.append({"env": "real", "obs": "pixels", "num_envs": 1, "steps_per_s": real_rate})
    real.close()

    for obs in ("pixels", "keypoints"):
        env = KeyCLDEnv(args.system, args.checkpoint, obs_type=obs)
        env.reset(seed=0)

        def single_step(env=env):  # bound now: each obs type times its own env
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            if term or trunc:
                env.reset()

        rows.append({"env": "imagined", "obs": obs, "num_envs": 1, "ensemble_mode": "member",
                     "members": env.sim.ensemble.size if env.sim.ensemble is not None else 1,
                     "steps_per_s": _rate(single_step, args.seconds, 1)})
        for n in args.batches:
            for mode in args.ensemble_modes:
                venv = KeyCLDVectorEnv(n, args.system, args.checkpoint, obs_type=obs, ensemble_mode=mode)
                venv.reset(seed=0)
                acts = rng.uniform(-1, 1, venv.action_space.shape).astype(np.float32)
                members = venv.sim.ensemble.size if venv.sim.ensemble is not None else 1
                rows.append({"env": "imagined", "obs": obs, "num_envs": n, "members": members, "ensemble_mode": mode,
                             "steps_per_s": _rate(lambda venv=venv, acts=acts: venv.step(acts), args.seconds, n)})
    for r in rows:
        r["ratio_to_real_pixels"] = r["steps_per_s"] / real_rate
    print(f"{'env':10s} {'obs':10s} {'envs':>5s} {'members':>8s} {'agent steps/s':>14s} {'x real pixels':>14s}")
    for r in rows:
        print(f"{r['env']:10s} {r['obs']:10s} {r['num_envs']:>5d} {r.get('members', 1):>8d} {r['steps_per_s']:>14.1f} "
              f"{r['ratio_to_real_pixels']:>14.1f}")
    out = {"system": args.system, "checkpoint": args.checkpoint or "bundled", "threads": args.threads,
           "machine": f"{platform.machine()} {platform.processor()} {torch.get_num_threads()} torch threads",
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
