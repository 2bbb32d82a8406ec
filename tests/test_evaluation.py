"""Evaluation metrics: VPT, angle errors, keypoint probes, and a whole evaluation on real data."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from keycld_gym.analysis.evaluation import (
    angle_rms,
    evaluate_model,
    keypoint_state_metrics,
    mse_epsilon,
    valid_prediction_time,
)
from keycld_gym.model.checkpoint import load_model
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import get_system


def test_valid_prediction_time_counts_frames_before_the_first_miss():
    errors = np.array([[0.1, 0.2, 0.9, 0.1], [0.1, 0.1, 0.1, 0.1], [0.6, 0.1, 0.1, 0.1]])
    assert valid_prediction_time(errors, 0.5).tolist() == [2, 4, 0]


def test_angle_rms_fits_one_offset_and_the_mirror():
    rng = np.random.default_rng(0)
    true = rng.uniform(-np.pi, np.pi, 500)
    rms, sign = angle_rms(-(true + 0.7) + rng.normal(0, 0.05, 500), true)
    assert sign == -1 and abs(rms - 0.05) < 0.01
    rms, _ = angle_rms(rng.uniform(-np.pi, np.pi, 500), true)
    assert rms > 1.4  # chance level is pi / sqrt(3) = 1.81


def test_keypoint_probe_on_exact_cartpole_keypoints():
    rng = np.random.default_rng(0)
    qpos = np.stack([rng.uniform(-1.5, 1.5, 300), rng.uniform(-np.pi, np.pi, 300)], -1)
    cart = np.stack([0.6 * qpos[:, 0], np.zeros(300)], -1)
    tip = cart + 0.6 * np.stack([np.sin(qpos[:, 1]), np.cos(qpos[:, 1])], -1)
    m = keypoint_state_metrics(np.stack([cart, tip], 1), qpos, get_system("cartpole"))
    assert m["keypoint0_x_vs_slider_corr"] > 0.9999
    assert m["link0_angle_rms_rad"] < 1e-6


def test_epsilon_is_the_spread_around_the_mean_image():
    frames = np.zeros((2, 4, 4, 3), np.uint8)
    frames[1] = 255
    assert math.isclose(mse_epsilon(frames), 0.25, rel_tol=1e-6)


def test_whole_evaluation_on_real_sequences(tiny_data, tiny_model_dir):
    torch.manual_seed(0)
    model = KeyCLDModel("cartpole", TINY_MODEL)
    r = evaluate_model(model, tiny_data, start_frames=9, agent_steps=4, physics_frames=10, long_rollout=50)
    assert r["split"] == "all" and r["sequences"] == 6
    for name in ("model", "hold_frame", "true_simulator_noisy"):
        assert len(r[name]["vpt_agent"]) == 6 and 0 <= r[name]["vpt_agent_median"] <= 4
        assert 0 <= r[name]["vpt_physics_median"] <= 10
    # the true simulator restarted near the true state beats holding the frame
    assert r["true_simulator_noisy"]["vpt_physics_mean"] >= r["hold_frame"]["vpt_physics_mean"]
    assert r["long_rollout"]["finite"] and r["long_rollout"]["max_abs_constraint_violation"] < 1e-3
    assert json.loads(json.dumps(r)) == r  # JSON-ready
    with pytest.raises(ValueError, match="--frames"):
        evaluate_model(model, tiny_data, start_frames=33, agent_steps=45)
    # a model trained on this data set is evaluated on its held-out split only (2 of the 6 sequences)
    trained = load_model(tiny_model_dir)
    held_out = evaluate_model(trained, tiny_data, start_frames=9, agent_steps=4, physics_frames=10,
                              long_rollout=5, references=False)
    assert held_out["split"] == "val" and held_out["sequences"] == 2


def test_evaluation_over_the_horizon_in_seconds_on_several_sets(tiny_data, tmp_path):
    """Sets of both regimes scored together and apart; the horizon defaults to the spec's, capped by the data."""
    from keycld_gym.data.collect import CollectConfig, collect

    states = tmp_path / "states"
    collect(states, CollectConfig("cartpole", episodes=2, frames=40, seed=3, regime="states"), progress=False)
    torch.manual_seed(0)
    model = KeyCLDModel("cartpole", TINY_MODEL)
    r = evaluate_model(model, [tiny_data, states], start_frames=9, physics_frames=10, long_rollout=5)
    spec = model.spec
    # 40 frames (the shorter set) after a 9-frame start allow 3 agent steps of the spec's 120
    assert r["agent_steps"] == (40 - 9) // spec.action_repeat == 3 and r["horizon_capped_by_data"]
    assert math.isclose(r["horizon_s"], 3 * spec.agent_dt) and r["sequences"] == 8
    assert [(x["regime"], x["sequences"]) for x in r["sets"]] == [("task", 6), ("states", 2)]
    for name in ("model", "hold_frame", "true_simulator_noisy"):
        b = r[name]
        assert math.isclose(b["vpt_agent_s_median"], b["vpt_agent_median"] * spec.agent_dt)
        assert b["saturated"] == np.mean(np.asarray(b["vpt_agent"]) == 3)
        for x in r["sets"]:
            assert 0 <= x[f"{name}_vpt_s_median"] <= r["horizon_s"] + 1e-9
    assert sum(g["sequences"] for g in r["by_explorer"].values()) == 8
    assert json.loads(json.dumps(r)) == r
