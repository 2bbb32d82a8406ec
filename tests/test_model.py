"""The assembled model: shapes and batching, keypoint ordering by constraints, projection."""

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from keycld_gym.model.keycld import (
    KeyCLDModel,
    ModelConfig,
    init_constraints_from,
    keypoint_order,
)
from keycld_gym.sim.systems import get_system


@pytest.mark.parametrize("system", ["pendulum", "cartpole", "acrobot"])
def test_shapes_and_batching(system):
    torch.manual_seed(0)
    model = KeyCLDModel(system, TINY_MODEL)
    spec = model.spec
    h, w, _ = spec.image_shape
    k = spec.num_keypoints
    frames = torch.randint(0, 255, (3, h, w, 3), dtype=torch.uint8)
    q = model.encode(frames)
    assert q.shape == (3, k, 2)
    assert model.render(q).shape == (3, h, w, 3)
    v = torch.randn(3, k, 2)
    q, v = model.project(q, v)
    qs, vs = model.rollout(q, v, torch.rand(3, 5, 1) * 2 - 1)
    assert qs.shape == vs.shape == (3, 6, k, 2)
    assert model.reward(qs[:, 1:], vs[:, 1:], torch.zeros(3, 5, 1)).shape == (3, 5)
    # one batch of three equals three batches of one
    one = torch.cat([model.step(q[i:i + 1], v[i:i + 1], torch.zeros(1, 1))[0] for i in range(3)])
    torch.testing.assert_close(model.step(q, v, torch.zeros(3, 1))[0], one, rtol=1e-5, atol=1e-6)


def _cartpole_keypoints(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x, th = rng.uniform(-1, 1, n), rng.uniform(-np.pi, np.pi, n)
    cart = np.stack([0.6 * x, np.full(n, 0.1)], -1)
    tip = cart + 0.6 * np.stack([np.sin(th), np.cos(th)], -1)
    return torch.from_numpy(np.stack([cart, tip], 1)).float()


def test_keypoint_order_follows_the_constraints():
    kp = _cartpole_keypoints()
    spec = get_system("cartpole")
    assert keypoint_order(kp, spec) == [0, 1]
    assert keypoint_order(kp[:, [1, 0]], spec) == [1, 0]
    model = KeyCLDModel("cartpole", TINY_MODEL)
    init_constraints_from(kp, model)
    assert abs(model.constraints.height[0].item() - 0.1) < 1e-5
    assert abs(model.constraints.length[1].item() - 0.6) < 1e-4


def test_pendulum_pivot_is_measured_from_the_circle():
    rng = np.random.default_rng(0)
    th = rng.uniform(-np.pi, np.pi, 100)
    kp = torch.from_numpy(np.stack([0.2 + 0.7 * np.sin(th), -0.1 + 0.7 * np.cos(th)], -1)[:, None]).float()
    model = KeyCLDModel("pendulum", TINY_MODEL)
    init_constraints_from(kp, model)
    torch.testing.assert_close(model.constraints.pivot[0].detach(), torch.tensor([0.2, -0.1]), atol=1e-4, rtol=0)
    assert abs(model.constraints.length[0].item() - 0.7) < 1e-4


@pytest.mark.parametrize("full_resolution", [False, True])
def test_permuting_keypoints_keeps_encoding_and_rendering(full_resolution):
    from dataclasses import replace

    torch.manual_seed(0)
    config = replace(TINY_MODEL, encoder=replace(TINY_MODEL.encoder, full_resolution=full_resolution))
    model = KeyCLDModel("cartpole", config)
    frames = torch.randint(0, 255, (2, 64, 128, 3), dtype=torch.uint8)
    with torch.no_grad():
        q = model.encode(frames)
        img = model.render(q)
        model.permute_keypoints([1, 0])
        torch.testing.assert_close(model.encode(frames), q[:, [1, 0]])
        torch.testing.assert_close(model.render(q[:, [1, 0]]), img)


def test_config_round_trip_and_bad_settings():
    cfg = ModelConfig()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="integrator"):
        ModelConfig(integrator="leapfrog")
    with pytest.raises(TypeError):
        ModelConfig.from_dict({**cfg.to_dict(), "unknown": 1})
    with pytest.raises(ValueError, match="reward_output"):
        ModelConfig(reward_output="softmax")


def test_sigmoid_reward_head_stays_in_the_suites_reward_range():
    """dm_control rewards lie in [0, 1]: a sigmoid head never leaves it, however far out the state."""
    from dataclasses import replace

    model = KeyCLDModel("pendulum", replace(TINY_MODEL, reward_output="sigmoid"), action_dim=1)
    q, v = 100 * torch.randn(64, 1, 2), 100 * torch.randn(64, 1, 2)
    r = model.reward(q, v, torch.randn(64, 1))
    assert r.shape == (64,) and bool(((r >= 0) & (r <= 1)).all())
    # a model saved without the setting (the bundled cartpole's) reads back with a linear head
    d = ModelConfig().to_dict()
    del d["reward_output"]
    assert ModelConfig.from_dict(d).reward_output == "linear"
