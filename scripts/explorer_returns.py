"""What the data collector's exploration does in the real task, per drawn sequence.

    python scripts/explorer_returns.py --system acrobot --seeds 8 --mode explorer [--json OUT]

For each seed: the exploration drawn from `np.random.default_rng(seed)` (as a sequence's
generator draws it), run for a whole episode from the task's reset with that seed. Modes:
`controller`, the system's scripted controller alone; `explorer`, the controller plus the
collector's smooth noise (what a controller-driven sequence of the data holds); `noise`,
the collector's noise alone (the other sequences). Prints the drawn parameters, the task's
return and the first hinge's full turns, and their means.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from keycld_gym.sim.exploration import CONTROLLERS, ExplorationConfig, Explorer
from keycld_gym.sim.real_env import RealEnv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(CONTROLLERS), default="pendulum")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--mode", choices=("controller", "explorer", "noise"), default="controller")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    env = RealEnv(args.system, "state", action_repeat=1)
    hinge = next(i for i, n in enumerate(env.system.qpos_names) if "slider" not in n)
    rows = []
    for seed in range(args.seeds):
        _, info = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        if args.mode == "controller":
            policy = CONTROLLERS[args.system](env.physics, rng)
            params = policy
        else:
            fraction = 1.0 if args.mode == "explorer" else 0.0
            policy = Explorer(env.system, env.physics, rng, ExplorationConfig(controller_fraction=fraction))
            params = policy.controller or policy.noise
        start, total, done = info["qpos"][hinge], 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(np.clip(policy(info["qpos"], info["qvel"]), -1, 1))
            total, done = total + reward, terminated or truncated
        drawn = {k: round(float(v), 3) for k, v in vars(params).items() if np.isscalar(v) and not isinstance(v, bool)}
        rows.append({"seed": seed, **drawn, "return": round(total, 1),
                     "turns": round(float(abs(info["qpos"][hinge] - start)) / (2 * np.pi), 1)})
        print(rows[-1])
    means = {k: round(float(np.mean([r[k] for r in rows])), 1) for k in ("return", "turns")}
    print(f"{args.system} {args.mode}, {args.seeds} seeds: mean return {means['return']}, mean turns {means['turns']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": args.system, "mode": args.mode, "rows": rows, "means": means}, f, indent=1)


if __name__ == "__main__":
    main()
