"""The true-state keypoint env, and the reference trained on it (`train-agent --world true`)."""

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from keycld_gym.envs.true_keypoints import TrueKeypointEnv
from keycld_gym.sim.keypoint_truth import KeypointMap, true_points

# world x, z (metres) -> a keypoint space that flips z and halves the scale, as an image does
FLIP = KeypointMap(np.array([[0.5, 0.0], [0.0, -0.5]]), np.array([0.1, 1.0]))


def test_observations_are_the_true_bodies_mapped_and_their_velocities():
    env = TrueKeypointEnv("acrobot", FLIP)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (8,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:4], FLIP.points(true_points(env.env.physics, env.system)).ravel(), atol=1e-6)
    # the velocities are those of the positions: one agent step of 0.04 s, central enough
    before = obs
    after, *_ = env.step(np.array([0.5], np.float32))
    dt = env.system.action_repeat * env.system.physics_dt
    np.testing.assert_allclose((after[:4] - before[:4]) / dt, 0.5 * (after[4:] + before[4:]), atol=0.05)
    # the arms (1 m each, the shoulder 2 m up) keep their lengths in the mapped space, halved
    elbow, tip = after[:2] - FLIP.points(np.array([0.0, 2.0])), after[2:4] - after[:2]
    assert abs(np.linalg.norm(elbow) - 0.5) < 1e-3 and abs(np.linalg.norm(tip) - 0.5) < 1e-3
    env.close()
    assert KeypointMap.from_dict(json.loads(json.dumps(FLIP.to_dict()))).points(np.ones((1, 2))).tolist() == [[0.6, 0.5]]
    with pytest.raises(ValueError, match="2x2 matrix"):
        TrueKeypointEnv("pendulum", KeypointMap(np.eye(3), np.zeros(2)))


def test_the_reference_trains_on_the_true_state(noisy_model_dir, tiny_data, tmp_path, capsys):
    from keycld_gym.agents import get_recipe
    from keycld_gym.analysis.diagnostics import keypoint_map_for, oracle_agent_returns
    from keycld_gym.cli import main
    from keycld_gym.model.checkpoint import load_model
    from keycld_gym.rl.agent import load_agent
    from keycld_gym.rl.agent_training import AgentTrainConfig, _Trainer

    torch.set_num_threads(1)
    run = tmp_path / "true"
    assert main(["train-agent", "--system", "cartpole", "--world", "true", "--data", str(tiny_data), "--out", str(run),
                 "--checkpoint", str(noisy_model_dir), "--steps", "32", "--eval-every", "32", "--eval-episodes", "1",
                 "--threads", "1", "--quiet"]) == 0
    assert "on the true simulator's state (a reference)" in capsys.readouterr().out
    state = json.loads((run / "state.json").read_text())
    assert state["config"]["world"] == "true" and state["recipe"]["observation_noise"] == "none"
    assert all(p["true_return"] >= 0 and "imagined_return" not in p for p in state["curve"])
    assert (run / "curve.csv").read_text().startswith("steps,wall_s,true_return,real_return")
    agent = load_agent(run / "agent", "cartpole", "keypoints")
    training = agent.info["training"]
    assert training["world"] == "true" and training["true_physics_steps"] == state["steps"] * 8
    # training episodes are cut where the recipe says, as in imagination
    trainer = _Trainer(AgentTrainConfig(system="pendulum", world="true", keypoint_map=FLIP.to_dict()), tmp_path / "t",
                       None, False)
    venv = trainer.world_env(1, 0, training=True)
    venv.reset()
    cut = get_recipe("pendulum", "keypoints", "sac").training_episode_steps
    dones = [venv.step(np.zeros((1, 1), np.float32))[2][0] for _ in range(cut)]
    assert dones == [False] * (cut - 1) + [True]
    # scored as it trained: the true keypoints in the real task (the diagnostics' oracle)
    kmap = keypoint_map_for(load_model(noisy_model_dir), tiny_data)
    np.testing.assert_allclose(kmap.a, state["config"]["keypoint_map"]["a"])
    result = oracle_agent_returns(agent, kmap, episodes=1, seed=7)
    assert result["episodes"] == 1 and 0.0 <= result["real_return_mean"] <= 1000.0

    assert main(["train-agent", "--system", "cartpole", "--world", "true", "--out", str(tmp_path / "x")]) == 2
    assert "--world true needs --data" in capsys.readouterr().err
    with pytest.raises(ValueError, match="obs_type 'keypoints' and a keypoint_map"):
        AgentTrainConfig(world="true", obs_type="pixels", keypoint_map=FLIP.to_dict())
    with pytest.raises(ValueError, match="world must be one of"):
        AgentTrainConfig(world="dream")
