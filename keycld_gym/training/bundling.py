"""Copy a trained model or agent into the package as the bundled one, with its card.

    keycld-gym bundle-model --model runs/pendulum/model --eval runs/pendulum/eval.json
    keycld-gym bundle-agent --agent runs/benchmark/train/agent --eval runs/benchmark/benchmark.json

A model goes to keycld_gym/weights/<system>/ (model.safetensors, config.json, start frames,
measured observation noise) with a README.md recording how it was made (command, seed, data
regime and size, training time) and what it measured on held-out data. An agent goes to
keycld_gym/weights/<system>-<algo>-<obs>/ with its evaluation and card; a pixel agent that
reads frames through a world model's encoder takes that model along (`model/`), so it keeps
working when the system's bundled model is replaced.

Nothing is written before the evaluation is read and checked to be this model's or agent's;
then the bundle is made in a staging folder and swapped in whole, so an old bundle's files
never stay beside new weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from keycld_gym.errors import CheckpointError
from keycld_gym.files import portable_paths, write_json
from keycld_gym.model.checkpoint import (
    CONFIG,
    NOISE_FILE,
    WEIGHTS,
    bundled_path,
    load_model,
)
from keycld_gym.model.ensemble import ENSEMBLE_WEIGHTS
from keycld_gym.model.start_bank import EXPLORING_STARTS, START_BANK, read_start_bank
from keycld_gym.rl.agent import (
    AGENT_CONFIG,
    AGENT_MODEL,
    AGENT_WEIGHTS,
    Agent,
    bundled_agent_path,
    load_agent,
)
from keycld_gym.rl.agent_evaluation import cut_short
from keycld_gym.rl.energy_control import ENERGY_RECORD
from keycld_gym.rl.planning import PLANNING_RECORD


def model_card(config: dict, result: dict | None) -> str:
    """The bundled model's README: provenance and held-out numbers."""
    d, t, k = config["data"], config["training"], config.get("keypoints_from")
    sets = ([k["data"]] if k else []) + [d]
    commands = [f"keycld-gym collect --system {config['system']} --out {s['path']} --episodes {s['sequences']} "
                f"--frames {s['frames_per_sequence']} --seed {s['seed']} --workers 2" for s in sets]
    commands += ([k["training"]["command"]] if k else []) + [t["command"]]
    lines = [
        f"# Bundled KeyCLD model: {config['system']}",
        "",
        "Made by the project's own commands (data collection, then training; `keycld-gym pipeline --system "
        f"{config['system']}` runs the system's whole recipe, `keycld_gym/training/recipes.py`):",
        "",
        *(f"    {c}" for c in dict.fromkeys(commands)),
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
    if config["model"]["encoder"].get("mirror_average"):
        lines.append("- the encoder reads each frame as it is and mirrored and averages the two keypoint sets "
                     "(`EncoderConfig.mirror_average`)")
    lines += [f"- then edited, weights untouched: `{e['command']}`" for e in config.get("edits", []) if e.get("command")]
    r = config.get("reward_head")
    if r:
        lines += [
            f"- reward head refit on estimated states ({r['samples']['train']} samples of "
            f"{', '.join(d['path'] for d in r['data'])}; {r['wall_time_s']:.0f} s): `{r['command']}`; RMSE per physics "
            f"step on the validation sequences {r['rmse_before']['val']:.4f} -> {r['rmse_after']['val']:.4f}",
        ]
    refit = config.get("renderer")
    if refit:
        lines.append(f"- renderer refit on {refit['train_frames']} training frames ({refit['wall_time_s']:.0f} s): "
                     f"`{refit.get('command')}`")
    e = config.get("ensemble")
    if e:
        lines.append(f"- `{ENSEMBLE_WEIGHTS}`: {e['members'] - 1} more dynamics members beside the model's own, each "
                     f"trained like it with another seed on a bootstrap of its dynamics data: `{e['command']}`")
    c = config.get("constants")
    if c:
        v = c["validation"]
        held = (f"; median span its predictions stay within {c['limit']} of the validation sequences' keypoints "
                f"{v['before']['counted_s']:.2f} -> {v['after']['counted_s']:.2f} s" if v["before"] else "")
        lines.append(f"- physical constants refit on open-loop predictions over whole sequences "
                     f"({c['train_sequences']} sequences of {c['frames_per_sequence']} frames, "
                     f"{len(c['members'])} ensemble members alike; {c['wall_time_s']:.0f} s): `{c['command']}`{held}")
    lines.append(f"- `{NOISE_FILE}`: the real state estimate's error per keypoint coordinate, measured on held-out real "
                 "sequences by `keycld-gym observation-noise`; agents can train with it as noise (`--noise measured`)")
    if result:
        m, h = result["model"], result["hold_frame"]
        lines += [
            "",
            f"Held out ({result['sequences']} sequences of `{result['data']}`, split `{result['split']}`; "
            "`keycld-gym evaluate-model`):",
            "",
            f"- VPT at the agent interval ({result['agent_interval_s']} s), median / mean over {result['agent_steps']} steps "
            f"({result['agent_steps'] * result['agent_interval_s']:.2f} s): "
            f"model {m['vpt_agent_median']:.1f} / {m['vpt_agent_mean']:.1f} "
            f"(median {m['vpt_agent_median'] * result['agent_interval_s']:.2f} s), hold-frame {h['vpt_agent_median']:.1f} / {h['vpt_agent_mean']:.1f}"
            + (f", noisy true simulator {result['true_simulator_noisy']['vpt_agent_median']:.1f} / "
               f"{result['true_simulator_noisy']['vpt_agent_mean']:.1f}" if "true_simulator_noisy" in result else ""),
            "- keypoints: " + ", ".join(f"{k} {v:.4f}" for k, v in result["keypoints"].items()),
            f"- reconstruction MSE {result['reconstruction_mse']:.5f}; reward RMSE {result['reward_rmse']:.4f} per physics step",
        ]
    return "\n".join(lines) + "\n"


def _recipe_summary(r: dict) -> str:
    if r["obs_type"] == "pixels":
        return f"{r['policy']}, the last {r['frame_stack']} frames, features {r.get('features', 'cnn')}"
    kind = r.get("real_estimator", {"kind": "Tracking"})["kind"]
    return f"{r['policy']}, observation noise {r['observation_noise']}; real states estimated by {kind} (settings in agent.json)"


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
        f"- real task, {e['episodes']} episodes (reset seeds {e['seed']}+, the `keycld-gym evaluate-agent` protocol"
        f"{cut_short(e)}): return "
        f"{e['real_return_mean']:.1f} ± {e['real_return_std']:.1f}; in imagination {e['imagined_return_mean']:.1f} ± "
        f"{e['imagined_return_std']:.1f}; gap {100 * e['gap']:+.1f}%" + (f"; `{e['command']}`" if e.get("command") else ""),
        *([f"- per episode, real: {', '.join(f'{x:.0f}' for x in e['real_returns'])}; imagined: "
           f"{', '.join(f'{x:.0f}' for x in e['imagined_returns'])}"] if e.get("real_returns") and e.get("imagined_returns") else []),
        "- files: `agent.safetensors` (policy weights), `agent.json` (recipe, spaces, provenance, this evaluation); "
        "loading reads tensors only, nothing is unpickled",
        *([f"- `{AGENT_MODEL}/`: the world model it was trained in, whose encoder reads its frames (the default "
           "model of `keycld-gym evaluate-agent` for this agent)"] if r.get("features") == "keycld-encoder" else []),
        "",
    ])


