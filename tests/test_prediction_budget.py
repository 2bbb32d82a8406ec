"""The prediction budget: each part of a prediction replaced by the truth, scored like the model's own."""

import numpy as np
import pytest
import torch

from keycld_gym.analysis.diagnostics import true_physics_model
from keycld_gym.analysis.evaluation import evaluate_model, held_out_sets, open_loop
from keycld_gym.analysis.prediction_budget import (
    PARTS,
    free_oscillation,
    mapped_true_states,
    prediction_budget,
)
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.keypoint_truth import KeypointMap
from keycld_gym.training.recipes import get_recipe


def _cartpole_on_its_constraints():
    """The cartpole recipe's model (untrained) and a map that puts the true points on its constraints."""
    torch.manual_seed(0)
    model = KeyCLDModel("cartpole", get_recipe("cartpole").model).eval()
    scale = model.constraints.length[0].item() / 0.9  # the real pole is 1 m long, its cart 1 m up
    return model, KeypointMap(scale * np.eye(2), np.array([0.0, -scale]), along=((0, 1, 0.9),))


def test_the_true_constants_from_the_true_start_follow_the_true_system(tiny_data):
    """Mapped into keypoint space, the true start under the true constants stays on the true states (no frames involved)."""
    model, kmap = _cartpole_on_its_constraints()
    truth, _ = true_physics_model(model, kmap, n=200)
    d, _ = held_out_sets(model, tiny_data)
    times = list(range(1, 33))  # 0.32 s
    with torch.no_grad():
        q0, v0 = model.project(*mapped_true_states(model, kmap, d["qpos"][:, 0], d["qvel"][:, 0]), iterations=20)
    predicted = open_loop(truth, q0, v0, torch.from_numpy(d["actions"].astype(np.float32)), times)
    true_q, _ = mapped_true_states(model, kmap, d["qpos"][:, times], d["qvel"][:, times])
    error_px = (predicted - true_q).norm(dim=-1).max() * model.spec.camera.height / 2
    assert error_px < 0.5
    # the learned (untrained) constants do not
    wrong = open_loop(model, q0, v0, torch.from_numpy(d["actions"].astype(np.float32)), times)
    assert (wrong - true_q).norm(dim=-1).max() * model.spec.camera.height / 2 > 5 * error_px


def test_the_free_swing_of_the_true_constants_has_the_true_period():
    torch.manual_seed(0)
    model = KeyCLDModel("pendulum", get_recipe("pendulum").model).eval()
    # the bob on the model's link: the real one swings 0.5 m from a pivot 0.6 m up
    scale = model.constraints.length[0].item() / 0.5
    kmap = KeypointMap(scale * np.eye(2), np.array([0.0, -0.6 * scale]))
    truth, _ = true_physics_model(model, kmap, n=200)
    swing = free_oscillation(model, truth, kmap, seconds=6.0)
    assert 0.5 < swing["true"]["period_s"] < 3.0
    assert abs(swing["true_constants"]["period_error"]) < 0.02
    assert swing["true"]["amplitude_ratio_per_period"] < 1.0  # the task damps the hinge
    assert abs(swing["true_constants"]["amplitude_ratio_per_period"] - swing["true"]["amplitude_ratio_per_period"]) < 0.05


@pytest.mark.slow
def test_the_budget_scores_every_part_as_the_evaluation_does(tiny_data):
    model, kmap = _cartpole_on_its_constraints()
    truth, _ = true_physics_model(model, kmap, n=200)
    budget = prediction_budget(model, truth, kmap, [tiny_data])
    spec = model.spec
    # 48 frames after the 0.32 s start window (33 frames) leave one agent step of the spec's horizon
    assert budget["agent_steps"] == (48 - 33) // spec.action_repeat and budget["sequences"] == 6
    for part in PARTS:
        b = budget[part]
        assert len(b["vpt_agent"]) == 6 and 0 <= b["vpt_s_median"] <= budget["horizon_s"] and len(b["by_set"]) == 1
    # the renderer drawing the true states is the model's own renderer: its floor is the held frame's at worst here
    evaluated = evaluate_model(model, tiny_data, agent_steps=budget["agent_steps"], physics_frames=10, long_rollout=2,
                               references=False)
    assert budget["hold_frame"]["vpt_agent"] == evaluated["hold_frame"]["vpt_agent"]
    assert budget["model"]["vpt_agent"] == evaluated["model"]["vpt_agent"]
    assert budget["largest_cause"] in ("start", "constants", "renderer")
    assert budget["cost_s"]["renderer"] == budget["horizon_s"] - budget["rendered_truth"]["vpt_s_median"]
    assert budget["free_oscillation"]["true"]["period_s"] > 0
    with pytest.raises(ValueError, match="--frames"):
        prediction_budget(model, truth, kmap, [tiny_data], agent_steps=3)
