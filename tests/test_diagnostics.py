from types import SimpleNamespace

import numpy as np
import pytest

from keycld_gym.analysis.diagnostics import (
    goal_states,
    keypoint_error,
    state_bias,
    tracked_keypoint_map,
    tracked_point_error,
    true_physics_model,
    true_response,
)
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.keypoint_truth import KeypointMap, fit_keypoint_map
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import get_system
from keycld_gym.training.recipes import get_recipe


def test_state_bias_takes_the_smooth_part_of_the_error_and_leaves_the_noise():
    """A keypoint that leans with the pole angle is bias; frame-to-frame scatter is noise."""
    rng = np.random.default_rng(0)
    n = 2000
    angle, cart = rng.uniform(-np.pi, np.pi, n), rng.uniform(-1, 1, n)
    points = np.stack([np.stack([cart, np.zeros(n)], -1),  # on a rail: one coordinate constant
                       np.stack([cart + np.sin(angle), np.cos(angle)], -1)], 1)  # (N, 2, 2)
    lean = 0.4 * np.stack([np.sin(angle) * np.cos(angle), np.sin(angle) ** 2], -1)  # smooth in the points
    noise = rng.normal(0, 0.1, (n, 2, 2))
    errors = np.stack([lean, -lean], 1) + noise
    bias = state_bias(errors, points)
    assert np.sqrt(((errors - bias - noise) ** 2).mean()) < 0.01
    assert abs(np.sqrt(((errors - bias) ** 2).mean()) - 0.1) < 0.01


def test_tracked_point_error_finds_the_point_a_keypoint_follows_along_a_moving_link():
    """A pole keypoint at 90% of the pole is no error once its point is fitted; against the tip it is."""
    rng = np.random.default_rng(1)
    n = 1000
    angle, cart = rng.uniform(-np.pi, np.pi, n), rng.uniform(-1.5, 1.5, n)
    cart_xz = np.stack([cart, np.zeros(n)], -1)
    tip = cart_xz + np.stack([np.sin(angle), np.cos(angle)], -1)
    points = np.stack([cart_xz, tip], 1)  # (N, 2, 2): cart, pole tip (metres)
    model = SimpleNamespace(spec=get_system("cartpole"))
    px = model.spec.camera.height / 2
    scale, noise_px = 0.6, 0.1
    followed = np.stack([cart_xz, cart_xz + 0.9 * (tip - cart_xz)], 1)
    keypoints = scale * followed + rng.normal(0, noise_px / px, (n, 2, 2))
    kmap = tracked_keypoint_map(model, keypoints, points)
    tracked = tracked_point_error(model, keypoints, points, kmap)
    assert tracked["link_fractions"] == {"0-1": 0.9}
    assert abs(tracked["rms_px"] - noise_px * np.sqrt(2)) < 0.02
    plain = keypoint_error(model, keypoints, points, fit_keypoint_map(keypoints, points))
    assert plain["rms_px"] > 3 * tracked["rms_px"]
    # the error against the tip is the choice of point (the floor) plus the noise
    assert abs(np.hypot(tracked["placement_floor_rms_px"], tracked["rms_px"]) - plain["rms_px"]) < 0.02
    on_tip = scale * points + rng.normal(0, noise_px / px, (n, 2, 2))
    assert tracked_point_error(model, on_tip, points, tracked_keypoint_map(model, on_tip, points))["placement_floor_rms_px"] < 1e-6
    # the map carries the fraction to velocities (linear along the link) and through JSON
    velocities = rng.normal(0, 1, (5, 2, 2))
    expected = np.stack([velocities[:, 0], velocities[:, 0] + 0.9 * (velocities[:, 1] - velocities[:, 0])], 1) @ kmap.a.T
    np.testing.assert_allclose(kmap.vectors(velocities), expected)
    again = KeypointMap.from_dict(kmap.to_dict())
    np.testing.assert_allclose(again.points(points[:5]), kmap.points(points[:5]))
    np.testing.assert_allclose(again.points(points[:5]), keypoints[:5], atol=5 * noise_px / px)


