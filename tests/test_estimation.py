"""Start-state estimation by shooting recovers the state of a trajectory from its noisy keypoints."""

import pytest
import torch
from conftest import model_with_gravity

from keycld_gym.model.estimation import (
    estimate_state,
    estimate_state_from_frames,
    fit_trajectory,
    initial_guess,
    refine_trajectory,
)


def test_shooting_recovers_the_end_state_far_better_than_differencing():
    model = model_with_gravity()
    torch.manual_seed(1)
    q0 = torch.tensor([[[0.1, 0.0], [0.6, 0.8]], [[-0.3, 0.0], [-0.3, -1.0]]])
    v0 = torch.tensor([[[0.5, 0.0], [1.0, -0.5]], [[0.0, 0.0], [2.0, 0.0]]])
    q0, v0 = model.project(q0, v0)
    actions = torch.rand(2, 32, 1) * 2 - 1
    with torch.no_grad():
        qs, vs = model.rollout(q0, v0, actions)
    noisy = qs + 0.01 * torch.randn_like(qs)  # ~0.3 px at 64 px height
    q_end, v_end = estimate_state(model, noisy, actions)
    diff_v = (noisy[:, -1] - noisy[:, -2]) / model.dt
    err_shoot = (v_end - vs[:, -1]).norm(dim=-1).mean()
    err_diff = (diff_v - vs[:, -1]).norm(dim=-1).mean()
    assert (q_end - qs[:, -1]).abs().max() < 0.01
    assert err_shoot < 0.1 * err_diff
    assert model.constraints.phi(q_end).abs().max() < 1e-4


def test_two_frames_are_enough_to_run_and_bad_shapes_are_refused():
    model = model_with_gravity()
    kp = torch.zeros(1, 2, 2, 2)
    kp[:, :, 1, 1] = 1.0
    qs, vs = fit_trajectory(model, kp, torch.zeros(1, 1, 1))
    assert qs.shape == (1, 2, 2, 2) and torch.isfinite(vs).all()
    with pytest.raises(ValueError, match="n >= 2"):
        estimate_state(model, torch.zeros(1, 1, 2, 2), torch.zeros(1, 0, 1))
    with pytest.raises(ValueError, match="actions must be"):
        estimate_state(model, torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 1))
    with pytest.raises(ValueError, match="frames must be"):
        estimate_state_from_frames(model, torch.zeros(4, 64, 128, 3, dtype=torch.uint8), torch.zeros(1, 3, 1))


def test_initial_guess_is_a_line_fit():
    t = torch.arange(6.0)[None, :, None, None] * 0.01
    kp = 0.3 + 2.0 * t.expand(1, 6, 2, 2)
    q, v = initial_guess(kp, 0.01)
    torch.testing.assert_close(q, torch.full((1, 2, 2), 0.3))
    torch.testing.assert_close(v, torch.full((1, 2, 2), 2.0))


def test_robust_refinement_is_not_dragged_by_a_glitched_frame():
    model = model_with_gravity()
    torch.manual_seed(2)
    q0, v0 = model.project(torch.tensor([[[0.1, 0.0], [0.6, 0.8]]]), torch.tensor([[[0.5, 0.0], [1.0, -0.5]]]))
    actions = torch.rand(1, 16, 1) * 2 - 1
    with torch.no_grad():
        qs, vs = model.rollout(q0, v0, actions)
    noisy = qs + 0.005 * torch.randn_like(qs)
    noisy[:, 12, 1] += torch.tensor([0.4, -0.3])  # the encoder's rare glitch: one keypoint, one frame
    guess = (q0, v0 + 0.2)
    errors = {}
    for robust in (None, 0.02):
        q, v = refine_trajectory(model, noisy, actions, guess, iterations=4, robust=robust)
        errors[robust] = float((v[:, -1] - vs[:, -1]).norm(dim=-1).max())
    assert errors[0.02] < 0.3 * errors[None]
    assert errors[0.02] < 0.1


def test_tracking_settings_are_checked():
    from keycld_gym.model.tracking import Tracking

    for bad in (dict(window=1), dict(iterations=0), dict(robust=0.0)):
        with pytest.raises(ValueError):
            Tracking(**bad)
    assert Tracking(robust=None).robust is None


def test_a_model_whose_rollout_blows_up_still_gives_finite_states_from_the_frames():
    model = model_with_gravity()
    with torch.no_grad():
        model.dynamics.mass_raw_diag.fill_(-12.0)  # a near-zero mass: huge accelerations
    # frames of a legal motion: the cart slides at 0.5 units/s, the pole rigidly with it
    q0, _ = model.project(torch.tensor([[[0.1, 0.0], [0.6, 0.8]], [[-0.3, 0.0], [-0.3, -1.0]]]), torch.zeros(2, 2, 2))
    t = torch.arange(9.0)[:, None, None] * model.dt
    keypoints = q0[:, None] + t * torch.tensor([0.5, 0.0])
    actions = torch.rand(2, 8, 1) * 2 - 1
    with torch.no_grad():
        assert not model.rollout(q0, torch.zeros_like(q0), actions)[0].isfinite().all()
    cold = fit_trajectory(model, keypoints, actions, iterations=2, stages=())
    warm = refine_trajectory(model, keypoints, actions, (q0, torch.zeros_like(q0)), robust=0.02)
    for qs, vs in (cold, warm):
        assert qs.shape == vs.shape == keypoints.shape and qs.isfinite().all() and vs.isfinite().all()
        # no dynamics to trust: the frames' own positions and their differences
        assert (qs - keypoints).abs().max() < 1e-5
        assert (vs - torch.tensor([0.5, 0.0])).abs().max() < 1e-3
