"""Copy a trained agent into the package as the bundled agent, with its evaluation and card.

    python scripts/bundle_agent.py --agent runs/benchmark/train/agent --eval runs/benchmark/benchmark.json

Writes keycld_gym/weights/<system>-<algo>-<obs>/ (agent.safetensors, agent.json with the
evaluation added under "evaluation", README.md recording the command, seed and numbers).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from keycld_gym.files import write_json
from keycld_gym.rl.agent import (
    AGENT_CONFIG,
    AGENT_WEIGHTS,
    bundled_agent_path,
    load_agent,
)


def _recipe_summary(r: dict) -> str:
    if r["obs_type"] == "pixels":
        return f"{r['policy']}, the last {r['frame_stack']} frames, features {r.get('features', 'cnn')}"
    return f"{r['policy']}, observation noise {r['observation_noise']}"


def agent_card(config: dict, evaluation: dict) -> str:
    """The bundled agent's README: provenance and real / imagined returns."""
    r, t, m = config["recipe"], config["training"], config["model"]
    e = evaluation
    return "\n".join([
        f"# Bundled agent: {r['system']}, {r['algo'].upper()} on {r['obs_type']}",
        "",
        "Trained only in the bundled KeyCLD model's imagination by the project's own command:",
        "",
        f"    {t['command']}",
        "",
        f"- seed {t['seed']}; {t['steps']} imagined agent steps in {t['wall_s'] / 60:.1f} min on 2 CPU cores "
        f"({t['torch_threads']} torch threads); recipe `agents/{r['system']}.py` ({_recipe_summary(r)})",
        f"- the model learned from {m['model_real_frames']} real frames (regime {m['model_data_regime']}); the policy from none",
        f"- real task, {e['episodes']} episodes (reset seeds {e['seed']}+, the `keycld-gym evaluate-agent` protocol): return "
        f"{e['real_return_mean']:.1f} ± {e['real_return_std']:.1f}; in imagination {e['imagined_return_mean']:.1f} ± "
        f"{e['imagined_return_std']:.1f}; gap {100 * e['gap']:+.1f}%",
        "- files: `agent.safetensors` (policy weights), `agent.json` (recipe, spaces, provenance, this evaluation); "
        "loading reads tensors only, nothing is unpickled",
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", required=True, help="an agent folder (OUT/agent of train-agent)")
    p.add_argument("--eval", required=True, help="its evaluate-agent JSON, or a benchmark.json (its 'agent' entry)")
    args = p.parse_args()
    agent = load_agent(args.agent)  # checks it before it is bundled
    evaluation = json.loads(Path(args.eval).read_text())
    if "real_return_mean" not in evaluation:  # a benchmark.json: its agent's evaluation
        evaluation = evaluation["agent"]
    r = agent.recipe
    dest = bundled_agent_path(r.system, r.obs_type, r.algo)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(args.agent) / AGENT_WEIGHTS, dest / AGENT_WEIGHTS)
    config = json.loads((Path(args.agent) / AGENT_CONFIG).read_text())
    config["evaluation"] = {k: v for k, v in evaluation.items() if k != "model_data"}
    write_json(dest / AGENT_CONFIG, config)
    (dest / "README.md").write_text(agent_card(config, evaluation))
    print(f"bundled {args.agent} -> {dest}")


if __name__ == "__main__":
    main()
