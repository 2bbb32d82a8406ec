"""Copy a trained model into the package as the bundled weights, with its model card.

    python scripts/bundle_model.py --model runs/cartpole-main/model --eval runs/eval_main.json

Writes keycld_gym/weights/<system>/ (model.safetensors, config.json, start_frames.npz) and a
README.md that records how the weights were made (command, seed, data regime and size,
training time) and what they measured on held-out data (the evaluate-model JSON).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from keycld_gym.data.start_bank import START_BANK
from keycld_gym.model.checkpoint import CONFIG, WEIGHTS, bundled_path, load_model
from keycld_gym.rl.observation_noise import NOISE_FILE


def model_card(config: dict, result: dict | None) -> str:
    """The bundled model's README: provenance and held-out numbers."""
    d, t = config["data"], config["training"]
    lines = [
        f"# Bundled KeyCLD model: {config['system']}",
        "",
        "Made by the project's own commands (data collection, then training):",
        "",
        f"    keycld-gym collect --system {config['system']} --out {d['path']} --episodes {d['sequences']} "
        f"--frames {d['frames_per_sequence']} --seed {d['seed']} --workers 2",
        f"    {t['command']}",
        "",
        f"- data: {d['sequences']} sequences x {d['frames_per_sequence']} frames = {d['frames']} real frames, regime "
        f"`{d['regime']}` ({d.get('regime_description')}); {d['train_sequences']} sequences ({d['train_frames']} frames) "
        f"for training, the rest held out; data set manifest sha256 `{d['manifest_sha256']}`",
        *([f"- encoder and renderer from `{config['keypoints_from']['checkpoint']}`, trained by "
           f"`{config['keypoints_from']['training']['command']}` on {config['keypoints_from']['data']['frames']} real "
           f"frames of `{config['keypoints_from']['data']['path']}` (regime `{config['keypoints_from']['data']['regime']}`, "
           f"{config['keypoints_from']['training']['wall_time_s'] / 60:.1f} min)"] if config.get("keypoints_from") else []),
        f"- training seed {t['seed']}; wall time {t['wall_time_s'] / 60:.1f} min on 2 CPU cores ({t['torch_threads']} torch threads)",
        f"- package version {config['package_version']}; weights sha256 `{config['weights_sha256']}`",
        f"- `{START_BANK}`: real start windows from the task's own reset (reset seeds 10000+), used by the env's reset",
    ]
    r = config.get("reward_head")
    if r:
        lines += [
            f"- reward head refit on estimated states ({r['samples']['train']} samples of "
            f"{', '.join(d['path'] for d in r['data'])}; {r['wall_time_s']:.0f} s): `{r['command']}`; RMSE per physics "
            f"step on the validation sequences {r['rmse_before']['val']:.4f} -> {r['rmse_after']['val']:.4f}",
        ]
    lines.append(f"- `{NOISE_FILE}`: the real 17-frame state estimate's error per keypoint coordinate, measured on "
                 "held-out real sequences by `python scripts/observation_noise.py`; agents can train with it as noise (`--noise measured`)")
    if result:
        m, h = result["model"], result["hold_frame"]
        lines += [
            "",
            f"Held out ({result['sequences']} sequences of `{result['data']}`, split `{result['split']}`; "
            "`keycld-gym evaluate-model`):",
            "",
            f"- VPT at the agent interval ({result['agent_interval_s']} s), median / mean over {result['agent_steps']} steps: "
            f"model {m['vpt_agent_median']:.1f} / {m['vpt_agent_mean']:.1f}, hold-frame {h['vpt_agent_median']:.1f} / {h['vpt_agent_mean']:.1f}"
            + (f", noisy true simulator {result['true_simulator_noisy']['vpt_agent_median']:.1f} / "
               f"{result['true_simulator_noisy']['vpt_agent_mean']:.1f}" if "true_simulator_noisy" in result else ""),
            "- keypoints: " + ", ".join(f"{k} {v:.4f}" for k, v in result["keypoints"].items()),
            f"- reconstruction MSE {result['reconstruction_mse']:.5f}; reward RMSE {result['reward_rmse']:.4f} per physics step",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained model folder (RUN/model)")
    p.add_argument("--eval", help="its evaluate-model JSON on held-out data")
    args = p.parse_args()
    model = load_model(args.model)  # checks the checkpoint before it is bundled
    config = model.checkpoint_config
    if config["training"].get("phase") != "done":
        raise SystemExit(f"{args.model} is from an unfinished run (phase {config['training'].get('phase')!r})")
    dest = bundled_path(config["system"])
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG, START_BANK, NOISE_FILE):
        if (Path(args.model) / name).exists():
            shutil.copy2(Path(args.model) / name, dest / name)
    result = json.loads(Path(args.eval).read_text()) if args.eval else None
    (dest / "README.md").write_text(model_card(config, result))
    print(f"bundled {args.model} -> {dest}")


if __name__ == "__main__":
    main()
