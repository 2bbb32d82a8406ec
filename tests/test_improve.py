"""The real-task loop: real episodes, members continued on them, the agent continued, one record; resumable."""

import json
import shutil

import numpy as np
import pytest
import torch

from keycld_gym.data.dataset import load_manifest
from keycld_gym.model.checkpoint import load_model
from keycld_gym.model.ensemble import member_state
from keycld_gym.rl.agent import load_agent
from keycld_gym.training.improve import ImproveConfig, improve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def start(noisy_model_dir, tiny_data, tmp_path_factory):
    """The tiny model with one more member, and a tiny SAC agent trained in it (a train-agent run)."""
    from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent
    from keycld_gym.training.ensemble import train_ensemble

    root = tmp_path_factory.mktemp("improve")
    model = root / "model"
    shutil.copytree(noisy_model_dir, model)
    train_ensemble(model, root / "members", 2, data=str(tiny_data), progress=False)
    train_agent(AgentTrainConfig(checkpoint=str(model), total_steps=32, eval_every=32, eval_episodes=2),
                root / "agent-run", progress=False)
    return model, root / "agent-run" / "agent"


def test_improve_runs_rounds_records_them_and_resumes(start, tiny_data, tmp_path):
    torch.set_num_threads(1)
    model, agent = start
    config = ImproveConfig(system="cartpole", checkpoint=str(model), agent=str(agent), data=str(tiny_data), rounds=1,
                           episodes=2, model_steps=3, agent_steps=16, eval_episodes=1, max_steps=6, workers=1)
    record = improve(config, tmp_path, progress=False, command="pytest")
    [r1] = record["rounds"]
    # two real episodes of 6 agent steps (and the reset's) from their own seeds, one 48-frame sequence each
    assert r1["real"]["seeds"] == [301000, 301001] and len(r1["real"]["returns"]) == 2
    assert r1["real"]["frames"] == 2 * 7 * 8 and r1["imagined_return_mean"] is not None
    assert r1["total_real_frames"] == 6 * 48 + r1["real"]["frames"]
    data = load_manifest(tmp_path / "data")
    assert data["sequences"] == 6 + 2 and data["shards"][-1]["source"]["name"] == "round-1"
    with np.load(tmp_path / "keypoints.npz") as cached:  # each training sequence read by the encoder once
        assert len(set(cached["ids"].tolist())) == len(cached["ids"]) >= 3
    # every member continued on the grown data, and the round's model is an ensemble of them
    refined = load_model(tmp_path / "round-1" / "model")
    before = load_model(model)
    assert refined.ensemble.size == 2 and (tmp_path / "round-1" / "model" / "observation_noise.json").exists()
    assert refined.checkpoint_config["continued_from"]["member"] == 0
    assert any(not torch.equal(t, member_state(before)[n]) for n, t in member_state(refined).items())
    assert all(torch.equal(a, b) for a, b in zip(refined.encoder.state_dict().values(),
                                                 before.encoder.state_dict().values()))  # the encoder is shared
    # the agent continued from the run's own checkpoint, in the refined model
    state = json.loads((tmp_path / "round-1" / "agent-run" / "state.json").read_text())
    assert state["initialized_from"] == "sb3 checkpoint" and state["status"] == "done"
    assert load_agent(tmp_path / "round-1" / "agent-run" / "agent").info["model"]["path"].endswith("round-1/model")
    final = record["final"]
    assert final["episodes"] == 1 and final["total_real_frames"] == r1["total_real_frames"]
    assert final["policy_real_frames"] == r1["real"]["frames"] and np.isfinite(final["real_return_mean"])
    assert (tmp_path / "improve.png").stat().st_size > 0

    # a second round continues the loop: nothing of round 1 runs again
    again = improve(ImproveConfig(**{**config.to_dict(), "rounds": 2}), tmp_path, progress=False)
    assert again["rounds"][0] == r1 and again["rounds"][1]["round"] == 2
    assert again["rounds"][1]["model"].endswith("round-1/model")
    assert again["earlier_finals"] == [final] and again["final"]["total_real_frames"] > final["total_real_frames"]
    assert load_manifest(tmp_path / "data")["sequences"] == 6 + 4
    with pytest.raises(ValueError, match="holds 2 finished rounds"):
        improve(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="differs in: episodes"):
        improve(ImproveConfig(**{**config.to_dict(), "episodes": 3}), tmp_path, progress=False)


def test_improve_settings_are_checked():
    with pytest.raises(ValueError, match="actor must be one of"):
        ImproveConfig(system="cartpole", checkpoint="m", actor="human")
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        ImproveConfig(system="cartpole", checkpoint="m", episodes=0)
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        ImproveConfig(system="cartpole", checkpoint="m", max_steps=0)
