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


@pytest.mark.parametrize("system", ["pendulum", "cartpole", "acrobot"])
def test_constrained_keypoints_keep_the_constraints_and_their_links_directions(system):
    """`EncoderConfig.constrained`: encoded keypoints lie on the manifold; each keeps its raw point's direction."""
    from dataclasses import replace

    from keycld_gym.model.encoder import spatial_softmax

    torch.manual_seed(0)
    model = KeyCLDModel(system, replace(TINY_MODEL, encoder=replace(TINY_MODEL.encoder, constrained=True,
                                                                     read_beyond=0.0)))
    spec, kc = model.spec, model.keypoint_constraints
    with torch.no_grad():
        kc.height.fill_(0.1)
        kc.raw_length.uniform_(-1.0, 0.5)
    heat = 8 * torch.randn(5, spec.num_keypoints, 16, 16)  # peaked at random points
    raw, q = spatial_softmax(heat), model.keypoints(heat)
    frames = torch.randint(0, 255, (5, *spec.image_shape), dtype=torch.uint8)
    assert model.encode(frames).shape == raw.shape
    pivots, pivoted = model.renderer.pivot_links()
    for i, c in enumerate(spec.constraints):
        if c.kind == "fixed_height":
            torch.testing.assert_close(q[:, c.a, 1], torch.full((5,), 0.1))
            torch.testing.assert_close(q[:, c.a, 0], raw[:, c.a, 0])
            continue
        start, moved = (pivots[pivoted.index(c.a)], c.a) if c.kind == "fixed_pivot_distance" else (q[:, c.a], c.b)
        d, d_raw = q[:, moved] - start, raw[:, moved] - start
        far = d_raw.norm(dim=-1) > 0.1  # 3 px: nearer, the 0.3 px regularisation of the direction shortens the link
        assert far.sum() >= 2
        torch.testing.assert_close(d[far].norm(dim=-1), kc.length[i].expand(int(far.sum())),
                                   atol=1e-2 * kc.length[i].item(), rtol=0)
        cross = d[:, 0] * d_raw[:, 1] - d[:, 1] * d_raw[:, 0]
        assert cross.abs().max() < 1e-5 and ((d * d_raw).sum(-1) > 0).all()
    # the constants learn with the encoder; the keypoints' order is the constraints'
    assert all(any(p is c for c in model.keypoint_parameters()) for p in kc.parameters())
    q.sum().backward()
    assert kc.raw_length.grad.abs().sum() > 0
    if spec.num_keypoints > 1:
        with pytest.raises(ValueError, match="cannot be reordered"):
            model.permute_keypoints([1, 0])


@pytest.mark.parametrize("system", ["pendulum", "cartpole", "acrobot"])
@pytest.mark.parametrize("constrained", [False, True])
def test_the_mirror_average_reads_a_frame_and_its_mirror_image(system, constrained):
    """`EncoderConfig.mirror_average`: the keypoints of a frame's mirror image are its own, mirrored; they average both reads."""
    from dataclasses import replace

    torch.manual_seed(0)
    config = replace(TINY_MODEL, encoder=replace(TINY_MODEL.encoder, constrained=constrained),
                     renderer=replace(TINY_MODEL.renderer, learn_pivots=False))  # pivots at the centre, as the recipes
    model = KeyCLDModel(system, config).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(4.0)  # peaked heatmaps: an untrained encoder's are flat, its keypoints all near the centre
    frames = torch.randint(0, 255, (4, *model.spec.image_shape), dtype=torch.uint8)
    mirror, mirrored = torch.tensor([-1.0, 1.0]), frames.flip(2)
    with torch.no_grad():
        plain, plain_of_mirrored = model.encode(frames), model.encode(mirrored)
        # an untrained encoder is far from mirror-symmetric: what the average has to undo
        assert (plain_of_mirrored - plain * mirror).abs().max() > 1e-2
        model.config = replace(config, encoder=replace(config.encoder, mirror_average=True))
        averaged, averaged_of_mirrored = model.encode(frames), model.encode(mirrored)
    torch.testing.assert_close(averaged, 0.5 * (plain + plain_of_mirrored * mirror), atol=1e-5, rtol=0)
    torch.testing.assert_close(averaged_of_mirrored, averaged * mirror, atol=1e-5, rtol=0)


def test_constrained_keypoints_read_their_direction_beyond_the_links_start():
    """`EncoderConfig.read_beyond`: heatmap mass near a link's start (the acrobot's shoulder) does not steer it."""
    from dataclasses import replace

    from keycld_gym.model.encoder import image_grid

    model = KeyCLDModel("pendulum", replace(TINY_MODEL, encoder=replace(TINY_MODEL.encoder, constrained=True)))
    with torch.no_grad():
        model.keypoint_constraints.raw_length.fill_(0.0)  # softplus: length 0.69
    grid = image_grid(32, 32)
    pivot = model.renderer.pivot_links()[0][0]

    def peak(at):  # about a pixel wide
        return -((grid - torch.tensor(at)) ** 2).sum(-1) / 0.001

    # a strong peak 2 px right of the pivot, a weaker one far up: the far one sets the direction
    heat = torch.maximum(peak([pivot[0].item() + 0.06, pivot[1].item()]), peak([pivot[0].item(), 0.6]) - 3)[None, None]
    q = model.keypoints(heat)[0, 0]
    assert abs(q[0].item() - pivot[0].item()) < 1e-3 and q[1].item() > pivot[1].item() + 0.6
    # with nothing beyond the reach, the near peak still gives the direction
    q = model.keypoints(peak([pivot[0].item() + 0.06, pivot[1].item()])[None, None])[0, 0]
    assert q[0].item() > pivot[0].item() + 0.6 and abs(q[1].item() - pivot[1].item()) < 1e-3
    # the acrobot's lower arm is read off the upper arm: a stronger peak there does not fold it back
    model = KeyCLDModel("acrobot", replace(TINY_MODEL, encoder=replace(TINY_MODEL.encoder, constrained=True)))
    with torch.no_grad():
        model.keypoint_constraints.raw_length.fill_(0.0)
        model.renderer.pivots.zero_()
    upper_arm = peak([0.0, -0.6])
    lower_arm = torch.maximum(peak([0.0, -0.2]), peak([0.5, -0.69]) - 3)
    q = model.keypoints(torch.stack([upper_arm, lower_arm])[None])[0]
    torch.testing.assert_close(q, torch.tensor([[0.0, -0.6931], [0.6931, -0.6931]]), atol=1e-2, rtol=0)


def test_constrained_keypoints_refuse_constraints_they_cannot_hold():
    from keycld_gym.model.constraints import ConstraintSet
    from keycld_gym.sim.systems import Constraint

    with pytest.raises(ValueError, match="more"):
        ConstraintSet((Constraint("fixed_height", a=0), Constraint("fixed_pivot_distance", a=0)), 1).check_placeable()
    with pytest.raises(ValueError, match="from the pivot outwards"):
        ConstraintSet((Constraint("fixed_distance", a=0, b=1), Constraint("fixed_pivot_distance", a=0)),
                      2).check_placeable()
