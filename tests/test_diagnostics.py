from types import SimpleNamespace

import numpy as np

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
