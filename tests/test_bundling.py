"""Bundling: the evaluation is checked before anything is written, and a bundle is replaced whole."""

import json
import shutil

import pytest

from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import load_model
from keycld_gym.model.start_bank import EXPLORING_STARTS
from keycld_gym.rl.energy_control import ENERGY_RECORD
from keycld_gym.training.bundling import bundle_agent, bundle_model


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def evaluation(tiny_model_dir, tiny_data, tmp_path_factory):
    """An evaluate-model result of the tiny model, as a file."""
    from keycld_gym.analysis.evaluation import evaluate_model

    result = evaluate_model(load_model(tiny_model_dir), tiny_data, start_frames=9, agent_steps=4, physics_frames=10,
                            long_rollout=10)
    path = tmp_path_factory.mktemp("eval") / "eval.json"
    path.write_text(json.dumps(result))
    return path


def test_a_bad_evaluation_changes_nothing_and_a_rebundle_leaves_no_stale_file(tiny_model_dir, evaluation, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / EXPLORING_STARTS).write_bytes((tiny_model_dir / "start_frames.npz").read_bytes())
    (model / ENERGY_RECORD).write_text('{"real_return_mean": 1.0}')  # the model's recorded controller travels along
    dest = bundle_model(model, evaluation, tmp_path / "bundle")
    assert (dest / EXPLORING_STARTS).exists() and "VPT" in (dest / "README.md").read_text()
    assert (dest / ENERGY_RECORD).read_text() == (model / ENERGY_RECORD).read_text()
    before = _files(dest)

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"system": "cartpole", "model": ')
    other = json.loads(evaluation.read_text())
    other["checkpoint"]["weights_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "pendulum.json").write_text(json.dumps({**other, "system": "pendulum"}))
    for path, message in ((corrupt, "not a readable JSON"), (tmp_path / "missing.json", "does not exist"),
                          (tmp_path / "other.json", "another model"), (tmp_path / "pendulum.json", "'pendulum' model")):
        with pytest.raises(CheckpointError, match=message):
            bundle_model(model, path, dest)
        assert _files(dest) == before  # the old bundle, untouched
    # the new model has no exploring starts: the old bundle's do not stay beside its weights
    (model / EXPLORING_STARTS).unlink()
    bundle_model(model, evaluation, dest)
    assert not (dest / EXPLORING_STARTS).exists()
    assert not list(tmp_path.glob("bundle.*"))  # no staging or old folder left behind


def test_an_agent_is_bundled_only_with_its_own_evaluation(noisy_model_dir, tmp_path):
    from keycld_gym.rl.agent import load_agent
    from keycld_gym.rl.agent_evaluation import evaluate_agent
    from keycld_gym.rl.agent_training import AgentTrainConfig, train_agent

    train_agent(AgentTrainConfig(checkpoint=str(noisy_model_dir), total_steps=32, eval_every=32, eval_episodes=1),
                tmp_path / "run", progress=False, command="pytest")
    shutil.copytree(tmp_path / "run" / "agent", tmp_path / "agent")
    agent = load_agent(tmp_path / "agent")
    result = evaluate_agent(agent, episodes=1, checkpoint=noisy_model_dir, workers=1, max_steps=2)
    (tmp_path / "eval.json").write_text(json.dumps(result))
    dest = bundle_agent(tmp_path / "agent", tmp_path / "eval.json", tmp_path / "bundle")
    before = _files(dest)
    (tmp_path / "other.json").write_text(json.dumps({**result, "agent_weights_sha256": "0" * 64}))
    (tmp_path / "ppo.json").write_text(json.dumps({**result, "algo": "ppo"}))
    (tmp_path / "model.json").write_text(json.dumps({"system": "cartpole", "model": {}}))
    for name, message in (("other.json", "another agent"), ("ppo.json", "cartpole/keypoints/ppo agent"),
                          ("model.json", "not an evaluate-agent")):
        with pytest.raises(CheckpointError, match=message):
            bundle_agent(tmp_path / "agent", tmp_path / name, dest)
        assert _files(dest) == before
