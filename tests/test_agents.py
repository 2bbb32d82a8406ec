"""Agents trained in imagination and evaluated in the real task: recipes, agent files, noise, training, evaluation."""

import json

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecNormalize

from keycld_gym.agents import RECIPES, AgentRecipe, get_recipe
from keycld_gym.errors import CheckpointError
from keycld_gym.model.tracking import Tracking, estimator_to_dict
from keycld_gym.rl.agent import AGENT_WEIGHTS, Agent, imagined_vec_env, load_agent


@pytest.fixture(scope="module")
def model_dir(noisy_model_dir):
    return noisy_model_dir


def _tiny_sac(model_dir, steps=64):
    from stable_baselines3 import SAC

    recipe = get_recipe("cartpole", "keypoints", "sac")
    venv = imagined_vec_env(recipe, 2, model_dir, seed=0)
    algo = SAC("MlpPolicy", venv, learning_starts=16, batch_size=16, gradient_steps=1, seed=0, device="cpu",
               policy_kwargs=recipe.policy_kwargs)
    algo.learn(steps)
    return recipe, algo


def test_recipes_cover_every_system_and_check_their_fields():
    for system in ("pendulum", "cartpole", "acrobot"):
        for obs, algo, policy in (("keypoints", "sac", "MlpPolicy"), ("keypoints", "ppo", "MlpPolicy"),
                                  ("pixels", "ppo", "CnnPolicy")):
            r = get_recipe(system, obs, algo)
            assert (r.system, r.obs_type, r.algo, r.policy) == (system, obs, algo, policy)
            assert AgentRecipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert get_recipe("cartpole", "pixels", "ppo").frame_stack > 1
    assert len(RECIPES) == 16  # 4 per system, an energy-shaping controller each, the acrobot's planner
    assert get_recipe("acrobot", "keypoints", "mppi").policy == "MPPI"
    assert get_recipe("pendulum", "keypoints", "energy").policy == "EnergyShaping"
    with pytest.raises(ValueError, match="no agent recipe"):
        get_recipe("cartpole", "keypoints", "dqn")
    with pytest.raises(ValueError, match="applies to keypoint observations"):
        get_recipe("cartpole", "pixels", "ppo").replace(observation_noise="measured")
    with pytest.raises(ValueError, match="unknown recipe fields"):
        AgentRecipe.from_dict({**get_recipe("cartpole").to_dict(), "gamma": 0.9})
    with pytest.raises(ValueError, match="action_gain"):
        get_recipe("cartpole").replace(action_gain=(0.0, 1.0))
    with pytest.raises(ValueError, match="exploring_starts"):
        get_recipe("pendulum").replace(exploring_starts=1.5)


def test_each_system_names_its_bundled_recipes_and_the_benchmark_trains_the_keypoint_one():
    from keycld_gym.agents import BUNDLED, bundled_recipe
    from keycld_gym.benchmark import benchmark_recipe
    from keycld_gym.rl.agent import bundled_agent_path

    for (system, obs_type), recipe in BUNDLED.items():
        assert recipe in RECIPES.values() and (recipe.system, recipe.obs_type) == (system, obs_type)
        assert recipe.algo != "energy"  # the energy controller's record ships beside the model instead
    assert [benchmark_recipe(s).algo for s in ("cartpole", "pendulum", "acrobot")] == ["sac", "sac", "ppo"]
    assert bundled_agent_path("acrobot").name == "acrobot-ppo-keypoints"
    assert bundled_agent_path("cartpole", "pixels").name == "cartpole-sac-pixels"
    assert bundled_recipe("pendulum", "pixels") is None


def test_every_bundled_agent_loads_and_acts_in_its_bundled_model():
    from keycld_gym.agents import BUNDLED
    from keycld_gym.envs.imagined_env import KeyCLDEnv

    for (system, obs_type), recipe in BUNDLED.items():
        agent = load_agent("bundled", system, obs_type)
        assert agent.recipe.algo == recipe.algo and agent.info["evaluation"]["episodes"] == 10
        if obs_type == "keypoints":
            env = KeyCLDEnv(system, obs_type="keypoints")
            obs, _ = env.reset(seed=0)
            assert env.action_space.contains(agent.act(obs[None])[0].astype(np.float32))