def test_true_constants_answer_a_push_near_the_goal_as_the_real_cartpole():
    """The goal states balance the pole; there the true constants' push moves each keypoint as the real system's."""
    model = KeyCLDModel("cartpole", get_recipe("cartpole").model)
    # a map that puts the true points on the model's constraints (cart at height 0, its pole length)
    scale = model.constraints.length[0].item() / 0.9  # the real pole is 1 m long, its cart 1 m up
    kmap = KeypointMap(scale * np.eye(2), np.array([0.0, -scale]), along=((0, 1, 0.9),))
    env = RealEnv("cartpole", "state", action_repeat=1)
    qpos, _ = goal_states(env, 40, seed=1)
    env.close()
    assert np.median(np.cos(qpos[:, 1])) > 0.9 and np.cos(qpos[:, 1]).min() > 0.5  # the pole near upright
    truth, _ = true_physics_model(model, kmap, n=100)
    r = true_response(truth, kmap, n=40, near_goal=True)
    assert r["states"] == "near the goal" and r["passive_relative_error"] < 0.02
    np.testing.assert_allclose(r["actuator_gain_per_keypoint"], [1.0, 1.0], atol=0.02)


class _Differences:
    """A stand-in online estimator: the last frame's keypoints, their velocity a backward difference over `dt`."""

    def __init__(self, dt: float):
        self.dt = dt

    def start(self, model):
        return _DifferencesOnline(self.dt)


class _DifferencesOnline:
    def __init__(self, dt: float):
        self.dt, self.frames = dt, []

    def add(self, keypoints, action):
        assert (action is None) == (not self.frames)
        self.frames.append(keypoints.double())

    def estimate(self):
        return self.frames[-1], (self.frames[-1] - self.frames[-2]) / self.dt


def test_causal_errors_read_the_estimate_and_the_true_state_at_the_same_frame(tiny_data):
    """Fed the true points, an estimator that reports its last frame is off by nothing; its velocities by a backward difference's lag."""
    import torch

    from keycld_gym.analysis.diagnostics import HeldOut, causal_errors
    from keycld_gym.data.dataset import iter_sequences
    from keycld_gym.sim.keypoint_truth import true_points

    spec = get_system("cartpole")
    model = SimpleNamespace(spec=spec)
    kmap = KeypointMap(np.array([[0.5, 0.0], [0.0, -0.5]]), np.array([0.1, 1.0]), along=((0, 1, 0.9),))
    env = RealEnv("cartpole", "state", action_repeat=1)
    keypoints, actions, qpos, qvel = [], [], [], []
    for seq in iter_sequences(tiny_data, "cartpole"):
        points = []
        for q in seq["qpos"]:
            env.physics.data.qpos[:] = q
            env.physics.forward()
            points.append(true_points(env.physics, spec))
        keypoints.append(kmap.points(np.array(points)))
        actions.append(seq["actions"]), qpos.append(seq["qpos"]), qvel.append(seq["qvel"])
    env.close()
    sequences = [HeldOut(torch.tensor(np.array(keypoints)), torch.tensor(np.array(actions), dtype=torch.float32),
                         np.array(qpos), np.array(qvel))]
    errors = causal_errors(model, _Differences(spec.physics_dt), kmap, sequences, burn_in=8)
    assert errors.shape == (6 * 5, 8)  # agent steps at frames 8, 16, ..., 40 of each of 6 sequences; 4K = 8
    assert np.abs(errors[:, :4]).max() < 1e-9  # a frame early or late would be off by a velocity times 10 ms
    # the true velocities, as the estimate minus its error, against a central difference of the true points
    kp, dt, reads = np.array(keypoints), spec.physics_dt, range(8, 48, 8)  # (B, T, K, 2)
    backward = np.concatenate([((kp[:, t] - kp[:, t - 1]) / dt).reshape(6, -1) for t in reads])
    central = np.concatenate([((kp[:, t + 1] - kp[:, t - 1]) / (2 * dt)).reshape(6, -1) for t in reads])
    truth = backward - errors[:, 4:]
    assert np.sqrt(((truth - central) ** 2).mean()) < 0.02 * np.sqrt((truth**2).mean())
    assert np.sqrt((errors[:, 4:] ** 2).mean()) < 0.1 * np.sqrt((truth**2).mean())  # the backward difference's lag
    with pytest.raises(ValueError, match="after the burn-in"):
        causal_errors(model, _Differences(spec.physics_dt), kmap, sequences, burn_in=48)


