"""What the data collector's scripted controllers do alone in the real task, per drawn controller.

    python scripts/explorer_returns.py --system pendulum --seeds 8 [--json OUT]

For each seed: the controller drawn from `np.random.default_rng(seed)` (as a sequence's
generator draws it), run without noise for a whole episode from the task's reset with that
seed; prints its parameters, the task's return and the hinge's full turns.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from keycld_gym.sim.exploration import CONTROLLERS
from keycld_gym.sim.real_env import RealEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(CONTROLLERS), default="pendulum")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    env = RealEnv(args.system, "state", action_repeat=1)
    rows = []
    for seed in range(args.seeds):
        _, info = env.reset(seed=seed)
        controller = CONTROLLERS[args.system](env.physics, np.random.default_rng(seed))
        hinge = env.system.qpos_names.index(next(n for n in env.system.qpos_names if "hinge" in n))
        start, total, done = info["qpos"][hinge], 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(np.clip(controller(info["qpos"], info["qvel"]), -1, 1))
            total, done = total + reward, terminated or truncated
        params = {k: round(float(v), 3) for k, v in vars(controller).items() if np.isscalar(v)}
        rows.append({"seed": seed, **params, "return": round(total, 1),
                     "turns": round(float(abs(info["qpos"][hinge] - start)) / (2 * np.pi), 1)})
        print(rows[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": args.system, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