def test_keypoint_noise_matches_its_std(model_dir):
    from keycld_gym.envs.imagined_env import KeyCLDVectorEnv
    from keycld_gym.model.checkpoint import read_noise
    from keycld_gym.rl.observation_noise import KeypointNoise

    std = read_noise(model_dir)
    clean = KeyCLDVectorEnv(512, "cartpole", model_dir, obs_type="keypoints")
    noisy = KeypointNoise(KeyCLDVectorEnv(512, "cartpole", model_dir, obs_type="keypoints"), std, seed=1)
    a, _ = clean.reset(seed=3)
    b, _ = noisy.reset(seed=3)
    measured = (b - a).std(0)
    np.testing.assert_allclose(measured, std, rtol=0.2, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        KeypointNoise(clean, std[:3])
    with pytest.raises(ValueError, match="does not fit"):
        KeypointNoise(KeyCLDVectorEnv(2, "cartpole", model_dir, obs_type="pixels"), std)


def test_estimated_keypoints_follow_the_imagined_state_through_the_real_filter(model_dir):
    from keycld_gym.envs.imagined_env import KeyCLDVectorEnv
    from keycld_gym.model.checkpoint import read_noise
    from keycld_gym.model.tracking import Filtering
    from keycld_gym.rl.observation_noise import EstimatedKeypoints

    std, frame_std = read_noise(model_dir), read_noise(model_dir, "frame_std")
    # the tiny model's own measured noise is large (its encoder is barely trained) and its
    # dynamics wild: small noise shows the filter follows the state it is fed
    small = np.full(4, 1e-3, np.float32)
    clean = KeyCLDVectorEnv(64, "cartpole", model_dir, obs_type="keypoints")
    estimated = EstimatedKeypoints(KeyCLDVectorEnv(64, "cartpole", model_dir, obs_type="keypoints"), Filtering(),
                                   small, np.concatenate([small, small]), seed=1)
    a, _ = clean.reset(seed=3)
    b, _ = estimated.reset(seed=3)
    actions = np.random.default_rng(0).uniform(-1, 1, (64, 1)).astype(np.float32)
    for _ in range(4):
        a, *_ = clean.step(actions)
        b, *_ = estimated.step(actions)
        # the same imagined motion, seen through noisy frames: close, not equal
        position_error = np.median(np.abs(b - a)[:, :4].max(1))
        assert np.isfinite(b).all() and 1e-5 < position_error < 0.01, position_error
    with pytest.raises(ValueError, match="must be"):
        EstimatedKeypoints(clean, Filtering(), frame_std[:3], std)
    with pytest.raises(ValueError, match="obs_type='keypoints'"):
        EstimatedKeypoints(KeyCLDVectorEnv(2, "cartpole", model_dir, obs_type="pixels"), Filtering(), frame_std, std)
    # as a recipe asks for it: episodes that end start the filter again from their next start
    recipe = get_recipe("cartpole", "keypoints", "sac").replace(observation_noise="estimated", training_episode_steps=3,
                                                                real_estimator=Filtering(bias_std=0.1))
    venv = imagined_vec_env(recipe, 2, model_dir, seed=0, training=True)
    venv.reset()
    for step in range(1, 5):
        obs, _, dones, infos = venv.step(np.zeros((2, 1), np.float32))
        assert np.isfinite(obs).all() and dones.all() == (step == 3)
        if step == 3:  # the last estimate of the ended episodes
            assert all(np.isfinite(i["terminal_observation"]).all() for i in infos)
    venv.close()
    with pytest.raises(ValueError, match="estimated"):
        get_recipe("cartpole", "pixels", "ppo").replace(observation_noise="estimated")
    with pytest.raises(ValueError, match="Kalman filter"):
        recipe.replace(real_estimator=Tracking())
    # the estimator travels with the recipe into agent.json and back
    assert AgentRecipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(ValueError, match="unknown state estimator"):
        AgentRecipe.from_dict({**recipe.to_dict(), "real_estimator": {"kind": "Oracle"}})


def test_training_episodes_are_cut_where_the_recipe_says_and_evaluations_are_not(model_dir):
    recipe = get_recipe("cartpole", "keypoints", "sac").replace(training_episode_steps=3, observation_noise="none")
    for training in (True, False):
        venv = imagined_vec_env(recipe, 2, model_dir, seed=0, training=training)
        venv.reset()
        steps, dones, infos = 0, np.zeros(2, bool), []
        while not dones.any() and steps < 10:
            _, _, dones, infos = venv.step(np.zeros((2, 1), np.float32))
            steps += 1
        if training:
            assert steps == 3 and dones.all() and all(i["TimeLimit.truncated"] for i in infos)  # SB3 bootstraps
        else:
            assert steps == 10 and not dones.any()  # whole episodes (125 agent steps) when evaluating
        venv.close()
    with pytest.raises(ValueError, match="training_episode_steps"):
        recipe.replace(training_episode_steps=0)


def test_agent_file_round_trip_and_errors(model_dir, tmp_path):
    recipe, algo = _tiny_sac(model_dir)
    agent = Agent.from_algorithm(algo, recipe)
    folder = agent.save(tmp_path / "agent", training={"seed": 0})
    assert sorted(p.name for p in folder.iterdir()) == ["agent.json", "agent.safetensors"]  # no pickle
    loaded = load_agent(folder, "cartpole", "keypoints")
    obs = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.act(obs), agent.act(obs), atol=1e-6)
    assert loaded.info["training"]["seed"] == 0

    with pytest.raises(CheckpointError, match="trained for 'cartpole', not 'pendulum'"):
        load_agent(folder, "pendulum")
    with pytest.raises(CheckpointError, match="acts on 'keypoints' observations, not 'pixels'"):
        load_agent(folder, "cartpole", "pixels")
    with pytest.raises(CheckpointError, match="is missing"):
        load_agent(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no bundled pixels agent for 'acrobot'"):
        load_agent("bundled", "acrobot", "pixels")
    data = bytearray((folder / AGENT_WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (folder / AGENT_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_agent(folder)


def test_train_agent_logs_checkpoints_and_resumes(model_dir, tmp_path):
    from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent

    torch.set_num_threads(1)
    config = AgentTrainConfig(checkpoint=str(model_dir), total_steps=48, eval_every=24, eval_episodes=2,
                              checkpoint_every_s=0.0, observation_noise="measured")
    state = train_agent(config, tmp_path, progress=False, command="pytest")
    assert state["status"] == "done" and state["steps"] >= 48
    assert [p["steps"] for p in state["curve"]][0] < 24 and len(state["curve"]) >= 3
    assert (tmp_path / "curve.csv").exists() and (tmp_path / "logs" / "progress.csv").exists()
    assert any((tmp_path / "logs").glob("events.out.tfevents*"))
    assert (tmp_path / "resume" / "model.zip").exists() and (tmp_path / "resume" / "replay_buffer.pkl").exists()
    agent = load_agent(tmp_path / "agent", "cartpole", "keypoints")
    assert agent.recipe.observation_noise == "measured"
    assert agent.info["training"]["command"] == "pytest" and agent.info["model"]["model_real_frames"] == 6 * 48

    # more steps continue the same run from its checkpoint
    config.total_steps = 96
    state = train_agent(config, tmp_path, resume=True, progress=False)
    assert state["steps"] >= 96 and state["curve"][0]["steps"] < 24
    config.seed = 1
    with pytest.raises(ValueError, match="differs in: seed"):
        train_agent(config, tmp_path, resume=True, progress=False)
    # without --resume a finished run is never retrained over: its agent and curve stay as they are
    before = (tmp_path / "agent" / "agent.safetensors").read_bytes(), (tmp_path / "curve.csv").read_bytes()
    with pytest.raises(CheckpointError, match="holds a training run already"):
        train_agent(config, tmp_path, progress=False)
    assert ((tmp_path / "agent" / "agent.safetensors").read_bytes(), (tmp_path / "curve.csv").read_bytes()) == before


def test_shaped_and_normalised_rewards_are_for_training_only(model_dir, tmp_path):
    """`energy_shaping` and `normalize_reward`: the training env's rewards change, the curve's and the agent's do not."""
    from keycld_gym.rl.agent_training import AgentTrainConfig, _Trainer

    torch.set_num_threads(1)
    config = AgentTrainConfig(algo="ppo", checkpoint=str(model_dir), total_steps=64, eval_every=64, eval_episodes=2,
                              observation_noise="none", energy_shaping=3.0, normalize_reward=True)
    trainer = _Trainer(config, tmp_path, None, False)
    assert trainer.recipe.energy_shaping == 3.0 and trainer.recipe.normalize_reward
    assert isinstance(trainer.venv, VecNormalize) and not trainer.venv.norm_obs
    assert _base(trainer.venv).energy_shaping == 3.0
    trainer.venv.reset()
    for _ in range(4):
        trainer.venv.step(np.zeros((trainer.venv.num_envs, 1), np.float32))
    assert trainer.venv.ret_rms.count > 1  # the return's spread is being estimated
    plain = imagined_vec_env(trainer.recipe, 2, model_dir, seed=0)  # evaluation: unshaped
    shaped = imagined_vec_env(trainer.recipe, 2, model_dir, seed=0, training=True)
    assert _base(plain).energy_shaping == 0.0 and _base(shaped).energy_shaping == 3.0


def _base(venv):
    """The imagined vector env under SB3's wrappers."""
    while hasattr(venv, "venv"):
        venv = venv.venv
    return venv


def test_cli_train_and_evaluate_agent_and_bad_inputs(model_dir, tmp_path, capsys):
    from keycld_gym.cli import main

    run = tmp_path / "run"
    assert main(["train-agent", "--system", "cartpole", "--out", str(run), "--checkpoint", str(model_dir),
                 "--steps", "32", "--eval-every", "32", "--eval-episodes", "2", "--threads", "1", "--quiet"]) == 0
    assert "trained sac on keypoints" in capsys.readouterr().out
    # end to end: the policy SB3 learned in imagination runs a real dm_control episode
    out = tmp_path / "eval.json"
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--episodes", "1",
                 "--checkpoint", str(model_dir), "--json", str(out), "--threads", "1", "--max-steps", "12"]) == 0
    result = json.loads(out.read_text())
    for key in ("real_return_mean", "real_return_std", "real_returns", "imagined_return_mean", "imagined_return_std",
                "imagined_returns", "episodes", "seed", "system", "obs_type", "agent", "model_data_regime",
                "model_real_frames"):
        assert key in result, key
    assert result["episodes"] == 1 and result["system"] == "cartpole" and result["obs_type"] == "keypoints"
    assert result["max_steps"] == 12  # a quick check: 12 of the episode's 125 agent steps
    assert "each cut after 12 agent steps" in capsys.readouterr().out
    assert len(result["real_returns"]) == 1 and len(result["imagined_returns"]) == 1
    assert 0.0 <= result["real_return_mean"] <= 1000.0 and np.isfinite(result["imagined_return_mean"])
    assert result["model_real_frames"] == 6 * 48 and result["model_data_regime"] == "task"
    assert result["policy_real_frames"] == 0
    assert result["real_estimator"] == estimator_to_dict(get_recipe("cartpole").real_estimator)
    # another real-side estimator for the same agent: recorded, and a bundle of the agent keeps it
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--episodes", "1",
                 "--checkpoint", str(model_dir), "--json", str(out), "--threads", "1", "--max-steps", "4",
                 "--real-estimator", '{"kind": "Tracking", "window": 9}']) == 0
    assert json.loads(out.read_text())["real_estimator"]["window"] == 9
    assert main(["bundle-agent", "--agent", str(run / "agent"), "--eval", str(out), "--dest", str(tmp_path / "bundle")]) == 0
    assert load_agent(tmp_path / "bundle", "cartpole").recipe.real_estimator == Tracking(window=9)
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "real states estimated by Tracking" in card
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--real-estimator", "kalman"]) == 2
    assert "a state estimator is 'window', 'filter' or JSON" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_:  # refused at parse time, before any work
        main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--max-steps", "0"])
    assert exit_.value.code == 2
    assert "argument --max-steps: expected a positive integer, got '0'" in capsys.readouterr().err
    assert main(["evaluate-agent", "--agent", str(tmp_path / "missing"), "--system", "cartpole"]) == 2
    assert "is missing" in capsys.readouterr().err
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "acrobot"]) == 2
    assert "trained for 'cartpole', not 'acrobot'" in capsys.readouterr().err
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--obs", "pixels"]) == 2
    assert "not 'pixels'" in capsys.readouterr().err
    # another model than the one it was trained in (here the bundled one) reads another keypoint space
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--episodes", "1"]) == 2
    assert "was trained in the model with weights sha256" in capsys.readouterr().err
    # a result file that cannot be written fails before the episodes, not after them
    assert main(["evaluate-agent", "--agent", str(run / "agent"), "--system", "cartpole", "--checkpoint", str(model_dir),
                 "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_benchmark_writes_its_report(model_dir, tmp_path):
    from keycld_gym.benchmark import run_benchmark

    report = run_benchmark("cartpole", tmp_path, budget_min=5, total_steps=32, episodes=1, checkpoint=model_dir,
                           real_curve_points=0, video_steps=6, progress=False, command="pytest", max_steps=12)
    for name in ("benchmark.json", "learning_curve.png", "side_by_side.gif"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["agent"]["episodes"] == 1 and saved["agent"]["max_steps"] == 12
    assert 0 <= saved["random"]["real_return_mean"] <= 12 * 8  # 12 agent steps of 8 physics steps
    assert report["trained"]["steps"] >= 32 and saved["curve"][-1]["imagined_return"] >= 0
    # the bundled agents' rows name the data of the model they were trained in, not this run's tiny model
    from keycld_gym.benchmark import format_table

    table = format_table(saved)
    assert "each cut after 12 agent steps" in table
    tiny_frames = saved["agent"]["model_real_frames"]
    bundled_row = next(line for line in table.splitlines() if line.startswith("bundled agent"))
    assert f"{saved['bundled_agent']['model_real_frames']} (task) / 0" in bundled_row
    assert str(tiny_frames) not in bundled_row.split("%")[-1]


def test_rl_zoo_hyperparameter_files_come_from_the_recipes():
    from keycld_gym.agents import rl_zoo_hyperparams, rl_zoo_ppo, rl_zoo_sac

    sac = rl_zoo_sac.hyperparams["KeyCLD-Pendulum-keypoints-v0"]
    recipe = get_recipe("pendulum", "keypoints", "sac")
    assert sac["n_timesteps"] == recipe.total_steps and sac["n_envs"] == recipe.num_envs
    assert sac["learning_starts"] == recipe.hyperparams["learning_starts"] and sac["policy"] == "MlpPolicy"
    assert rl_zoo_ppo.hyperparams["KeyCLD-Cartpole-v0"]["frame_stack"] == get_recipe("cartpole", "pixels", "ppo").frame_stack
    # the encoder-feature pixel SAC has no RL Zoo form, so no pixel id in the SAC file
    assert not [i for i in rl_zoo_sac.hyperparams if not i.endswith("-keypoints-v0")]
    with pytest.raises(ValueError, match="no RL Zoo form"):
        get_recipe("cartpole", "pixels", "sac").rl_zoo()
    for algo in ("dqn", "energy"):  # the energy controller is no RL Zoo algorithm either
        with pytest.raises(ValueError, match="no RL Zoo algorithm"):
            rl_zoo_hyperparams(algo)
