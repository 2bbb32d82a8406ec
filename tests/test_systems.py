import numpy as np
import pytest

import keycld_gym
from keycld_gym import SYSTEMS, UnknownSystemError, get_system
from keycld_gym.sim.camera import ObservationCamera, pixels_to_image
from keycld_gym.sim.real_env import RealEnv


def test_every_system_has_a_consistent_spec():
    assert set(SYSTEMS) == {"pendulum", "cartpole", "acrobot"}
    for name, spec in SYSTEMS.items():
        assert get_system(name) is spec
        assert spec.episode_steps == 1000
        assert spec.agent_steps * spec.action_repeat == spec.episode_steps
        assert spec.task == "swingup"
        assert len(spec.constraints) <= 2 * spec.num_keypoints
    assert get_system("cartpole").action_repeat == 8
    assert get_system("cartpole").image_shape == (64, 128, 3)


def test_unknown_system_lists_the_valid_ones():
    with pytest.raises(UnknownSystemError, match="acrobot, cartpole, pendulum"):
        get_system("cartpol")
    with pytest.raises(ValueError, match="unknown system"):
        keycld_gym.make_real_env("hopper")


def test_image_coordinates_convention():
    # Pixel centres of the corners of a 64x128 frame: y spans [-1, 1] over the height.
    corners = np.array([[0.0, 0.0], [127.0, 63.0], [63.5, 31.5]])
    xy = pixels_to_image(corners, 64, 128)
    np.testing.assert_allclose(xy[0], [-63.5 / 32, 31.5 / 32])
    np.testing.assert_allclose(xy[2], [0.0, 0.0])
    assert xy[1, 0] > 0 > xy[1, 1]


def _in_frame(px, spec, margin=0.5):
    return (px[:, 0] >= margin).all() and (px[:, 0] <= spec.camera.width - 1 - margin).all() and \
        (px[:, 1] >= margin).all() and (px[:, 1] <= spec.camera.height - 1 - margin).all()


def _cartpole_points(env):
    d = env.physics.named.data
    cart = d.xpos["cart"]
    pole_axis = d.geom_xmat["pole_1"].reshape(3, 3)[:, 2]
    ends = [d.geom_xpos["pole_1"] + s * 0.5 * pole_axis for s in (-1, 1)]
    corners = [cart + np.array([sx * 0.2, 0, sz * 0.1]) for sx in (-1, 1) for sz in (-1, 1)]
    return np.array([*ends, *corners])


CARTPOLE_REACH = 2.1  # m: the framed range of cart positions


def test_cartpole_rail_stop_overshoot_is_within_the_framed_range():
    # The fastest approach the task allows: full force from rest at the far rail stop
    # (~8 m/s at impact). The stiff stop still lets the cart past its 1.8 m limit.
    env = RealEnv("cartpole", "state", action_repeat=1)
    reach = 0.0
    for direction in (-1.0, 1.0):
        for theta in (0.0, np.pi / 2, np.pi):
            env.reset(seed=0, options={"qpos": [-1.8 * direction, theta], "qvel": [0.0, 0.0]})
            for _ in range(400):
                _, _, _, _, info = env.step([direction])
                reach = max(reach, abs(info["qpos"][0]))
    assert 1.8 < reach < CARTPOLE_REACH


def test_cartpole_camera_keeps_cart_and_pole_in_frame_in_every_reachable_state():
    spec = get_system("cartpole")
    env = RealEnv("cartpole", "pixels")
    env.reset(seed=0)
    for x in np.linspace(-CARTPOLE_REACH, CARTPOLE_REACH, 9):
        for theta in np.linspace(-np.pi, np.pi, 16, endpoint=False):
            env.set_state([x, theta], [0.0, 0.0])
            assert _in_frame(env.camera.project_pixels(_cartpole_points(env)), spec), (x, theta)


