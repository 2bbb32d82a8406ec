"""Online state estimators (`model/tracking.py`): both follow a trajectory from its noisy keypoints, frame by frame."""

import pytest
import torch
from conftest import model_with_gravity

from keycld_gym.model.tracking import Filtering, Tracking


def _trajectory(model, frames: int = 64, noise: float = 0.01, seed: int = 1):
    """True states `(2, T, K, 2)` x2 of the model's own rollout, its noisy keypoints and the actions `(2, T - 1, 1)`."""
    torch.manual_seed(seed)
    q0, v0 = model.project(torch.tensor([[[0.1, 0.0], [0.6, 0.8]], [[-0.3, 0.0], [-0.3, -1.0]]]),
                           torch.tensor([[[0.5, 0.0], [1.0, -0.5]], [[0.0, 0.0], [2.0, 0.0]]]))
    actions = torch.rand(2, frames - 1, 1) * 2 - 1
    with torch.no_grad():
        qs, vs = model.rollout(q0, v0, actions)
    return qs, vs, qs + noise * torch.randn_like(qs), actions


def _run(settings, model, keypoints, actions, every: int = 8):
    """Feed the frames one by one, reading the estimate every `every` frames as an agent would; the last frame's estimate."""
    estimator = settings.start(model)
    last = keypoints.shape[1] - 1
    for t in range(last + 1):
        estimator.add(keypoints[:, t], None if t == 0 else actions[:, t - 1])
        if t and (last - t) % every == 0:
            q, v = estimator.estimate()
    return q, v


@pytest.mark.parametrize("settings", [Tracking(), Filtering()], ids=["window", "filter"])
def test_both_estimators_follow_the_state_far_better_than_differencing(settings):
    model = model_with_gravity()
    qs, vs, noisy, actions = _trajectory(model)
    q, v = _run(settings, model, noisy, actions)
    diff_v = (noisy[:, -1] - noisy[:, -2]) / model.dt
    err = (v - vs[:, -1]).norm(dim=-1).mean()
    assert (q - qs[:, -1]).abs().max() < 0.01  # the frames' noise is 0.01
    assert err < 0.1 * (diff_v - vs[:, -1]).norm(dim=-1).mean()
    assert model.constraints.phi(q).abs().max() < 1e-4


def test_the_filter_keeps_what_earlier_frames_told_it():
    """Exact dynamics and a small process noise: after 64 frames the filter knows the velocities better than a 17-frame window."""
    model = model_with_gravity()
    qs, vs, noisy, actions = _trajectory(model, noise=0.02)
    errors = {}
    for name, settings in (("window", Tracking()), ("filter", Filtering(measurement_std=0.02, acceleration_std=0.05))):
        _, v = _run(settings, model, noisy, actions)
        errors[name] = (v - vs[:, -1]).norm(dim=-1).mean().item()
    assert errors["filter"] < 0.7 * errors["window"], errors


def test_a_glitched_frame_does_not_jolt_the_robust_filter():
    model = model_with_gravity()
    qs, vs, noisy, actions = _trajectory(model, frames=40, noise=0.005)
    noisy = noisy.clone()
    noisy[:, 32, 1] += 0.5  # the pole keypoint of one frame far off, as the encoder's rare glitches
    errors = {}
    for robust in (3.0, None):
        estimator = Filtering(measurement_std=0.005, robust=robust).start(model)
        for t in range(33):
            estimator.add(noisy[:, t], None if t == 0 else actions[:, t - 1])
        q, _ = estimator.estimate()
        errors[robust] = (q - qs[:, 32]).norm(dim=-1).max().item()
    assert errors[3.0] < 0.03 and errors[None] > 3 * errors[3.0], errors


def test_estimators_refuse_frames_out_of_order_and_bad_settings():
    model = model_with_gravity()
    for settings in (Tracking(), Filtering()):
        estimator = settings.start(model)
        with pytest.raises(ValueError, match="first frame comes without an action"):
            estimator.add(torch.zeros(1, 2, 2), torch.zeros(1, 1))
        with pytest.raises(ValueError):
            estimator.estimate()
        estimator.add(torch.zeros(1, 2, 2), None)
        with pytest.raises(ValueError, match="first frame comes without an action"):
            estimator.add(torch.zeros(1, 2, 2), None)
    for bad in (dict(measurement_std=0.0), dict(acceleration_std=-1.0), dict(robust=0.0), dict(initial_velocity_std=0.0)):
        with pytest.raises(ValueError):
            Filtering(**bad)


def test_a_filter_on_a_model_that_blows_up_stays_finite():
    model = model_with_gravity()
    with torch.no_grad():
        model.dynamics.mass_raw_diag.fill_(-12.0)  # a near-zero mass: huge accelerations
    q0, _ = model.project(torch.tensor([[[0.1, 0.0], [0.6, 0.8]]]), torch.zeros(1, 2, 2))
    estimator = Filtering().start(model)
    estimator.add(q0, None)
    for _ in range(16):
        estimator.add(q0, torch.ones(1, 1))
        q, v = estimator.estimate()
        assert q.isfinite().all() and v.isfinite().all()
