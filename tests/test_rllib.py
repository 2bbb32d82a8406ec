"""RLlib PPO on a keypoint id (`keycld_gym.rl.rllib`): env runners as Ray actors on the batched imagination.

Runs where RLlib is installed (`pip install -e ".[rllib]"`), on the local two-node cluster of
tests/conftest.py; elsewhere only the checks that need no RLlib run.
"""

import json

import pytest

from keycld_gym.agents import get_recipe
from keycld_gym.rl.rllib import RLlibConfig, train_rllib


def test_the_env_runners_get_the_model_next_step_autoreset_and_the_recipe_starts():
    config = RLlibConfig("pendulum", envs_per_runner=8, rollout_fragment_length=4)
    env = config.env_config()
    assert env["autoreset_mode"] == "next_step" and env["checkpoint"].endswith("weights/pendulum")
    assert env["exploring_starts"] == get_recipe("pendulum", "keypoints", "ppo").exploring_starts and config.batch_size == 32
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        RLlibConfig("pendulum", iterations=0)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_one_rllib_iteration_on_the_cluster_then_the_real_protocol_and_a_resumed_second(ray_cluster, tmp_path):
    pytest.importorskip("ray.rllib")
    config = RLlibConfig("pendulum", iterations=1, envs_per_runner=16, rollout_fragment_length=16,
                         minibatch_size=128, num_epochs=1)
    state = train_rllib(config, tmp_path / "run", ray=ray_cluster, episodes=2, max_steps=5, progress=False)
    assert [p["env_steps"] for p in state["curve"]] == [256]
    evaluation = state["evaluation"]
    assert evaluation["episodes"] == 2 and len(evaluation["real_returns"]) == 2 and evaluation["policy_real_frames"] == 0
    assert (tmp_path / "run" / "rllib").is_dir() and json.loads((tmp_path / "run" / "state.json").read_text())["curve"]
    # a second iteration continues the run: RLlib's own counters come back from its checkpoint
    state = train_rllib(RLlibConfig(**{**config.to_dict(), "hidden": tuple(config.hidden), "iterations": 2}),
                        tmp_path / "run", ray=ray_cluster, episodes=0, progress=False)
    assert [p["env_steps"] for p in state["curve"]] == [256, 512]