def test_diagnose_scores_the_real_envs_online_estimate_against_the_true_state(tiny_model_dir, tiny_data, tmp_path, capsys):
    """`causal`: the cartpole's real estimator (the filter), its measurement noise from the true points without a measured one."""
    import json

    from keycld_gym.cli import main

    out = tmp_path / "diag.json"
    assert main(["diagnose", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--no-true-physics",
                 "--threads", "1", "--json", str(out)]) == 0
    c = json.loads(out.read_text())["causal"]
    assert c["estimator"]["kind"] == "Filtering" and c["estimator"]["bias_std"] == 0.03  # agents/cartpole.py
    assert c["measurement_std_from"] == "the true points" and len(c["estimator"]["measurement_std"]) == 4
    # 6 sequences of 48 frames, read every 8 frames after a burn-in of 33: once each, at frame 40
    assert (c["sequences"], c["burn_in"], c["every"], c["samples"]) == (6, 33, 8, 6)
    for key in ("position_rms_per_coordinate", "velocity_rms_per_coordinate", "velocity_mean_per_coordinate"):
        assert len(c[key]) == 4 and np.isfinite(c[key]).all()
    assert c["position_rms"] > 0 and c["velocity_rms"] > 0 and c["ms_per_agent_step"] > 0
    assert c["position_rms_px"] == pytest.approx(c["position_rms"] * 32)  # 64 pixels span 2 image units
    assert "online estimate (Filtering) against the true state over 6 agent steps of 6 sequences" in capsys.readouterr().out
    assert main(["diagnose", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--estimate-episodes", "1"]) == 2
    assert "--estimate-episodes runs the agent" in capsys.readouterr().err


def test_the_estimator_diagnosed_is_the_one_the_agent_meets(tiny_model_dir, tmp_path, monkeypatch):
    """The agent's recipe's estimator, else the bundled agent's; a filter's noise the model's measured frame error where it has one."""
    import shutil

    from keycld_gym.agents import bundled_recipe
    from keycld_gym.analysis import diagnostics
    from keycld_gym.analysis.diagnostics import ready_estimator, real_estimator
    from keycld_gym.model.checkpoint import load_model, write_noise
    from keycld_gym.model.tracking import Filtering, Tracking

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    write_noise(folder, {"std": [0.1] * 8, "frame_std": [0.01, 0.02, 0.03, 0.04]})
    model = load_model(folder)
    assert real_estimator(model) == bundled_recipe("cartpole", "keypoints").real_estimator
    window = Tracking(window=5)
    assert real_estimator(model, SimpleNamespace(recipe=SimpleNamespace(real_estimator=window))) is window
    frame_std = np.full(4, 0.5)
    ready, source = ready_estimator(Filtering(measurement_std=None, bias_std=0.03), model, frame_std)
    assert source == "observation_noise.json" and ready.measurement_std == pytest.approx((0.01, 0.02, 0.03, 0.04))
    assert ready.bias_std == 0.03
    assert ready_estimator(window, model, frame_std) == (window, "given")
    fresh = KeyCLDModel("cartpole", model.config)  # not loaded from a folder: nothing measured to read
    assert ready_estimator(Filtering(measurement_std=None), fresh, frame_std) == (
        Filtering(measurement_std=(0.5,) * 4), "the true points")
    monkeypatch.setattr(diagnostics, "bundled_recipe", lambda *args: None)  # a system no agent ships for
    assert real_estimator(model) == Tracking()


def test_agent_estimate_scores_the_estimate_along_the_agents_own_steps(tiny_model_dir, tiny_data):
    """`agent_estimate`: an agent in the real task on the tiny model's estimate, its error at every step it acts on."""
    from keycld_gym.analysis.diagnostics import agent_estimate_errors, keypoint_map_for
    from keycld_gym.model.checkpoint import load_model
    from keycld_gym.model.tracking import Filtering
    from keycld_gym.rl.agent import load_agent

    model = load_model(tiny_model_dir)
    kmap = keypoint_map_for(model, tiny_data)
    agent = load_agent("bundled", "cartpole", "keypoints")
    r = agent_estimate_errors(agent, model, kmap, Filtering(measurement_std=0.01), episodes=2, seed=3, max_steps=3)
    assert r["all"]["samples"] == 6 and r["near_goal"]["samples"] + r["away_from_goal"]["samples"] == 6
    assert r["near_goal_share"] == r["near_goal"]["samples"] / 6
    assert len(r["all"]["velocity_rms_per_coordinate"]) == 4 and np.isfinite(r["all"]["velocity_rms"])
    assert r["estimator"]["kind"] == "Filtering" and r["estimator"]["measurement_std"] == 0.01
    assert len(r["real_returns"]) == 2 and all(0.0 <= x <= (1 + 3) * 8 for x in r["real_returns"])  # the reset's zero step counts
