"""Online state estimators (`model/tracking.py`): both follow a trajectory from its noisy keypoints, frame by frame."""

import json

import numpy as np
import pytest
import torch
from conftest import model_with_gravity

from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import load_model, read_noise
from keycld_gym.model.tracking import (
    Filtering,
    Tracking,
    estimator_from_dict,
    estimator_to_dict,
    parse_estimator,
)


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


def test_the_bias_state_takes_up_a_model_error_that_persists():
    """The frames come from a world tilted under the model (a steady push of 1 unit/s^2 along x): the bias state learns it."""
    model = model_with_gravity()
    qs, vs, _, actions = _trajectory(model, frames=96)
    push = torch.tensor([1.0, 0.0])
    q, v = qs[:, 0], vs[:, 0]
    states = [(q, v)]
    with torch.no_grad():
        for t in range(actions.shape[1]):
            q, v = model.step(q, v, actions[:, t])
            q, v = model.project(q + push * model.dt**2 / 2, v + push * model.dt)
            states.append((q, v))
    true_v = states[-1][1]
    noisy = torch.stack([q for q, _ in states], 1) + 0.005 * torch.randn(2, 96, 2, 2)
    errors = {}
    for bias in (None, 0.3):
        _, v = _run(Filtering(measurement_std=0.005, acceleration_std=0.05, bias_std=bias), model, noisy, actions)
        errors[bias] = (v - true_v).norm(dim=-1).mean().item()
    assert errors[0.3] < 0.3 * errors[None], errors


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
    for bad in (dict(measurement_std=0.0), dict(acceleration_std=-1.0), dict(robust=0.0), dict(initial_velocity_std=0.0),
                dict(bias_std=0.0)):
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


def test_estimators_travel_as_json_and_bad_ones_say_what_is_wrong():
    for settings in (Tracking(window=9), Filtering(acceleration_std=0.05, bias_std=0.03)):
        assert estimator_from_dict(json.loads(json.dumps(estimator_to_dict(settings)))) == settings
        assert parse_estimator(json.dumps(estimator_to_dict(settings))) == settings
    assert parse_estimator("window") == Tracking() and parse_estimator("filter") == Filtering()
    for text, message in (("kalman", "'window', 'filter' or JSON"), ("[1]", "an object"),
                          ('{"kind": "Oracle"}', "unknown state estimator"),
                          ('{"kind": "Filtering", "gain": 2}', "unknown Filtering settings")):
        with pytest.raises(ValueError, match=message):
            parse_estimator(text)


def test_the_filter_takes_the_encoder_error_the_model_measured(noisy_model_dir):
    model_dir = noisy_model_dir
    model = load_model(model_dir)
    measured = read_noise(model_dir, "frame_std")
    variance = Filtering(measurement_std=None).start(model)._r
    assert np.allclose(variance.sqrt().numpy(), np.maximum(measured, measured[measured > 0].min()))
    with pytest.raises(ValueError, match="load the model from its folder"):
        Filtering(measurement_std=None).start(model_with_gravity())
    with pytest.raises(ValueError, match="one number or 4"):
        Filtering(measurement_std=(0.01, 0.02)).start(model)
    with pytest.raises(ValueError, match="must be positive"):
        Filtering(measurement_std=(0.01, -0.01, 0.01, 0.01))


def test_the_noise_measurement_runs_the_recipes_estimator_before_any_was_measured(tiny_model_dir, tiny_data):
    from keycld_gym.agents import bundled_recipe
    from keycld_gym.rl.observation_noise import measure_estimation_error

    assert not (tiny_model_dir / "observation_noise.json").exists()  # the filter's frame error is measured on the way
    result = measure_estimation_error(load_model(tiny_model_dir), tiny_data, reference=17, every=16)
    assert result["estimator"] == estimator_to_dict(bundled_recipe("cartpole").real_estimator)
    assert result["samples"] > 0 and np.isfinite(result["std"]).all() and len(result["std"]) == 8


def test_a_filter_that_reads_the_measured_frame_error_says_when_there_is_none(tiny_model_dir):
    with pytest.raises(CheckpointError, match="measurement noise is the model's measured frame error.*observation-noise"):
        Filtering(measurement_std=None).start(load_model(tiny_model_dir))
