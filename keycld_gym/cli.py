"""The `keycld-gym` command line: thin wrappers over the package's functions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from keycld_gym.agents import NOISES
from keycld_gym.agents import get_recipe as get_agent_recipe
from keycld_gym.analysis.diagnostics import diagnose, keypoint_map_for
from keycld_gym.analysis.evaluation import load_and_evaluate
from keycld_gym.analysis.prediction_budget import PARTS as BUDGET_PARTS
from keycld_gym.analysis.video import prediction_video
from keycld_gym.benchmark import benchmark_recipe, run_benchmark
from keycld_gym.data.collect import CollectConfig, collect
from keycld_gym.data.preview import dataset_preview
from keycld_gym.errors import KeyCLDError
from keycld_gym.files import default_command, write_json
from keycld_gym.model.checkpoint import (
    NOISE_FILE,
    checkpoint_folder,
    load_model,
    set_mirror_average,
    write_noise,
)
from keycld_gym.model.dynamics import DAMPINGS, INPUT_MATRICES
from keycld_gym.model.tracking import parse_estimator
from keycld_gym.parallel import ray_address
from keycld_gym.rl.agent import load_agent
from keycld_gym.rl.agent_evaluation import cut_short, evaluate_agent
from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent
from keycld_gym.rl.energy_control import energy_agent
from keycld_gym.rl.observation_noise import measure_estimation_error
from keycld_gym.rl.planning import planning_agent
from keycld_gym.rl.real_episodes import ACTORS
from keycld_gym.rl.rllib import RLlibConfig, train_rllib
from keycld_gym.rl.sweep import EVAL_SEED, SELECTION_SEED, SweepConfig, sweep
from keycld_gym.rl.sweep import format_table as format_sweep
from keycld_gym.sim.systems import SYSTEMS
from keycld_gym.training.ablations import AblationStudy
from keycld_gym.training.bundling import bundle_agent, bundle_model
from keycld_gym.training.config import ROLLOUT_LOSSES, TrainConfig
from keycld_gym.training.constants_fit import fit_constants
from keycld_gym.training.ensemble import train_ensemble
from keycld_gym.training.improve import ImproveConfig, improve
from keycld_gym.training.pipeline import Pipeline, refit_checkpoint
from keycld_gym.training.recipes import get_recipe
from keycld_gym.training.renderer_fit import fit_renderer
from keycld_gym.training.reward_fit import fit_reward_head
from keycld_gym.training.trainer import Trainer


def _collect(args: argparse.Namespace) -> int:
    config = CollectConfig(
        system=args.system, episodes=args.episodes, frames=args.frames, seed=args.seed,
        regime=args.regime, shard_size=args.shard_size,
    )
    manifest = collect(args.out, config, workers=args.workers, ray=ray_address(args.ray), progress=not args.quiet,
                       command=default_command())
    print(
        f"{manifest['system']}: {manifest['sequences']} sequences x {manifest['frames_per_sequence']} frames "
        f"= {manifest['frames']} real frames, regime '{manifest['regime']}' ({manifest['regime_description']}), "
        f"frame interval {manifest['physics_dt']} s -> {args.out}"
    )
    return 0


def _preview(args: argparse.Namespace) -> int:
    path = dataset_preview(args.data, args.out, sequences=args.sequences, frames=args.frames, stride=args.stride)
    print(f"wrote {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    # a resumed run must be asked for with its own settings: the trainer checks them against the
    # record and names the fields that differ (a --resume never silently drops a flag)
    config = train_config_from_args(args)
    trainer = Trainer(config, args.out, command=default_command(), progress=not args.quiet)
    trainer.run(resume=args.resume)
    print(f"trained {config.system} ({config.model.dynamics.kind}) in {trainer.elapsed / 60:.1f} min of compute "
          f"-> {Path(args.out) / 'model'}")
    return 0


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """{field: value} of the flags (`names`: flag attribute -> field) given on the command line."""
    return {field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag) is not None}


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The system's model recipe (`keycld_gym/training/recipes.py`) with the flags given on the command line applied."""
    recipe = get_recipe(args.system)
    dynamics = dataclasses.replace(recipe.model.dynamics, **_given(args, {
        "dynamics": "kind", "input_matrix": "input_matrix", "damping": "damping",
        "input_keypoints": "input_keypoints", "wall_damping": "wall_damping"}))
    switches = {"no_rail_walls": ("rail_walls", False), "linear_potential": ("linear_potential", True),
                "no_potential_mlp": ("potential_mlp", False), "potential_mlp": ("potential_mlp", True),
                "no_linear_potential": ("linear_potential", False)}
    dynamics = dataclasses.replace(dynamics, **{f: v for flag, (f, v) in switches.items() if getattr(args, flag)})
    overrides = _given(args, {"seed": "seed", "keypoint_steps": "keypoint_steps", "dynamics_steps": "dynamics_steps",
                              "max_horizon": "max_horizon", "horizon_ramp": "horizon_ramp_steps",
                              "physics_lr": "physics_lr", "keypoints_from": "keypoints_from",
                              "rollout_loss": "rollout_loss", "robust_scale": "robust_scale",
                              "mirror_sequences": "mirror_sequences",
                              "checkpoint_every": "checkpoint_every_s", "constraint_weight": "constraint_weight",
                              "pivot_separation": "pivot_separation_weight"})
    if args.keypoints_from:
        overrides["keypoint_steps"] = 0
    if overrides.get("max_horizon") == 0:
        overrides["max_horizon"] = None
    config = recipe.train_config(args.data, **overrides)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, dynamics=dynamics))


