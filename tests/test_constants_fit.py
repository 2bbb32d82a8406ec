"""Refitting the physical constants over long windows (`keycld_gym.training.constants_fit`)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import ENCODER_LINEAGE, load_model
from keycld_gym.model.dynamics import DynamicsConfig
from keycld_gym.model.keycld import KeyCLDModel, ModelConfig
from keycld_gym.rl.agent_evaluation import check_trained_model
from keycld_gym.training.constants_fit import (
    LongWindows,
    constant_entries,
    fit_model_constants,
)

# the recipes' form: structured Lagrangian, the spec's torque, damping per joint
STRUCTURED = ModelConfig(dynamics=DynamicsConfig(input_matrix="spec", damping="joints", linear_potential=True,
                                                 potential_mlp=False))


def _pendulum_sequences(model, sequences=16, frames=120, seed=0):
    """Keypoint sequences `(S, T, 1, 2)` of the model's own dynamics under smooth random torques `(S, T, 1)`."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(sequences, generator=g) * 2 * np.pi
    length = model.constraints.length[0]
    q = torch.stack([length * angle.sin(), -length * angle.cos()], -1)[:, None]
    q, v = model.project(q, torch.randn(sequences, 1, 2, generator=g))
    knots = torch.rand(sequences, frames // 25 + 2, generator=g) * 2 - 1
    u = torch.nn.functional.interpolate(knots[:, None], size=frames, mode="linear", align_corners=True)[:, 0, :, None]
    with torch.no_grad():
        qs, _ = model.rollout(q, v, u[:, :-1])
    return qs, u


def _true_pendulum():
    torch.manual_seed(0)
    model = KeyCLDModel("pendulum", STRUCTURED)
    dyn = model.dynamics
    with torch.no_grad():
        dyn.potential_linear.copy_(torch.tensor([0.0, 8.0]))  # gravity along the image's y
        dyn.actuator_gain.fill_(3.0)
        dyn.damping_raw.fill_(-1.0)
    return model


def test_the_fit_recovers_a_pendulums_constants_from_long_windows():
    truth = _true_pendulum()
    kp, u = _pendulum_sequences(truth)
    model = _true_pendulum()
    names = [n for n, _ in constant_entries(model)]
    # the scale of the Lagrangian stays; the constraint constants are not the fit's
    assert "dynamics.mass_raw_diag" not in names and not any(n.startswith("constraints.") for n in names)
    with torch.no_grad():  # 4% heavy gravity, a weak motor, three times the damping: predictions end soon
        model.dynamics.potential_linear.mul_(1.04)
        model.dynamics.actuator_gain.mul_(0.8)
        model.dynamics.damping_raw.fill_(0.0)
    before = [model.dynamics.potential_linear[1].item(), model.dynamics.actuator_gain.item()]
    result = fit_model_constants(model, kp, u, iterations=6, start_frames=9, limit=0.2, robust=0.01, eps=1e-4,
                                 rtol=1e-6, progress=False)
    after = [model.dynamics.potential_linear[1].item(), model.dynamics.actuator_gain.item()]
    assert abs(after[0] - 8.0) < 0.1 * abs(before[0] - 8.0)
    assert abs(after[1] - 3.0) < 0.1 * abs(before[1] - 3.0)
    assert torch.allclose(model.dynamics.damping(), truth.dynamics.damping(), rtol=0.05)
    assert result["after"]["cost"] < 0.01 * result["before"]["cost"]
    assert result["after"]["counted_s"] > result["before"]["counted_s"]
    assert next(model.parameters()).dtype == torch.float32  # fitted in float64, handed back as it came


def test_a_window_counts_its_frames_until_its_prediction_strays():
    model = _true_pendulum()
    kp, u = _pendulum_sequences(model, sequences=2, frames=30)
    problem = LongWindows(model, kp, u, start_frames=5, limit=0.1, robust=0.01)
    pred = problem.target.clone()
    pred[0, 10:, 0, 0] += 0.5  # sequence 0 strays at frame 10 and comes back: it stays out
    pred[0, 20:, 0, 0] -= 0.5
    mask = problem.counted(pred)
    assert mask[0].sum() == 10 and mask[1].all()


def test_fit_constants_cli_moves_only_constants_and_refits_members(tiny_model_dir, tiny_data, tmp_path, capsys):
    from keycld_gym.cli import main
    from keycld_gym.model.checkpoint import save_checkpoint
    from keycld_gym.model.ensemble import DynamicsEnsemble, member_state

    source = load_model(tiny_model_dir)
    member = member_state(source)
    member["dynamics.damping_raw"] = member["dynamics.damping_raw"] + 0.5
    source.ensemble = DynamicsEnsemble(source, [member])
    with_members = tmp_path / "with-members"
    save_checkpoint(with_members, source, {k: v for k, v in source.checkpoint_config.items()
                                           if k in ("training", "data")})
    out = tmp_path / "refit"
    assert main(["fit-constants", "--checkpoint", str(with_members), "--data", str(tiny_data), "--out", str(out),
                 "--steps", "2", "--threads", "1", "--quiet"]) == 0
    assert "constants refit on 4 sequences" in capsys.readouterr().out
    record = json.loads((out / "config.json").read_text())["constants"]
    assert record["validation"]["before"] is not None  # the model's own validation sequences, scored not fitted
    assert len(record["members"]) == 1 and record["command"]
    after = load_model(out)
    fitted = {n for n, _ in constant_entries(after)}
    before = load_model(with_members)
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()):
        if name not in fitted:
            assert torch.equal(a, b), name
    assert after.ensemble is not None and after.ensemble.size == 2
    # the encoder is the source's: an agent trained in the source may act in the refit, not in another model
    source_sha = before.checkpoint_config["weights_sha256"]
    assert after.checkpoint_config[ENCODER_LINEAGE] == [source_sha]
    agent = SimpleNamespace(info={"path": "agent", "model": {"weights_sha256": source_sha}})
    check_trained_model(agent, after, out)
    with pytest.raises(CheckpointError, match="was trained in the model with weights sha256"):
        check_trained_model(SimpleNamespace(info={"model": {"weights_sha256": "0" * 64}}), after, out)