@pytest.mark.parametrize("x", [-1.9, 1.9])
def test_cartpole_pole_is_drawn_at_both_rail_limits(x):
    env = RealEnv("cartpole", "pixels")
    env.reset(seed=0)
    theta = np.sign(x) * np.pi / 2  # pole pointing outward, horizontally: the widest reach
    env.set_state([x, theta], [0.0, 0.0])
    frame = env.camera.render().astype(int)
    tip = env.camera.project_pixels(_cartpole_points(env)[:2])
    tip = tip[np.argmax(np.abs(tip[:, 0] - 63.5))]  # the end farther from the centre
    c, r = (int(round(v)) for v in tip)
    patch = frame[max(r - 2, 0) : r + 3, max(c - 3, 0) : c + 4]
    # The pole is orange (red well above blue); the background is blue-grey.
    assert (patch[..., 0] - patch[..., 2] > 60).any()


@pytest.mark.parametrize("name,body,reach", [("pendulum", "pole", 0.55), ("acrobot", "upper_arm", 2.05)])
def test_frontal_cameras_frame_the_whole_reach_circle(name, body, reach):
    spec = get_system(name)
    env = RealEnv(name, "pixels")
    env.reset(seed=0)
    pivot = env.physics.named.data.xpos[body].copy()
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    circle = pivot + reach * np.stack([np.sin(angles), np.zeros_like(angles), np.cos(angles)], -1)
    px = env.camera.project_pixels(circle)
    assert _in_frame(px, spec)
    # Head-on: the circle projects to a circle (equal radius in every direction).
    radii = np.linalg.norm(px - env.camera.project_pixels(pivot[None])[0], axis=1)
    assert radii.std() / radii.mean() < 0.02


def test_observation_camera_projection_matches_the_pixels(tmp_path):
    env = RealEnv("pendulum", "pixels")
    env.reset(seed=0)
    env.set_state([np.pi / 2], [0.0])  # bob to the side
    frame = env.camera.render().astype(int)
    bob = env.camera.project_pixels(env.physics.named.data.geom_xpos["mass"][None])[0]
    c, r = (int(round(v)) for v in bob)
    assert frame[r, c, 0] - frame[r, c, 2] > 60  # the orange bob is where the projection says
    assert isinstance(env.camera, ObservationCamera)


def test_windows_are_durations_the_same_on_every_system():
    """Each window spans the same seconds on every system: the frame counts measured at 0.01 s, halved at 0.02 s."""
    from keycld_gym.sim.systems import WINDOWS

    counts = {name: (spec.frames(WINDOWS.tracking), spec.frames(WINDOWS.start_fit), spec.frames(WINDOWS.start_bank))
              for name, spec in SYSTEMS.items()}
    assert counts == {"cartpole": (17, 33, 9), "acrobot": (17, 33, 9), "pendulum": (9, 17, 5)}
    for spec in SYSTEMS.values():
        assert (spec.frames(WINDOWS.start_fit) - 1) * spec.physics_dt == pytest.approx(WINDOWS.start_fit)


def test_keypoint_points_are_the_bodies_the_keypoints_stand_for():
    """The spec's true keypoints in the real task: the pendulum's bob 0.5 m below its pivot at rest, the acrobot's tip 2 m out."""
    from keycld_gym.sim.keypoint_truth import true_motion, true_points

    env = RealEnv("pendulum", "state", action_repeat=1)
    env.reset(seed=0)
    env.set_state(np.array([0.0]), np.array([2.0]))  # upright, turning
    pivot = env.physics.named.data.xpos["pole"]
    (bob,) = true_points(env.physics, env.system)
    assert bob[1] - pivot[2] == pytest.approx(0.5, abs=1e-6) and bob[0] == pytest.approx(pivot[0], abs=1e-6)
    _, v = true_motion(env.physics, env.system)
    assert np.linalg.norm(v) == pytest.approx(0.5 * 2.0, rel=1e-4)  # r omega
    env = RealEnv("acrobot", "state", action_repeat=1)
    env.reset(seed=0)
    env.set_state(np.zeros(2), np.zeros(2))
    elbow, tip = true_points(env.physics, env.system)
    assert np.linalg.norm(tip - elbow) == pytest.approx(1.0, abs=1e-6)