def _ensemble(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    record = train_ensemble(args.checkpoint, args.out, args.members, data=args.data, workers=args.workers,
                            progress=not args.quiet, command=default_command())
    print(f"{args.members} dynamics members ({args.members - 1} trained; this call {record['call_wall_s'] / 60:.1f} min, "
          f"training loops {record['training_loop_s'] / 60:.1f} min) "
          f"-> {checkpoint_folder(args.checkpoint)}")
    return 0


def _improve(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    config = ImproveConfig(
        system=args.system, checkpoint=args.checkpoint, agent=args.agent, actor=args.actor, data=args.data,
        rounds=args.rounds, episodes=args.episodes, model_steps=args.model_steps, agent_steps=args.agent_steps,
        eval_episodes=args.eval_episodes, seed=args.seed, max_steps=args.max_steps, settings=_settings(args.set) or None,
        workers=args.workers)
    record = improve(config, args.out, progress=not args.quiet, command=default_command())
    for r in record["rounds"]:
        imagined = "" if r["imagined_return_mean"] is None else f", imagined {r['imagined_return_mean']:.1f}"
        print(f"round {r['round']}: real {r['real']['return_mean']:.1f} +- {r['real']['return_std']:.1f} over "
              f"{len(r['real']['returns'])} episodes{imagined}; {r['total_real_frames']:,} real frames in all")
    final = record["final"]
    print(f"final: real {final['real_return_mean']:.1f} +- {final['real_return_std']:.1f} over {final['episodes']} unseen "
          f"seeds{cut_short(final)}, {final['total_real_frames']:,} real frames in all -> {Path(args.out) / 'improve.json'}")
    return 0


def _check_output(path: str | None) -> None:
    """Fail before the work, not after it, where a result file could not be written: `path` a folder, or unwritable."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(21, "the result file is a folder; name a file (for example result.json)", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
        raise PermissionError(13, "cannot write the result file's folder", str(target.parent))


def _evaluate_model(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    _check_output(args.json)
    result = load_and_evaluate(args.checkpoint, args.data, agent_steps=args.agent_steps, start_frames=args.start_frames,
                               physics_frames=args.physics_frames, max_sequences=args.max_sequences,
                               seed=args.seed, references=not args.no_references)
    if args.json:  # its folder made by _check_output before the work
        write_json(Path(args.json), result)
    print(format_model_report(result))
    return 0


def _sequences(text: str) -> int | list[int]:
    """`--sequences`: a count (the first held-out sequences) or comma-separated indices."""
    try:
        value = [int(i) for i in text.split(",")] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or comma-separated indices, got {text!r}") from None
    if (isinstance(value, int) and value < 1) or (isinstance(value, list) and min(value) < 0):
        raise argparse.ArgumentTypeError(f"expected a positive count or comma-separated indices from 0, got {text!r}")
    return value


def _video(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = prediction_video(args.checkpoint, args.data, args.out, compare=args.compare or (), labels=args.label,
                              sequences=args.sequences, agent_steps=args.agent_steps, scale=args.scale)
    dt = result["agent_interval_s"]
    print(f"{result['out']}: {result['frames']} frames of {result['frame_size'][1]}x{result['frame_size'][0]}, "
          f"held-out sequences {result['sequences']} of {result['data']} ({result['split']})")
    for label, steps in result["valid_steps"].items():
        print(f"  {label}: valid for " + ", ".join(f"{s} steps ({s * dt:.2f} s)" for s in steps))
    return 0


def _or_dash(x: float | None, spec: str) -> str:
    """A number in a report, or "-" where there is none."""
    return "-" if x is None else format(x, spec)


def format_model_report(r: dict) -> str:
    """A short text table of `evaluate_model`'s result."""
    lines = [
        f"{r['system']} ({r['dynamics']}), {r['sequences']} held-out sequences of {r['data']} ({r['split']}), "
        f"start window {r['start_frames']} frames at {r['frame_interval_s']} s, epsilon {r['epsilon']:.5f}",
        f"{'':24s} {'VPT agent median/mean':>22s} {'seconds':>8s} {'whole horizon':>14s} {'VPT physics median/mean':>24s}",
    ]
    for name in ("model", "hold_frame", "true_simulator_noisy"):
        if name in r:
            b = r[name]
            lines.append(f"{name:24s} {b['vpt_agent_median']:>10.1f} / {b['vpt_agent_mean']:<9.1f}"
                         f"{b['vpt_agent_s_median']:>8.2f} {b['saturated']:>14.0%}"
                         f"{b['vpt_physics_median']:>12.1f} / {b['vpt_physics_mean']:<9.1f}")
    capped = " (as far as the sequences allow)" if r["horizon_capped_by_data"] else ""
    lines.append(f"(agent steps of {r['agent_interval_s']} s, out of {r['agent_steps']}: a horizon of "
                 f"{r['horizon_s']:.2f} s{capped}; physics steps out of {r['physics_frames']})")
    if len(r["sets"]) > 1 or len(r["by_explorer"]) > 1:
        groups = [(f"set {x['data']} ({x['regime']})", x) for x in r["sets"]] + list(r["by_explorer"].items())
        for label, g in groups:
            lines.append(f"  {label}, {g['sequences']} sequences: VPT median "
                         + ", ".join(f"{name} {g[name + '_vpt_s_median']:.2f} s" for name in
                                     ("model", "hold_frame", "true_simulator_noisy") if name + "_vpt_s_median" in g))
    lines.append("keypoints: " + ", ".join(f"{k} {v:.4f}" for k, v in r["keypoints"].items()))
    lines.append(f"reconstruction MSE {r['reconstruction_mse']:.5f}; reward RMSE {r['reward_rmse']:.4f} (reward std {r['reward_std']:.4f}); "
                 f"max |phi| over {r['long_rollout']['steps']} steps {r['long_rollout']['max_abs_constraint_violation']:.2e}")
    rs = r.get("reward_sequences")
    if rs:
        def fmt(x: float | None) -> str:
            return _or_dash(x, ".4f")
        lines.append(f"reward head on whole sequences ({rs['samples']} physics steps): RMSE {fmt(rs['rmse'])}; where the task "
                     f"rewards ({rs['rewarded_samples']}) {fmt(rs['rmse_rewarded'])}, mean predicted "
                     f"{fmt(rs['mean_predicted_rewarded'])} of {fmt(rs['mean_true_rewarded'])}; within {rs['near_s']} s of it "
                     f"({rs['near_samples']}) {fmt(rs['rmse_near_rewarded'])}")
    if c := r.get("calibration"):
        def rank(x: float | None) -> str:
            return _or_dash(x, ".2f")
        lines.append(f"ensemble of {c['members']}: disagreement against the model's keypoint error, rank correlation "
                     f"{rank(c['spearman_pooled'])} over all steps, {rank(c['spearman_within_step_median'])} across "
                     f"sequences at one step (median); VPT against where it passes {c['level']:.2f} px: rank "
                     f"{rank(c['spearman_vpt'])}, {c['median_abs_steps']:.1f} steps apart (median)")
    return "\n".join(lines)


def _refit(args: argparse.Namespace, part: str, fit: Any, **kwargs: Any) -> dict:
    """Refit one part of `--checkpoint` with `fit`, saved to `--out`; the fit's record."""
    torch.set_num_threads(args.threads)
    return refit_checkpoint(args.checkpoint, args.out, part, fit, data=args.data, steps=args.steps, seed=args.seed,
                            progress=not args.quiet, command=default_command(), force=args.force, **kwargs)


def _fit_renderer(args: argparse.Namespace) -> int:
    fresh = {"full_resolution": True} if args.full_resolution else None
    result = _refit(args, "renderer", fit_renderer, weight=args.weight, fresh_renderer=fresh,
                    foreground_weight=args.foreground_weight)
    b, a = result["before"], result["after"]
    print(f"renderer refit on {result['train_frames']} frames; {result['scored_on']} frames: re-encoded keypoint error RMS "
          f"{b['reencode_rms']} -> {a['reencode_rms']} (max {b['reencode_max']} -> {a['reencode_max']}), "
          f"reconstruction MSE {b['recon_mse']} -> {a['recon_mse']} ({result['wall_time_s']:.0f} s) -> {args.out}")
    return 0


def _fit_constants(args: argparse.Namespace) -> int:
    result = _refit(args, "constants", fit_constants, max_sequences=args.max_sequences, limit=args.limit,
                    robust=args.robust)
    b, a = result["model"]["before"], result["model"]["after"]
    line = (f"constants refit on {result['train_sequences']} sequences of {result['frames_per_sequence']} frames: "
            f"counted span (median) {b['counted_s']:.2f} -> {a['counted_s']:.2f} s")
    if (v := result["validation"])["before"] is not None:
        line += (f"; validation sequences {v['before']['counted_s']:.2f} -> {v['after']['counted_s']:.2f} s, "
                 f"cost {v['before']['cost']:.4f} -> {v['after']['cost']:.4f}")
    if result["members"]:
        line += f"; {len(result['members'])} members refit alike"
    print(f"{line} ({result['wall_time_s']:.0f} s) -> {args.out}")
    return 0


def _fit_reward(args: argparse.Namespace) -> int:
    result = _refit(args, "reward_head", fit_reward_head)
    b, a = result["rmse_before"], result["rmse_after"]
    print(f"reward head refit on {result['samples']['train']} samples: RMSE per physics step train {b['train']:.4f} -> "
          f"{a['train']:.4f}, validation sequences {b['val']:.4f} -> {a['val']:.4f} ({result['wall_time_s']:.0f} s) -> {args.out}")
    return 0


def _recipe_threads(args: argparse.Namespace, obs_type: str, algo: str) -> None:
    """Set torch's threads: `--threads`, else the agent recipe's."""
    torch.set_num_threads(args.threads or get_agent_recipe(args.system, obs_type, algo).torch_threads)


def _true_keypoint_map(args: argparse.Namespace) -> dict | None:
    """`train-agent --world true`: the map from true points into the model's keypoints, fitted on `--data`."""
    if args.world == "imagined":
        if args.data is not None:
            raise ValueError("--data fits the true state's keypoint map: it goes with --world true")
        return None
    if args.data is None:
        raise ValueError("--world true needs --data: held-out real sequences on which to map the true state into "
                         "the model's keypoints (for example a pipeline run's data/task-eval)")
    return keypoint_map_for(load_model(checkpoint_folder(args.checkpoint, args.system)), args.data).to_dict()


def _train_agent(args: argparse.Namespace) -> int:
    _recipe_threads(args, args.obs, args.algo)
    config = AgentTrainConfig(
        system=args.system, obs_type=args.obs, algo=args.algo, seed=args.seed, checkpoint=args.checkpoint,
        total_steps=args.steps, budget_s=None if args.budget is None else args.budget * 60,
        observation_noise=args.noise, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        real_eval_every=args.real_eval_every, real_eval_episodes=args.real_eval_episodes,
        checkpoint_every_s=args.checkpoint_every, world=args.world, keypoint_map=_true_keypoint_map(args),
        uncertainty_penalty=args.uncertainty_penalty, uncertainty_limit=args.uncertainty_limit,
        energy_shaping=args.energy_shaping, normalize_reward=args.normalize_reward,
    )
    state = train_agent(config, args.out, resume=args.resume, progress=not args.quiet, command=default_command())
    last = state["curve"][-1]
    where = "in imagination" if args.world == "imagined" else "on the true simulator's state (a reference)"
    print(f"trained {args.algo} on {args.obs} {where}: {state['steps']} steps in {state['wall_s'] / 60:.1f} min, "
          f"{config.return_key.replace('_', ' ')} {last[config.return_key]:.1f} -> {Path(args.out) / 'agent'}")
    return 0


def _json_or_text(value: str) -> Any:
    """A value read as JSON where it parses (24, 0.5, [0.8, 1.2]), as the string itself otherwise."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _pairs(pairs: list[str] | None, option: str, form: str) -> list[tuple[str, str]]:
    """KEY=VALUE pairs split, each with a key and a value (else a ValueError naming `option` and its `form`)."""
    out = []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option} takes {form}, got {pair!r}")
        out.append((key, value))
    return out


def _settings(pairs: list[str] | None) -> dict[str, Any]:
    """--set's KEY=VALUE pairs as a dict (`_json_or_text` values)."""
    return {key: _json_or_text(value) for key, value in _pairs(pairs, "--set", "KEY=VALUE")}


def _grid(pairs: list[str] | None) -> dict[str, tuple[Any, ...]]:
    """--grid's KEY=V1,V2,... pairs as a dict of value tuples (`_json_or_text` values)."""
    return {key: tuple(map(_json_or_text, value.split(","))) for key, value in _pairs(pairs, "--grid", "KEY=V1,V2")}


def _sweep(args: argparse.Namespace) -> int:
    config = SweepConfig(system=args.system, seeds=tuple(args.seeds), grid=_grid(args.grid), checkpoint=args.checkpoint,
                         budget_min=args.budget, total_steps=args.steps, eval_every=args.eval_every,
                         selection_episodes=args.selection_episodes, selection_seed=args.selection_seed,
                         eval_episodes=args.episodes, eval_seed=args.seed, max_steps=args.max_steps)
    record = sweep(config, args.out, ray=ray_address(args.ray), command=default_command(), progress=not args.quiet)
    print(format_sweep(record))
    print(f"wrote {Path(args.out) / 'sweep.json'} and sweep.md")
    return 0


def _train_rllib(args: argparse.Namespace) -> int:
    config = RLlibConfig(system=args.system, checkpoint=args.checkpoint, iterations=args.iterations,
                         env_runners=args.env_runners, envs_per_runner=args.envs_per_runner, seed=args.seed)
    state = train_rllib(config, args.out, ray=ray_address(args.ray), episodes=args.episodes, seed=args.eval_seed,
                        workers=args.workers, command=default_command(), progress=not args.quiet)
    last = next((p for p in reversed(state["curve"]) if p["imagined_return"] is not None), None)
    line = f"{args.system} RLlib PPO: {len(state['curve'])} iterations, {state['curve'][-1]['env_steps']} imagined steps"
    line += f", imagined return {last['imagined_return']:.1f}" if last else ""
    if "evaluation" in state:
        e = state["evaluation"]
        line += f"; real return {e['real_return_mean']:.1f} ± {e['real_return_std']:.1f} over {e['episodes']} episodes " \
                f"(seeds {e['seed']}+{cut_short(e)})"
    print(line + f" -> {args.out}")
    return 0


def _agent(args: argparse.Namespace, system: str, obs: str | None) -> Any:
    """The agent `args.agent` names: 'energy' and 'plan' (controllers of the model `args.checkpoint`), else a folder or 'bundled'."""
    settings = _settings(args.set)
    if settings and args.agent not in ("energy", "plan"):
        raise ValueError("--set changes the settings of --agent energy or plan; a trained agent's are in its folder")
    if args.agent == "energy":
        return energy_agent(system, args.checkpoint, settings)
    if args.agent == "plan":
        return planning_agent(system, args.checkpoint, args.guide, settings)
    return load_agent(args.agent, system, obs)


def _evaluate_agent(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    agent = _agent(args, args.system, args.obs)
    if args.real_estimator is not None:
        agent.recipe = agent.recipe.replace(real_estimator=parse_estimator(args.real_estimator))
    _check_output(args.json)
    result = evaluate_agent(agent, episodes=args.episodes, seed=args.seed, checkpoint=args.checkpoint,
                            imagined=not args.no_imagined, workers=args.workers, max_steps=args.max_steps,
                            allow_other_model=args.allow_other_model, ray=ray_address(args.ray))
    result["command"] = default_command()
    if args.json:  # its folder made by _check_output before the work
        write_json(Path(args.json), result)
    line = f"{result['system']} {result['obs_type']} {result['algo']} agent {result['agent']}: real return " \
           f"{result['real_return_mean']:.1f} ± {result['real_return_std']:.1f} over {result['episodes']} episodes (seeds {result['seed']}+{cut_short(result)})"
    if "imagined_return_mean" in result:
        line += f"; imagined {result['imagined_return_mean']:.1f} ± {result['imagined_return_std']:.1f}; gap {100 * result['gap']:+.1f}%"
    print(line + f"; model learned from {result['model_real_frames']} real frames ({result['model_data_regime']}), the policy from none")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    recipe = get_recipe(args.system)
    if args.training_frames is not None:
        recipe = recipe.with_training_frames(args.training_frames)
    if args.seed is not None:
        recipe = dataclasses.replace(recipe, seed=args.seed)
    pipeline = Pipeline(recipe, args.out, workers=args.workers, progress=not args.quiet, command=default_command())
    record = pipeline.run(until=args.until)
    times = ", ".join(f"{name} {s['wall_s'] / 60:.1f}" for name, s in record["steps"].items())
    print(f"{args.system} pipeline: {record['total_wall_s'] / 60:.1f} min ({times} min) -> {pipeline.model_folder}")
    if (Path(args.out) / "eval.json").exists():
        print(format_model_report(json.loads((Path(args.out) / "eval.json").read_text())))
    return 0


def _ablations(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    study = AblationStudy(args.run, progress=not args.quiet, command=default_command())
    study.run_all(workers=args.workers, ray=ray_address(args.ray), threads=args.threads)
    print((Path(args.run) / "ablations.md").read_text(), end="")
    print(f"wrote {Path(args.run) / 'ablations.json'} and ablations.md")
    return 0


def _observation_noise(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    tracking = None if args.real_estimator is None else parse_estimator(args.real_estimator)
    result = measure_estimation_error(model, args.data, tracking=tracking, max_sequences=args.max_sequences)
    k = model.spec.num_keypoints
    print(json.dumps({"position_std": result["std"][: 2 * k], "velocity_std": result["std"][2 * k:],
                      "frame_std": result["frame_std"], "samples": result["samples"], "seconds": result["seconds"]}))
    print("wrote", write_noise(args.out or checkpoint_folder(args.checkpoint), result))
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    agent = _agent(args, model.spec.name, "keypoints") if args.agent else None
    if args.estimate_episodes and agent is None:
        raise ValueError("--estimate-episodes runs the agent in the real task: give --agent")
    estimator = None if args.real_estimator is None else parse_estimator(args.real_estimator)
    _check_output(args.json)
    result = diagnose(model, args.data, agent=agent, episodes=args.episodes, seed=args.seed,
                      true_physics=not args.no_true_physics, estimator=estimator,
                      estimate_episodes=args.estimate_episodes)
    if args.json:  # its folder made by _check_output before the work
        write_json(Path(args.json), result)
    k = result["keypoints"]
    print(f"{result['system']}: keypoint error against the true bodies {k['rms_px']:.3f} px RMS, {k['p99_px']:.3f} px "
          f"99th percentile ({k['frames']} held-out frames; per keypoint {k['per_keypoint_rms_px']}); "
          f"noise {k['noise_rms_px']:.3f} px RMS once the bias a smooth function of the state explains is taken out "
          f"(per keypoint {k['per_keypoint_noise_rms_px']})")
    t = k["tracked"]
    print(f"against the point each keypoint tracks (link fractions {t['link_fractions']}): {t['rms_px']:.3f} px RMS, "
          f"{t['p99_px']:.3f} px 99th percentile (per keypoint {t['per_keypoint_rms_px']}); a perfect encoder of these "
          f"points would score {t['placement_floor_rms_px']:.3f} px against the true bodies")
    j = result["subpixel"]
    print(f"shifted by 0-1 px in {j['steps']} steps ({j['states']} states): slope {j['slope_mean']:.3f} "
          f"(per keypoint {j['slope_per_keypoint']}), jitter {j['jitter_rms_px']:.3f} px RMS, {j['jitter_p99_px']:.3f} px 99th percentile")
    for r in (result["response"], result["response_near_goal"]):
        print(f"response against the true system ({r['samples']} {r['states']} states): passive relative error "
              f"{r['passive_relative_error']:.3f}, actuator {r['actuator_relative_error']:.3f} (gain ratio "
              f"{r['actuator_gain_ratio']:.3f}, per keypoint {r['actuator_gain_per_keypoint']})")
    c = result["causal"]
    print(f"online estimate ({c['estimator']['kind']}) against the true state over {c['samples']} agent steps of "
          f"{c['sequences']} sequences: positions {c['position_rms']:.4f} units RMS ({c['position_rms_px']:.3f} px; per "
          f"coordinate {c['position_rms_per_coordinate']}), velocities {c['velocity_rms']:.4f} units/s RMS (per coordinate "
          f"{c['velocity_rms_per_coordinate']}); {c['ms_per_agent_step']:.1f} ms per agent step (one env, one thread)")
    if "prediction_budget" in result:
        b = result["prediction_budget"]
        print(f"what ends the predictions ({b['sequences']} held-out sequences, horizon {b['horizon_s']:.2f} s; the start "
              f"estimate {b['start_gap_px']:.2f} px from the true start): VPT median "
              + ", ".join(f"{part.replace('_', ' ')} {b[part]['vpt_s_median']:.2f} s" for part in BUDGET_PARTS)
              + "; cost in seconds " + ", ".join(f"{k} {v:.2f}" for k, v in b["cost_s"].items())
              + f"; largest cause: {b['largest_cause']}")
        f = b["free_oscillation"]
        print("free swing from rest: period " + ", ".join(
            f"{name.replace('_', ' ')} {_or_dash(f[name]['period_s'], '.3f')} s" for name in ("true", "model", "true_constants"))
            + "; amplitude ratio per period " + ", ".join(
            f"{name.replace('_', ' ')} {_or_dash(f[name]['amplitude_ratio_per_period'], '.3f')}"
            for name in ("true", "model", "true_constants")))
    if "oracle_agent" in result:
        o = result["oracle_agent"]
        print(f"agent on true keypoints: real return {o['real_return_mean']:.1f} ± {o['real_return_std']:.1f} "
              f"over {o['episodes']} episodes (seeds {o['seed']}+)")
    if "agent_estimate" in result:
        a = result["agent_estimate"]
        for part in ("all", "near_goal", "away_from_goal"):
            e = a[part]
            if e["samples"]:
                print(f"agent's estimate, {part.replace('_', ' ')} ({e['samples']} agent steps): velocities "
                      f"{e['velocity_rms']:.4f} units/s RMS (per coordinate {e['velocity_rms_per_coordinate']}, mean "
                      f"{e['velocity_mean_per_coordinate']}), positions {e['position_rms_px']:.3f} px RMS")
        print(f"agent on its estimate: real return {a['real_return_mean']:.1f} over {a['episodes']} episodes "
              f"(seeds {a['seed']}+), {100 * a['near_goal_share']:.0f}% of its steps near the goal")
    return 0


def _mirror_average(args: argparse.Namespace) -> int:
    path = set_mirror_average(args.checkpoint, args.setting == "on", command=default_command())
    print(f"{path}: the encoder's mirror average is {args.setting}")
    if (path / NOISE_FILE).exists():
        print(f"its {NOISE_FILE} was measured with the encoder as it was: measure it again with "
              f"`keycld-gym observation-noise --checkpoint {path} --data HELD_OUT_DATA`")
    return 0


def _bundle_model(args: argparse.Namespace) -> int:
    print(f"bundled {args.model} -> {bundle_model(args.model, args.eval, args.dest)}")
    return 0


def _bundle_agent(args: argparse.Namespace) -> int:
    print(f"bundled {args.agent} -> {bundle_agent(args.agent, args.eval, args.dest)}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    recipe = benchmark_recipe(args.system)
    _recipe_threads(args, "keypoints", recipe.algo)
    run_benchmark(args.system, args.out, budget_min=args.budget, seed=args.seed, episodes=args.episodes,
                  checkpoint=args.checkpoint, total_steps=args.steps, video=not args.no_video, workers=args.workers,
                  ray=ray_address(args.ray),
                  progress=not args.quiet, command=default_command())
    return 0


def _controller_arguments(p: argparse.ArgumentParser) -> None:
    """--guide and --set, for the commands whose --agent may name a controller of the model (`_agent`)."""
    p.add_argument("--guide", default="bundled", help="--agent plan: the keypoint agent whose critic values the "
                                                      "plans' ends (an agent folder; default: the bundled one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="--agent energy or plan: override one of its "
                                                                         "recipe's settings (repeatable; e.g. horizon=24)")


def _number(kind: type, low: float, inclusive: bool, what: str):
    """An argparse type: a `kind` number at least (or above) `low`; anything else is a one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


positive_int = _number(int, 1, True, "a positive integer")
non_negative_int = _number(int, 0, True, "a non-negative integer")
positive_float = _number(float, 0.0, False, "a positive number")
non_negative_float = _number(float, 0.0, True, "a non-negative number")


def _shared(*names: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A parent parser holding one option that several commands share, so that it is declared once."""
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parent.add_argument(*names, **kwargs)
    return parent


class _Subcommand(argparse.ArgumentParser):
    """A command's parser: abbreviated options are refused (a typo must not pick another option)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `keycld-gym`."""
    parser = argparse.ArgumentParser(prog="keycld-gym", description=__doc__, allow_abbrev=False)
    # options many commands share, declared once (argparse parents)
    THREADS = _shared("--threads", type=positive_int, default=2, help="torch CPU threads")
    RECIPE_THREADS = _shared("--threads", type=positive_int, help="torch CPU threads (default: the agent recipe's, agents/)")
    QUIET = _shared("--quiet", action="store_true", help="no progress bars")
    FORCE = _shared("--force", action="store_true", help="replace an --out folder that holds files")
    RAY = _shared("--ray", nargs="?", const="local", metavar="ADDRESS",
                  help="run the independent units on Ray (pip install -e \".[ray]\"): alone, a Ray on this machine "
                       "(started, or the one `ray start` left); 'auto' or HOST:PORT, a running cluster")
    sub = parser.add_subparsers(parser_class=_Subcommand, dest="command", required=True)
    p = sub.add_parser("collect", parents=[QUIET, RAY], help="collect real frames, actions, rewards and states from dm_control")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--out", required=True, help="data set folder (rerun the same command to resume)")
    p.add_argument("--episodes", type=positive_int, required=True, help="sequences to collect, one per episode")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--frames", type=positive_int, default=100, help="frames per sequence, at the physics rate")
    p.add_argument("--regime", choices=("task", "states"), default="task",
                   help="task: the task's own reset + exploration; states: start states set across the state space")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel collection processes")
    p.add_argument("--shard-size", type=positive_int, default=10, help="sequences per shard file")
    p.set_defaults(func=_collect)
    p = sub.add_parser("preview", help="write a PNG of a data set's frames")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sequences", type=positive_int, default=4)
    p.add_argument("--frames", type=positive_int, default=8)
    p.add_argument("--stride", type=positive_int, default=8, help="physics steps between shown frames")
    p.set_defaults(func=_preview)
    p = sub.add_parser("train", parents=[THREADS, QUIET], help="train a KeyCLD model on a collected data set (resumable)")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--data", required=True, help="data set folder from `keycld-gym collect`")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs; the model lands in OUT/model")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=non_negative_int, help="default: the recipe's (0)")
    p.add_argument("--dynamics", choices=("constrained", "unconstrained", "neural_ode"),
                   help="KeyCLD (the recipe's), or one of the project page's ablations")
    p.add_argument("--no-rail-walls", action="store_true", help="no learned wall potential at the rail stops")
    p.add_argument("--keypoint-steps", type=positive_int, help="phase 1 (encoder + renderer) steps")
    p.add_argument("--dynamics-steps", type=positive_int, help="phase 2 (dynamics + reward) steps")
    p.add_argument("--max-horizon", type=non_negative_int, help="longest rollout in the dynamics loss, physics steps (0: whole sequences)")
    p.add_argument("--input-matrix", choices=INPUT_MATRICES,
                   help="B(q) as an MLP; one constant B (exact when the actuator pushes along a fixed direction: "
                        "cartpole); or 'spec', the form the system's actuators name (a force on a keypoint, a torque "
                        "on a joint: exact for every system)")
    p.add_argument("--damping", choices=DAMPINGS,
                   help="damping per keypoint, or on the rates of the system's joints (the real pendulum's and acrobot's)")
    p.add_argument("--linear-potential", action="store_true",
                   help="a learned linear term (uniform gravity) beside the potential MLP")
    p.add_argument("--no-linear-potential", action="store_true", help="no linear potential term (the recipe's on)")
    p.add_argument("--potential-mlp", action="store_true", help="a potential MLP (the recipes' structured form has none)")
    p.add_argument("--no-potential-mlp", action="store_true",
                   help="with --linear-potential: no potential MLP (gravity and rail walls only; with --input-matrix "
                        "constant the exact form of the cartpole, started by a least-squares fit)")
    p.add_argument("--input-keypoints", type=non_negative_int, nargs="+",
                   help="the keypoints the actuators push (default all; cartpole: 0, the cart)")
    p.add_argument("--wall-damping", type=non_negative_float,
                   help="initial damping of the rail walls past a stop (learned; default 0: undamped walls)")
    p.add_argument("--physics-lr", type=positive_float,
                   help="learning rate of the physical constants: mass matrix, damping, walls, constraints (default 1e-2)")
    p.add_argument("--horizon-ramp", type=positive_int, help="dynamics steps over which the horizon grows to its maximum")
    p.add_argument("--rollout-loss", choices=ROLLOUT_LOSSES,
                   help="each rollout's error in the dynamics loss: plain MSE, or robust (outliers such as rail-stop "
                        "contacts weigh less; default: the recipe's)")
    p.add_argument("--mirror-sequences", action=argparse.BooleanOptionalAction, default=None,
                   help="dynamics phase: also learn from each sequence's mirror image (default: the recipe's)")
    p.add_argument("--robust-scale", type=positive_float,
                   help="robust rollout loss: its scale in batch medians (larger: nearer plain MSE for typical "
                        "rollouts; default: the recipe's)")
    p.add_argument("--constraint-weight", type=non_negative_float,
                   help="keypoint phase: weight of the constraints' consistency over a batch (default: the recipe's)")
    p.add_argument("--pivot-separation", type=non_negative_float,
                   help="keypoint phase: weight against keypoints on a learned pivot (default: the recipe's)")
    p.add_argument("--keypoints-from", help="reuse the encoder and renderer of this checkpoint (skips phase 1)")
    p.add_argument("--checkpoint-every", type=positive_float, help="seconds between checkpoints (default 120)")
    p.set_defaults(func=_train)
    p = sub.add_parser("ensemble", parents=[THREADS, QUIET],
                       help="add dynamics members to a trained model (another seed and bootstrap each; resumable)")
    p.add_argument("--checkpoint", required=True, help="a trained model folder; the members are added to it")
    p.add_argument("--members", type=positive_int, default=5, help="members in all, the model's own included")
    p.add_argument("--out", required=True, help="run folder: one training run per further member")
    p.add_argument("--data", help="the model's dynamics data set, where it lies elsewhere than its config records")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes that train the members after the first side by side, sharing --threads")
    p.set_defaults(func=_ensemble)
    p = sub.add_parser("improve", parents=[THREADS, QUIET],
                       help="the real-task loop: real episodes refine the model, the agent continues there (resumable)")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--checkpoint", required=True, help="the model to start from (a folder, or a system name)")
    p.add_argument("--agent", default="bundled", help="the keypoint agent to continue (a folder or 'bundled'); with "
                                                      "--actor plan the planner's guide")
    p.add_argument("--actor", choices=ACTORS, default="agent", help="who acts in the real episodes: the agent, or the "
                                                                    "model's planner guided by it")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    p.add_argument("--data", help="the model's dynamics data set, where it lies elsewhere than its config records")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--episodes", type=positive_int, default=5, help="real episodes per round")
    p.add_argument("--model-steps", type=positive_int, default=200, help="dynamics steps of every member per round")
    p.add_argument("--agent-steps", type=non_negative_int, default=100_000, help="the agent's imagined steps per round")
    p.add_argument("--eval-episodes", type=positive_int, default=10, help="real episodes of the final evaluation")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--max-steps", type=positive_int, help="cut every real episode after this many agent steps (a quick "
                                                          "check; returns off the task's scale)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes for the real episodes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="--actor plan: override one of the planner's "
                                                                         "settings (repeatable)")
    p.set_defaults(func=_improve)
    p = sub.add_parser("evaluate-model", parents=[THREADS], help="VPT, keypoint and reward metrics of a model on held-out sequences")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a system name for the bundled model")
    p.add_argument("--data", required=True, nargs="+", help="held-out data set(s), scored together and per set (their "
                   "sequences need start + horizon frames)")
    p.add_argument("--json", help="write the full result here")
    p.add_argument("--agent-steps", type=positive_int, help="VPT horizon in agent steps (default: the system's "
                   "prediction_horizon_s, or as far as the sequences allow)")
    p.add_argument("--start-frames", type=positive_int, help="frames (physics interval) the start state is estimated from "
                   "(default: 0.32 s of frames, WINDOWS.evaluation_start)")
    p.add_argument("--physics-frames", type=positive_int, default=50, help="horizon of the physics-interval VPT")
    p.add_argument("--max-sequences", type=positive_int)
    p.add_argument("--no-references", action="store_true", help="skip the true-simulator reference")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_evaluate_model)
    p = sub.add_parser("video", parents=[THREADS], help="held-out real sequences beside each model's open-loop prediction (GIF or MP4)")
    p.add_argument("--checkpoint", required=True, help="model folder, or a system name for the bundled model")
    p.add_argument("--compare", action="append", help="another model of the system to show beside it (repeatable)")
    p.add_argument("--label", action="append", help="a panel label per model, in order (default: KeyCLD or the ablation)")
    p.add_argument("--data", required=True, help="held-out data set (the checkpoint's validation split if it trained on it)")
    p.add_argument("--out", required=True, help="the video file: .gif or .mp4")
    p.add_argument("--sequences", type=_sequences, default=3, help="how many held-out sequences, or their indices (0,4,7)")
    p.add_argument("--agent-steps", type=positive_int, help="prediction length (default: as long as the sequences allow)")
    p.add_argument("--scale", type=positive_int, default=3, help="pixels per frame pixel")
    p.set_defaults(func=_video)
    p = sub.add_parser("fit-reward", parents=[THREADS, QUIET, FORCE], help="refit a model's reward head on states estimated from its training data")
    p.add_argument("--checkpoint", required=True, help="model folder, or a system name for the bundled model")
    p.add_argument("--data", required=True, action="append", help="data set(s) the model was trained on (repeatable)")
    p.add_argument("--out", required=True, help="folder for the new checkpoint")
    p.add_argument("--steps", type=positive_int, default=4000)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_fit_reward)
    p = sub.add_parser("fit-constants", parents=[THREADS, QUIET, FORCE],
                       help="refit a model's physical constants (and its members') on open-loop predictions over long windows")
    p.add_argument("--checkpoint", required=True, help="model folder, or a system name for the bundled model")
    p.add_argument("--data", required=True, action="append", help="the dynamics data set the model was trained on")
    p.add_argument("--out", required=True, help="folder for the new checkpoint")
    p.add_argument("--steps", type=positive_int, default=5, help="Gauss-Newton iterations")
    p.add_argument("--max-sequences", type=positive_int, help="fit on at most this many training sequences (default: all)")
    p.add_argument("--limit", type=positive_float, default=0.1,
                   help="keypoint error (image units) past which a window's frames stop counting")
    p.add_argument("--robust", type=positive_float, default=0.01, help="the Huber loss's knee (image units)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_fit_constants)
    p = sub.add_parser("fit-renderer", parents=[THREADS, QUIET, FORCE], help="refit a model's renderer so its frames read back (encoder) as the keypoints drawn")
    p.add_argument("--checkpoint", required=True, help="model folder, or a system name for the bundled model")
    p.add_argument("--data", required=True, action="append", help="data set(s) the model was trained on (repeatable)")
    p.add_argument("--out", required=True, help="folder for the new checkpoint")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--weight", type=non_negative_float, default=10.0, help="weight of the read-back term beside the reconstruction")
    p.add_argument("--foreground-weight", type=non_negative_float, default=TrainConfig.foreground_weight,
                   help="weight of the moving parts' pixels in the reconstruction (1: plain MSE, as VPT scores frames)")
    p.add_argument("--full-resolution", action="store_true",
                   help="fit a fresh renderer that draws at the frame's resolution in place of the model's")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=_fit_renderer)
    p = sub.add_parser("train-agent", parents=[RECIPE_THREADS, QUIET], help="train an SB3 agent in a model's imagination only (resumable)")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--obs", choices=("keypoints", "pixels"), default="keypoints")
    p.add_argument("--algo", choices=("sac", "ppo"), default="sac")
    p.add_argument("--out", required=True, help="run folder: checkpoints, logs, learning curve; the agent lands in OUT/agent")
    p.add_argument("--checkpoint", help="world model folder (default: the bundled model)")
    p.add_argument("--steps", type=positive_int, help="imagined agent steps (default: the recipe's budget in agents/)")
    p.add_argument("--budget", type=positive_float, help="stop after this many minutes of training")
    p.add_argument("--noise", choices=NOISES, help="observation noise: the real side's measured error as independent draws, "
                   "or (keypoints) noisy frames through the real env's filter, or none (default: the recipe's)")
    p.add_argument("--eval-every", type=positive_int, default=5000, help="agent steps between learning-curve points")
    p.add_argument("--eval-episodes", type=positive_int, default=16, help="imagined episodes per learning-curve point")
    p.add_argument("--real-eval-every", type=non_negative_int, default=0,
                   help="every n-th learning-curve point also measured in the real task (0: never); it never learns from it")
    p.add_argument("--real-eval-episodes", type=positive_int, default=2)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--checkpoint-every", type=positive_float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--world", choices=("imagined", "true"), default="imagined",
                   help="true: a reference, the same recipe trained on the true simulator's state (keypoints mapped "
                        "into the model's); the default trains in imagination only")
    p.add_argument("--data", help="--world true: held-out real sequences to fit that map on")
    p.add_argument("--uncertainty-penalty", type=non_negative_float,
                   help="reward minus this times the ensemble's disagreement in pixels (MOPO; default: the recipe's)")
    p.add_argument("--uncertainty-limit", type=positive_float,
                   help="end imagined training episodes where the disagreement passes this many pixels (MOReL; "
                        "default: the recipe's)")
    p.add_argument("--energy-shaping", type=non_negative_float,
                   help="add this many times the change of the model's energy potential to each imagined training "
                        "reward (potential-based shaping toward the upright energy; default: the recipe's)")
    p.add_argument("--normalize-reward", action=argparse.BooleanOptionalAction,
                   help="scale training rewards by the running spread of the discounted return (SB3's VecNormalize, "
                        "rewards only; default: the recipe's)")
    p.set_defaults(func=_train_agent)
    p = sub.add_parser("evaluate-agent", parents=[THREADS, RAY], help="an agent's return in the real task and in imagination")
    p.add_argument("--agent", required=True, help="agent folder (OUT/agent of train-agent), 'bundled', 'energy' "
                                                  "(the model's energy-shaping controller, no RL) or 'plan' (model-"
                                                  "predictive control in the model, guided by --guide's value)")
    _controller_arguments(p)
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--obs", choices=("keypoints", "pixels"), help="check the agent acts on these observations")
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--seed", type=non_negative_int, default=100_000, help="episode i of the real task is reset with seed + i")
    p.add_argument("--checkpoint", help="world model folder (default: the bundled model)")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--no-imagined", action="store_true", help="skip the imagined episodes")
    p.add_argument("--max-steps", type=positive_int, help="a quick check: cut each episode after this many agent steps "
                                                 "(its returns are then not on the task's 0-1000 scale)")
    p.add_argument("--workers", type=positive_int, default=2, help="processes running real episodes side by side")
    p.add_argument("--allow-other-model", action="store_true",
                   help="evaluate in a --checkpoint other than the model the agent was trained in")
    p.add_argument("--real-estimator", help="keypoints: estimate the real states with this instead of the agent recipe's "
                                            "estimator: 'window', 'filter' or JSON such as "
                                            "'{\"kind\": \"Filtering\", \"acceleration_std\": 0.05, \"bias_std\": 0.03}'; "
                                            "recorded in the result, and bundle-agent keeps it")
    p.set_defaults(func=_evaluate_agent)
    p = sub.add_parser("benchmark", parents=[RECIPE_THREADS, QUIET, RAY], help="the main job: train in imagination, evaluate in the real task, report")
    p.add_argument("--system", default="cartpole", choices=sorted(SYSTEMS))
    p.add_argument("--out", default="benchmark", help="report folder (rerun to resume an interrupted run)")
    p.add_argument("--budget", type=positive_float, help="minutes of training in imagination (default: the recipe's; cartpole 12)")
    p.add_argument("--steps", type=positive_int, help="imagined agent steps at most (default: the recipe's)")
    p.add_argument("--episodes", type=positive_int, default=10, help="real evaluation episodes")
    p.add_argument("--checkpoint", help="world model folder (default: the bundled model)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--workers", type=positive_int, default=2, help="processes running real evaluation episodes side by side")
    p.set_defaults(func=_benchmark)
    p = sub.add_parser("sweep", parents=[QUIET, RAY], help="agents of a system's bundled recipe over seeds and settings on Ray "
                                                          "Tune, ranked by real return on selection seeds (resumable)")
    p.add_argument("--system", default="cartpole", choices=sorted(SYSTEMS))
    p.add_argument("--out", required=True, help="sweep folder: trials/NAME (each a train-agent run), Tune's state, "
                                                "sweep.json and sweep.md (rerun to continue)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2, 3], help="the trials' training seeds")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a setting's values, crossed with the seeds and the "
                   "other settings: an argument of the recipe's SB3 algorithm (learning_rate=3e-4,1e-3) or "
                   "uncertainty_penalty / uncertainty_limit (repeatable)")
    p.add_argument("--checkpoint", help="world model folder (default: the bundled model)")
    p.add_argument("--budget", type=positive_float, help="minutes of training per trial (default: the recipe's benchmark budget)")
    p.add_argument("--steps", type=positive_int, help="imagined agent steps per trial at most (default: the recipe's)")
    p.add_argument("--eval-every", type=positive_int, help="agent steps between learning-curve points (reported to Tune)")
    p.add_argument("--selection-episodes", type=positive_int, default=3, help="real episodes that rank each trial")
    p.add_argument("--selection-seed", type=non_negative_int, default=SELECTION_SEED,
                   help="the selection episodes' first reset seed (apart from the evaluation's)")
    p.add_argument("--episodes", type=non_negative_int, default=10, help="real episodes of the best trial on the "
                                                                         "evaluation seeds (0: none)")
    p.add_argument("--seed", type=non_negative_int, default=EVAL_SEED, help="the evaluation's first reset seed")
    p.add_argument("--max-steps", type=positive_int, help="a quick check: cut each real episode after this many agent steps")
    p.set_defaults(func=_sweep)
    p = sub.add_parser("train-rllib", parents=[QUIET, RAY], help="RLlib PPO on a system's keypoint id, its env runners (Ray "
                                                                "actors) stepping the batched imagination; then the real protocol")
    p.add_argument("--system", default="pendulum", choices=sorted(SYSTEMS))
    p.add_argument("--out", required=True, help="run folder: RLlib's checkpoint, the curve, state.json (rerun to continue)")
    p.add_argument("--checkpoint", help="world model folder (default: the bundled model)")
    p.add_argument("--iterations", type=positive_int, default=100, help="PPO iterations (each env-runners x envs x 64 steps)")
    p.add_argument("--env-runners", type=positive_int, default=1, help="RLlib env runners (Ray actors, one CPU each)")
    p.add_argument("--envs-per-runner", type=positive_int, default=64, help="imagined envs each runner steps as one batch")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--episodes", type=non_negative_int, default=10, help="real evaluation episodes afterwards (0: none)")
    p.add_argument("--eval-seed", type=non_negative_int, default=EVAL_SEED, help="the evaluation's first reset seed")
    p.add_argument("--workers", type=positive_int, default=1, help="local processes for the real episodes (without --ray)")
    p.set_defaults(func=_train_rllib)
    p = sub.add_parser("pipeline", parents=[THREADS, QUIET], help="from nothing to a bundle-ready model by the system's recipe (resumable)")
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--out", required=True, help="run folder: data sets, each step's output; the model lands in OUT/model")
    p.add_argument("--until", help="stop after this step (collect-<data>, keypoints, dynamics, reward, renderer, ensemble, "
                                   "constants, exploring-starts, observation-noise, evaluate; ensemble and constants where "
                                   "the recipe asks for them)")
    p.add_argument("--training-frames", type=positive_int, help="real training frames (default: the recipe's); both training "
                                                         "data sets scaled alike, for the data-efficiency curve")
    p.add_argument("--seed", type=non_negative_int, help="training seed of every step (default: the recipe's, 0); the "
                                                         "data sets keep the recipe's seeds, so runs of several seeds "
                                                         "differ only in training")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="collection processes, and processes that train ensemble members side by side")
    p.set_defaults(func=_pipeline)
    p = sub.add_parser("ablations", parents=[THREADS, QUIET, RAY], help="KeyCLD against the Lagrangian without constraints and the neural ODE, on a "
                                         "finished pipeline run (resumable)")
    p.add_argument("--run", required=True, help="the folder of a finished `keycld-gym pipeline` run")
    p.add_argument("--workers", type=positive_int, default=1, help="ablation trainings side by side, each in its own "
                                                                    "process (on Ray: the run folder on storage every node sees)")
    p.set_defaults(func=_ablations)
    p = sub.add_parser("observation-noise", parents=[THREADS], help="measure the real state estimate's error and store it beside the weights")
    p.add_argument("--checkpoint", required=True, help="model folder (or a bundled name); the result is written into it")
    p.add_argument("--data", required=True, help="held-out real sequences (a collected data set the model never trained on)")
    p.add_argument("--max-sequences", type=positive_int)
    p.add_argument("--out", help="folder to write observation_noise.json to (default: the checkpoint)")
    p.add_argument("--real-estimator", help="the estimator to measure: 'window', 'filter' or its JSON (default: the "
                                            "one the system's bundled keypoint recipe meets the real task with)")
    p.set_defaults(func=_observation_noise)
    p = sub.add_parser("diagnose", parents=[THREADS], help="a model's keypoints, response, online estimate and VPT against the true system; an agent on true keypoints")
    p.add_argument("--checkpoint", required=True, help="model folder, or a system name for the bundled model")
    p.add_argument("--data", required=True, nargs="+", help="held-out real sequences (with their true states): one set, "
                   "or several for the prediction budget (the first also fits the keypoint map)")
    p.add_argument("--agent", help="also run this keypoint agent (folder, 'bundled', 'energy' or 'plan', as "
                                   "evaluate-agent takes them) on true keypoints in the real task")
    _controller_arguments(p)
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--seed", type=non_negative_int, default=100_000, help="episode i of the real task is reset with seed + i")
    p.add_argument("--no-true-physics", action="store_true", help="skip the VPT with the true constants (and the "
                   "prediction budget)")
    p.add_argument("--real-estimator", help="the online estimate scored against the true state: 'window', 'filter' or "
                                            "its JSON (default: the agent's recipe's, else the system's bundled "
                                            "keypoint agent's)")
    p.add_argument("--estimate-episodes", type=non_negative_int, default=0,
                   help="also run --agent this many episodes in the real task on its estimate (rendered, one "
                        "process) and score the estimate at every step it acts on")
    p.add_argument("--json", help="write the full result here")
    p.set_defaults(func=_diagnose)
    p = sub.add_parser("mirror-average", help="average each frame's keypoints with its mirror image's (on) or not "
                                              "(off), in a trained model's config")
    p.add_argument("--checkpoint", required=True, help="model folder, or a system name for the bundled model")
    p.add_argument("setting", choices=("on", "off"))
    p.set_defaults(func=_mirror_average)
    p = sub.add_parser("bundle-model", help="copy a finished model into the package as its system's bundled model")
    p.add_argument("--model", required=True, help="a finished model folder (OUT/model of train or pipeline)")
    p.add_argument("--eval", help="its evaluate-model JSON on held-out data (recorded in the model card)")
    p.add_argument("--dest", help="folder to bundle into (default: keycld_gym/weights/<system>)")
    p.set_defaults(func=_bundle_model)
    p = sub.add_parser("bundle-agent", help="copy a trained agent into the package as the bundled agent")
    p.add_argument("--agent", required=True, help="an agent folder (OUT/agent of train-agent)")
    p.add_argument("--eval", required=True, help="its evaluate-agent JSON, or a benchmark.json")
    p.add_argument("--dest", help="folder to bundle into (default: keycld_gym/weights/<system>-<algo>-<obs>)")
    p.set_defaults(func=_bundle_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keycld-gym` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyCLDError, ValueError) as err:
        print(f"keycld-gym {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing input, an output that is a file, a read-only disk: name the path
        where = f": {err.filename}" if err.filename else ""
        print(f"keycld-gym {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