# with the model's recorded real evaluations of its energy controller and planner (made by
# `keycld-gym evaluate-agent --json MODEL/<record>`)
_MODEL_FILES = (WEIGHTS, CONFIG, ENSEMBLE_WEIGHTS, START_BANK, EXPLORING_STARTS, NOISE_FILE, ENERGY_RECORD, PLANNING_RECORD)


def _copy_model_files(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in _MODEL_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)


def _staging(dest: Path) -> Path:
    """An empty folder beside `dest` to make its new contents in (`_swap_in` puts it in place)."""
    staging = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _swap_in(staging: Path, dest: Path) -> None:
    """Replace `dest` by the finished `staging` folder: the old bundle goes as a whole."""
    old = dest.with_name(f"{dest.name}.old{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


def _read_evaluation(path: str | Path, what: str, remedy: str) -> dict[str, Any]:
    """An evaluation JSON, read before anything is written; a clear error for a file that is not one."""
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"the evaluation {path} does not exist: {remedy}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"the evaluation {path} is not a readable JSON file ({err}): {remedy}") from err
    if not isinstance(result, dict):
        raise CheckpointError(f"the evaluation {path} is not {what}: {remedy}")
    return result


def check_model_evaluation(result: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Refuse an evaluate-model result that is not of the model whose checkpoint config is `config`."""
    remedy = f"evaluate this model with `keycld-gym evaluate-model --checkpoint MODEL --json {path}`"
    if not isinstance(result.get("model"), dict) or "vpt_agent_median" not in result["model"]:
        raise CheckpointError(f"{path} is not an evaluate-model result: {remedy}")
    if result.get("system") != config["system"]:
        raise CheckpointError(f"{path} evaluates a {result.get('system')!r} model, not this {config['system']!r} one: {remedy}")
    recorded = result.get("checkpoint") or {}
    sha = recorded.get("weights_sha256")
    training = {k: v for k, v in config.get("training", {}).items() if k != "config"}
    if (sha is not None and sha != config.get("weights_sha256")) or (sha is None and recorded.get("training") != training):
        raise CheckpointError(f"{path} evaluates another model than this one (its weights or training differ): {remedy}")


def check_agent_evaluation(result: dict[str, Any], agent: Agent, path: str | Path) -> None:
    """Refuse an evaluate-agent result that is not of `agent`."""
    remedy = f"evaluate this agent with `keycld-gym evaluate-agent --agent AGENT --json {path}`"
    r = agent.recipe
    if "real_return_mean" not in result:
        raise CheckpointError(f"{path} is not an evaluate-agent or benchmark result: {remedy}")
    found = tuple(result.get(k) for k in ("system", "obs_type", "algo"))
    if found != (r.system, r.obs_type, r.algo):
        raise CheckpointError(f"{path} evaluates a {'/'.join(map(str, found))} agent, not this "
                              f"{r.system}/{r.obs_type}/{r.algo} one: {remedy}")
    sha = result.get("agent_weights_sha256")
    if sha is not None and sha != agent.info.get("weights_sha256"):
        raise CheckpointError(f"{path} evaluates another agent than this one (its weights differ): {remedy}")


def bundle_model(model_folder: str | Path, evaluation: str | Path | None = None, dest: str | Path | None = None) -> Path:
    """Copy a finished model folder (and its card) to `dest` (default: the package's bundled folder of its system)."""
    model = load_model(model_folder)  # checks the checkpoint before it is bundled
    config = model.checkpoint_config
    if config["training"].get("phase") != "done":
        raise CheckpointError(f"{model_folder} is from an unfinished run (phase {config['training'].get('phase')!r})")
    result = None
    if evaluation:
        result = _read_evaluation(evaluation, "an evaluate-model result", "rerun `keycld-gym evaluate-model --json`")
        check_model_evaluation(result, config, evaluation)
    dest = Path(dest) if dest is not None else bundled_path(config["system"])
    staging = _staging(dest)
    _copy_model_files(Path(model_folder), staging)
    card = model_card(config, result)
    if (staging / EXPLORING_STARTS).exists():
        count = len(read_start_bank(staging, EXPLORING_STARTS)["seeds"])
        card += (f"\n`{EXPLORING_STARTS}`: {count} real start windows from anywhere in the dynamics data, where agent "
                 "recipes with exploring starts begin part of their imagined training episodes.\n")
    (staging / "README.md").write_text(card)
    _swap_in(staging, dest)
    return dest


def _encoder_model(agent: Agent, config: dict) -> Path:
    """The model folder a keycld-encoder pixel agent was trained in, checked to be that very model."""
    source = agent.model_folder or Path(config["model"]["path"])
    trained = config["model"].get("weights_sha256")
    found = load_model(source).checkpoint_config.get("weights_sha256") if (source / CONFIG).exists() else None
    if found is None or found != trained:
        raise CheckpointError(
            f"agent {agent.info.get('path', '?')} reads frames through the encoder of the model it was trained in "
            f"(weights sha256 {trained}), but {source} holds {'no model' if found is None else 'another'}: restore "
            "that model there before bundling the agent")
    return source


def bundle_agent(agent_folder: str | Path, evaluation: str | Path, dest: str | Path | None = None) -> Path:
    """Copy a trained agent with its evaluate-agent (or benchmark) JSON to `dest` (default: the bundled agent's folder)."""
    agent = load_agent(agent_folder)  # checks it before it is bundled
    result = _read_evaluation(evaluation, "an evaluate-agent or benchmark result", "rerun `keycld-gym evaluate-agent --json`")
    if "real_return_mean" not in result and isinstance(result.get("agent"), dict):  # a benchmark.json: its agent's
        result = result["agent"]
    check_agent_evaluation(result, agent, evaluation)
    r = agent.recipe
    dest = Path(dest) if dest is not None else bundled_agent_path(r.system, r.obs_type, r.algo)
    config = json.loads((Path(agent_folder) / AGENT_CONFIG).read_text())
    source = _encoder_model(agent, config) if r.features == "keycld-encoder" else None
    staging = _staging(dest)
    shutil.copy2(Path(agent_folder) / AGENT_WEIGHTS, staging / AGENT_WEIGHTS)
    if source is not None:
        _copy_model_files(source, staging / AGENT_MODEL)
    if "real_estimator" in result:  # the agent meets the real task as it was evaluated
        config["recipe"]["real_estimator"] = result["real_estimator"]
    config["evaluation"] = {k: v for k, v in result.items() if k != "model_data"}
    config = portable_paths(config)  # a bundle ships: no path of the machine it was made on
    write_json(staging / AGENT_CONFIG, config)
    (staging / "README.md").write_text(agent_card(config, result))
    _swap_in(staging, dest)
    return dest
