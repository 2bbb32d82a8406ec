"""The one-command pipeline and the model recipes, end to end on a tiny pendulum and a tiny acrobot."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from keycld_gym.cli import build_parser, main, train_config_from_args
from keycld_gym.files import json_roundtrip
from keycld_gym.sim.systems import WINDOWS, get_system
from keycld_gym.training.ablations import ABLATION_DYNAMICS, LABELS, AblationStudy
from keycld_gym.training.pipeline import RECORD, Pipeline
from keycld_gym.training.recipes import RECIPES, DataPlan, ModelRecipe, get_recipe


def test_every_system_has_a_recipe_with_held_out_data_of_another_seed():
    for system, recipe in RECIPES.items():
        assert recipe.system == system
        seeds = {recipe.keypoint_data.seed, recipe.dynamics_data.seed}
        assert recipe.eval_data.seed not in seeds
        # held-out sets of both regimes, long enough for the whole prediction horizon
        spec = get_system(system)
        need = spec.frames(WINDOWS.evaluation_start) + spec.prediction_steps * spec.action_repeat
        assert [p.regime for p in recipe.eval_plans] == ["task", "states"]
        assert all(p.frames >= need and p.seed not in seeds for p in recipe.eval_plans)
        assert recipe.training_frames <= 50_000
        # the bundled models are ensembles, their keypoint phases checked
        assert recipe.ensemble_members == 5 and recipe.keypoint_limit_px and recipe.keypoint_attempts > 1
    with pytest.raises(ValueError, match="unknown training settings"):
        replace(RECIPES["pendulum"], train={"keypoint_stepz": 3})
    with pytest.raises(ValueError, match="keypoint_attempts must be at least 1"):
        replace(RECIPES["pendulum"], keypoint_attempts=0)
    with pytest.raises(ValueError, match="keypoint_limit_px must be positive"):
        replace(RECIPES["pendulum"], keypoint_limit_px=0.0)


def test_train_defaults_to_the_recipe_and_flags_override_it():
    """`keycld-gym train` reads the system's recipe: for cartpole, the bundled model's dynamics settings."""
    bundled = json.loads(open("keycld_gym/weights/cartpole/config.json").read())["training"]["config"]
    args = build_parser().parse_args(["train", "--system", "cartpole", "--data", bundled["data"], "--out", "x",
                                      "--keypoints-from", bundled["keypoints_from"]])
    config = json_roundtrip(train_config_from_args(args).to_dict())
    for key in ("dynamics_steps", "max_horizon", "horizon_ramp_steps", "keypoint_steps", "seed"):
        assert config[key] == bundled[key], key
    for key, value in bundled["model"]["dynamics"].items():
        assert config["model"]["dynamics"][key] == value, key
    args = build_parser().parse_args(["train", "--system", "pendulum", "--data", "d", "--out", "x",
                                      "--damping", "keypoints", "--potential-mlp", "--max-horizon", "0"])
    config = train_config_from_args(args)
    assert config.model.dynamics.input_matrix == "spec" and config.model.dynamics.damping == "keypoints"
    assert config.model.dynamics.potential_mlp and config.max_horizon is None


@pytest.mark.slow
def test_tiny_pendulum_pipeline_end_to_end(tmp_path, capsys):
    """Collect, both training phases, refits, noise, evaluation; then the imagined env, an agent, a real episode."""
    from gymnasium.utils.env_checker import check_env

    from keycld_gym.envs.imagined_env import KeyCLDEnv, KeyCLDVectorEnv
    from keycld_gym.errors import CheckpointError, TrainingFailedError
    from keycld_gym.model.checkpoint import load_model
    from keycld_gym.rl.agent import load_agent
    from keycld_gym.rl.agent_evaluation import evaluate_agent
    from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent

    torch.set_num_threads(1)
    spec_form = replace(get_recipe("pendulum").model.dynamics, hidden=16)
    recipe = ModelRecipe(
        system="pendulum",
        keypoint_data=DataPlan("short", episodes=4, frames=20, seed=0),
        dynamics_data=DataPlan("long", episodes=4, frames=40, seed=2),
        eval_data=DataPlan("eval", episodes=2, frames=110, seed=1),  # 0.32 s start + 46 agent steps of 2
        states_eval_data=DataPlan("states", episodes=1, frames=110, seed=3, regime="states"),
        model=replace(TINY_MODEL, dynamics=spec_form, reward_output="sigmoid"),
        train=dict(keypoint_steps=4, keypoint_batch=8, dynamics_steps=3, dynamics_batch=4, horizon_ramp_steps=2,
                   val_fraction=0.3, checkpoint_every_s=1e9),
        reward_steps=5, renderer_steps=2, constants_steps=1,
        keypoint_limit_px=1e-6, keypoint_attempts=2,  # no keypoint phase passes: the check, then the retry
    )
    out = tmp_path / "run"
    with pytest.raises(TrainingFailedError, match="missed on every attempt"):
        Pipeline(recipe, out, workers=1, progress=False, command="pytest").run(until="dynamics")
    tried = json.loads((out / RECORD).read_text())["keypoint_attempts"]
    assert [a["seed"] for a in tried] == [0, 1000] and [a["folder"] for a in tried] == ["keypoints", "keypoints-2"]
    assert all(a["rms_px"] > 0 and a["frames"] == 2 * 5 and "link0_angle_rms_rad" in a["state"] for a in tried)
    # a limit the better attempt passes: the rerun trains no attempt again and builds on the first that passes
    best = min(tried, key=lambda a: a["rms_px"])
    recipe = replace(recipe, keypoint_limit_px=best["rms_px"])
    stamp = (out / "keypoints-2" / "model" / "model.safetensors").stat().st_mtime_ns
    record = Pipeline(recipe, out, workers=1, progress=False, command="pytest").run(until="dynamics")
    assert record["keypoint_model"] == best["folder"] and len(record["keypoint_attempts"]) == 2
    assert (out / "keypoints-2" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    built_on = load_model(out / best["folder"] / "model").encoder.state_dict()
    assert all(torch.equal(v, built_on[k]) for k, v in load_model(out / "dynamics" / "model").encoder.state_dict().items())
    assert list(record["steps"]) == ["collect-short", "collect-long", "collect-eval", "collect-states", "keypoints",
                                     "dynamics"]
    fit = json.loads((out / "dynamics" / "physics_fit.json").read_text())
    assert len(fit["input"]) == 1 and len(fit["damping"]) == 1  # one torque gain, one joint damping
    # a rerun skips what is done and finishes the rest
    record = Pipeline(recipe, out, workers=1, progress=True, command="pytest").run()
    assert "keypoints: done already" in capsys.readouterr().out
    assert set(record["steps"]) >= {"reward", "renderer", "exploring-starts", "observation-noise", "evaluate"}
    assert all(s["wall_s"] >= 0 for s in record["steps"].values())
    assert json.loads((out / RECORD).read_text())["total_wall_s"] == record["total_wall_s"]

    model = load_model(out / "model")
    assert model.config.dynamics.input_matrix == "spec" and model.dynamics.actuator_gain.abs().item() > 0
    assert model.checkpoint_config["reward_head"] and model.checkpoint_config["renderer"]
    assert (out / "model" / "observation_noise.json").exists() and (out / "model" / "start_frames.npz").exists()
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "all, all" and result["sequences"] == 3 and result["start_frames"] == 17  # 0.32 s at 0.02 s
    # the horizon: the spec's 19.6 s, as far as 110 frames allow
    assert [x["regime"] for x in result["sets"]] == ["task", "states"] and result["horizon_capped_by_data"]
    assert result["agent_steps"] == (110 - 17) // 2 and np.isfinite(result["model"]["vpt_agent_s_median"])
    assert np.isfinite(result["model"]["vpt_agent_median"]) and "link0_angle_rms_rad" in result["keypoints"]
    rewards = result["reward_sequences"]
    assert rewards["samples"] == 3 * 13 * 8  # 13 windows of 9 frames (0.16 s) per 110-frame sequence and rewards["rewarded_samples"] + rewards["near_samples"] <= rewards["samples"]
    assert np.isfinite(rewards["rmse"])

    check_env(KeyCLDEnv("pendulum", out / "model", obs_type="keypoints"), skip_render_check=True)
    # exploring starts: training episodes may start anywhere in the model's training data
    venv = KeyCLDVectorEnv(4, "pendulum", out / "model", obs_type="keypoints", exploring_starts=1.0)
    obs, _ = venv.reset(seed=0)
    starts, _ = venv.sim.bank_states(venv.explore_bank)
    assert all(np.abs(starts.flatten(1).numpy() - o[:2]).max(1).min() < 1e-5 for o in obs)
    with pytest.raises(CheckpointError, match="exploring_starts.npz"):
        KeyCLDVectorEnv(2, "pendulum", out / "dynamics" / "model", obs_type="keypoints", exploring_starts=0.5)
    config = AgentTrainConfig(system="pendulum", checkpoint=str(out / "model"), total_steps=32, eval_every=32,
                              eval_episodes=1, observation_noise="measured")
    train_agent(config, tmp_path / "agent", progress=False, command="pytest")
    agent = load_agent(tmp_path / "agent" / "agent", "pendulum", "keypoints")
    real = evaluate_agent(agent, episodes=1, seed=5, checkpoint=str(out / "model"), workers=1, max_steps=50)
    assert real["episodes"] == 1 and 0.0 <= real["real_return_mean"] <= 1000.0
    assert real["model_real_frames"] == 4 * 20 + 4 * 40
    (tmp_path / "real.json").write_text(json.dumps(real))

    # bundled as the package bundles its own: the folders load, the cards say how they were made
    assert main(["bundle-model", "--model", str(out / "model"), "--eval", str(out / "eval.json"),
                 "--dest", str(tmp_path / "bundle" / "model")]) == 0
    assert main(["bundle-agent", "--agent", str(tmp_path / "agent" / "agent"), "--eval", str(tmp_path / "real.json"),
                 "--dest", str(tmp_path / "bundle" / "agent")]) == 0
    assert load_model(tmp_path / "bundle" / "model").spec.name == "pendulum"
    card = (tmp_path / "bundle" / "model" / "README.md").read_text()
    assert "keycld-gym observation-noise" in card and "physical constants refit" in card
    assert "each cut after 50 agent steps" in (tmp_path / "bundle" / "agent" / "README.md").read_text()
    bundled = load_agent(tmp_path / "bundle" / "agent", "pendulum", "keypoints")
    assert bundled.info["evaluation"]["real_returns"] == real["real_returns"]

    # the diagnostics against the true pendulum: keypoints in pixels, the response, true constants, an oracle agent
    assert main(["diagnose", "--checkpoint", str(out / "model"), "--data", str(out / "data" / "eval"), "--agent",
                 str(tmp_path / "agent" / "agent"), "--episodes", "1", "--json", str(tmp_path / "diag.json"),
                 "--threads", "1"]) == 0
    diag = json.loads((tmp_path / "diag.json").read_text())
    assert diag["keypoints"]["frames"] == 2 * 22 and diag["keypoints"]["rms_px"] > 0
    assert np.isfinite(diag["subpixel"]["slope_mean"]) and diag["subpixel"]["jitter_rms_px"] >= 0
    assert diag["true_physics"]["fit"]["samples"] > 0 and np.isfinite(diag["true_physics"]["vpt_agent_median"])
    assert np.isfinite(diag["response"]["actuator_relative_error"])
    assert diag["response_near_goal"]["states"] == "near the goal"
    assert len(diag["response_near_goal"]["actuator_gain_per_keypoint"]) == 1  # the bob
    assert 0.0 <= diag["oracle_agent"]["real_return_mean"] <= 1000.0
    assert "real return" in capsys.readouterr().out

    # the ablation study on the same run: same data, budget, encoder and renderer; only the dynamics differ. The
    # two trainings are units of work (keycld_gym.parallel), here side by side in two processes
    rows = AblationStudy(out, recipe=recipe, progress=False, command="pytest").run_all(workers=2, threads=1)
    assert [r["model"] for r in rows] == [LABELS[k] for k in
                                          ("constrained", "unconstrained", "neural_ode", "hold_frame", "true_simulator_noisy")]
    for kind in ABLATION_DYNAMICS:
        ablation = load_model(out / "ablations" / kind / "model")
        assert ablation.config.dynamics.kind == kind and ablation.config.dynamics.hidden == 16
        for part in ("encoder", "renderer"):
            theirs, ours = getattr(ablation, part).state_dict(), getattr(model, part).state_dict()
            assert all(torch.equal(theirs[k], ours[k]) for k in ours)
        assert json.loads((out / "ablations" / kind / "eval.json").read_text())["sequences"] == 3
    assert rows[1]["max_constraint_violation"] > rows[0]["max_constraint_violation"] or not rows[1]["rollout_finite"]
    assert all(np.isfinite(r["vpt_agent_median"]) for r in rows) and rows[0]["training_min"] >= 0
    table = (out / "ablations.md").read_text()
    assert table.count("\n") == len(rows) + 2 and "ablation: neural ODE" in table


def test_pipeline_refuses_another_systems_folder(tmp_path):
    (tmp_path / RECORD).write_text(json.dumps({"system": "cartpole", "steps": {}}))
    with pytest.raises(ValueError, match="holds a cartpole pipeline"):
        Pipeline("pendulum", tmp_path)
    assert main(["pipeline", "--system", "pendulum", "--out", str(tmp_path), "--until", "nope"]) == 2


def test_ablations_need_a_finished_pipeline(tmp_path, capsys):
    assert main(["ablations", "--run", str(tmp_path)]) == 2
    assert "run `keycld-gym pipeline" in capsys.readouterr().err
    (tmp_path / RECORD).write_text(json.dumps({"system": "pendulum", "steps": {"keypoints": {"wall_s": 1.0}}}))
    with pytest.raises(ValueError, match="has not finished"):
        AblationStudy(tmp_path)


def test_a_recipe_on_fewer_frames_scales_both_training_sets_alike(tmp_path, capsys):
    """`--training-frames`: the data-efficiency curve's models differ only in their real data."""
    recipe = get_recipe("cartpole")
    small = recipe.with_training_frames(10_000)
    assert abs(small.training_frames - 10_000) <= 100
    for name in ("keypoint_data", "dynamics_data"):
        theirs, ours = getattr(recipe, name), getattr(small, name)
        assert (ours.frames, ours.seed, ours.name) == (theirs.frames, theirs.seed, theirs.name)
        assert abs(ours.episodes / theirs.episodes - 10_000 / recipe.training_frames) < 0.01
    assert small.eval_data == recipe.eval_data and small.train == recipe.train and small.model == recipe.model
    assert recipe.with_training_frames(1).dynamics_data.episodes == 1
    with pytest.raises(ValueError, match="must be positive"):
        recipe.with_training_frames(0)
    # a run folder remembers its data sets: resuming it with another size is refused
    (tmp_path / RECORD).write_text(json.dumps(Pipeline(small, tmp_path).record))
    with pytest.raises(ValueError, match="other data sets"):
        Pipeline(recipe, tmp_path)
    assert Pipeline(small, tmp_path).record["training_frames"] == small.training_frames
    assert main(["pipeline", "--system", "cartpole", "--out", str(tmp_path), "--training-frames", "45000",
                 "--until", "nope"]) == 2
    assert "other data sets" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_acrobot_pipeline_end_to_end(tmp_path):
    """The acrobot's recipe (constrained full-resolution keypoints, a driven elbow, two damped
    joints), shrunk: collect, train, refit, evaluate; then the imagined env, an agent, a real episode."""
    from gymnasium.utils.env_checker import check_env

    from keycld_gym.agents import bundled_recipe
    from keycld_gym.envs.imagined_env import KeyCLDEnv
    from keycld_gym.model.checkpoint import load_model
    from keycld_gym.rl.agent import load_agent
    from keycld_gym.rl.agent_evaluation import evaluate_agent
    from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent

    torch.set_num_threads(1)
    full = get_recipe("acrobot")
    tiny = replace(TINY_MODEL, encoder=replace(full.model.encoder, channels=8, depth=1),
                   renderer=replace(full.model.renderer, channels=8, background_channels=4),
                   dynamics=replace(full.model.dynamics, hidden=16), reward_output="sigmoid")
    recipe = ModelRecipe(
        system="acrobot",
        keypoint_data=DataPlan("short", episodes=3, frames=20, seed=0),
        dynamics_data=DataPlan("long", episodes=3, frames=40, seed=2),
        eval_data=DataPlan("eval", episodes=2, frames=213, seed=1),  # 0.32 s start + 45 agent steps of 4
        model=tiny,
        train=dict(full.train, keypoint_steps=4, keypoint_batch=8, dynamics_steps=3, dynamics_batch=4,
                   horizon_ramp_steps=2, max_horizon=8, val_fraction=0.4, checkpoint_every_s=1e9),
        reward_steps=5, renderer_steps=2, renderer_fit=full.renderer_fit, constants_steps=1,
        noise_estimator="filter",  # not the acrobot agent's (the window): the recipe's choice is measured
        keypoint_limit_px=None,  # four keypoint steps find no arm; the check is the pendulum test's
    )
    out = tmp_path / "run"
    record = Pipeline(recipe, out, workers=1, progress=False, command="pytest").run()
    assert {"keypoints", "dynamics", "reward", "constants", "evaluate"} <= set(record["steps"])
    fit = json.loads((out / "dynamics" / "physics_fit.json").read_text())
    assert len(fit["input"]) == 1 and len(fit["damping"]) == 2  # the elbow's torque; both joints damped

    model = load_model(out / "model")
    assert model.config.encoder.constrained and model.config.encoder.full_resolution
    assert model.checkpoint_config["renderer"]["weight"] == full.renderer_fit["weight"]  # the recipe's refit
    # the constants refit in place, after the renderer's: both recorded, the start frames kept
    constants = model.checkpoint_config["constants"]
    assert constants["steps"] == 1 and constants["model"]["after"]["cost"] <= constants["model"]["before"]["cost"]
    assert (out / "model" / "start_frames.npz").exists() and (out / "model" / "exploring_starts.npz").exists()
    assert json.loads((out / "model" / "observation_noise.json").read_text())["estimator"]["kind"] == "Filtering"
    frames = np.load(sorted((out / "data" / "eval").glob("shard_*.npz"))[0])["frames"][0, :5]
    kp = model.encode_frames(frames)  # placed on the encoder's own constants: the arm lengths hold exactly
    assert model.keypoint_constraints.phi(kp).abs().max() < 1e-3
    # the arm lengths the keypoint phase learned, carried through the later steps
    learned = load_model(out / "keypoints" / "model").keypoint_constraints.length
    assert torch.equal(model.keypoint_constraints.length, learned)
    result = json.loads((out / "eval.json").read_text())
    assert result["sequences"] == 2 and result["start_frames"] == 33  # 0.32 s at 0.01 s
    assert np.isfinite(result["model"]["vpt_agent_median"])
    assert {"link0_angle_rms_rad", "link1_angle_rms_rad"} <= set(result["keypoints"])

    check_env(KeyCLDEnv("acrobot", out / "model", obs_type="keypoints"), skip_render_check=True)
    # the acrobot's bundled recipe (PPO on 256 batched envs): one rollout
    config = AgentTrainConfig(system="acrobot", algo=bundled_recipe("acrobot").algo, checkpoint=str(out / "model"),
                              total_steps=32, eval_every=32, eval_episodes=1)
    train_agent(config, tmp_path / "agent", progress=False, command="pytest")
    agent = load_agent(tmp_path / "agent" / "agent", "acrobot", "keypoints")
    real = evaluate_agent(agent, episodes=1, seed=5, checkpoint=str(out / "model"), workers=1, max_steps=20)
    assert real["episodes"] == 1 and 0.0 <= real["real_return_mean"] <= 1000.0
    assert real["model_real_frames"] == 3 * 20 + 3 * 40
