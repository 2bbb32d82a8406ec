"""VPT through the env API: does the Gymnasium plumbing keep the model's prediction quality?

    python scripts/env_vpt.py --checkpoint runs/cartpole-main/model --data data/cartpole-task-eval [--json runs/env_vpt.json]
        [--sequences N] [--start-frames N] [--agent-steps N]

For each held-out sequence: `reset(options={"frames": first 33 frames, "frame_dt": physics
step, "actions": their actions})` on a `KeyCLDEnv` with action repeat 1 (the recorded
actions change every physics step), then `step` through the recorded actions, comparing
the uint8 observation at every agent interval with the real frame. Prints the VPT beside
`evaluate_model`'s on the same sequences.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from keycld_gym.analysis.evaluation import frame_mse, mse_epsilon, valid_prediction_time
from keycld_gym.data.dataset import WindowDataset
from keycld_gym.envs.imagined_env import KeyCLDEnv
from keycld_gym.model.checkpoint import load_model
from keycld_gym.sim.systems import WINDOWS


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--start-frames", type=int, help="default: 0.32 s of frames (WINDOWS.evaluation_start)")
    p.add_argument("--agent-steps", type=int, default=45)
    p.add_argument("--sequences", type=int, help="only the first this many held-out sequences (default: all)")
    p.add_argument("--model-json", help="evaluate-model JSON of the same checkpoint and data, to compare with")
    p.add_argument("--json", default="runs/env_vpt.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    env = KeyCLDEnv(model.spec.name, args.checkpoint, obs_type="pixels", action_repeat=1)
    d = WindowDataset(args.data, 1, split="all").data
    frames, actions = d["frames"][: args.sequences], d["actions"][: args.sequences].astype(np.float32)
    start_frames = args.start_frames or model.spec.frames(WINDOWS.evaluation_start)
    repeat, last = model.spec.action_repeat, start_frames - 1
    epsilon = mse_epsilon(frames[:, ::10].reshape(-1, *frames.shape[2:]))
    errors = np.empty((len(frames), args.agent_steps))
    for s in range(len(frames)):
        env.reset(options={"frames": frames[s, :start_frames], "frame_dt": model.spec.physics_dt,
                           "actions": actions[s, :last]})
        for t in range(1, args.agent_steps * repeat + 1):
            obs, *_ = env.step(actions[s, last + t - 1])
            if t % repeat == 0:
                errors[s, t // repeat - 1] = frame_mse(obs.astype(np.float32) / 255, frames[s, last + t].astype(np.float32) / 255)
    vpt = valid_prediction_time(errors, epsilon)
    out = {"checkpoint": args.checkpoint, "data": args.data, "sequences": len(frames), "epsilon": epsilon,
           "env_vpt_agent_median": float(np.median(vpt)), "env_vpt_agent_mean": float(vpt.mean()), "env_vpt_agent": vpt.tolist()}
    line = f"through the env API: VPT at the agent interval median {out['env_vpt_agent_median']:.1f}, mean {out['env_vpt_agent_mean']:.1f}"
    if args.model_json:
        ref = json.loads(Path(args.model_json).read_text())["model"]
        out["model_vpt_agent_median"], out["model_vpt_agent_mean"] = ref["vpt_agent_median"], ref["vpt_agent_mean"]
        line += f" (evaluate-model: median {ref['vpt_agent_median']:.1f}, mean {ref['vpt_agent_mean']:.1f})"
    print(line)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
