import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from keycld_gym import SYSTEMS, get_system, make_real_env
from keycld_gym.sim.camera import import_dm_control
from keycld_gym.sim.exploration import (
    AcrobotSwingUp,
    CartpoleSwingUp,
    PendulumSwingUp,
    SmoothNoise,
)
from keycld_gym.sim.real_env import RealEnv


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_spaces_and_dtypes(name):
    spec = get_system(name)
    env = make_real_env(name)
    assert env.observation_space == gym.spaces.Box(0, 255, spec.image_shape, np.uint8)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, info = env.reset(seed=0)
    assert obs.shape == spec.image_shape and obs.dtype == np.uint8
    assert info["qpos"].shape == (len(spec.qpos_names),)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs in env.observation_space
    assert isinstance(reward, float) and 0.0 <= reward <= spec.action_repeat
    assert info["physics_steps"] == spec.action_repeat


def test_gymnasium_env_checker_passes():
    check_env(make_real_env("cartpole"), skip_render_check=False)


def test_episode_is_1000_physics_steps_at_any_action_repeat():
    for repeat, expected in ((8, 125), (1, 1000)):
        env = make_real_env("cartpole", "state", action_repeat=repeat)
        env.reset(seed=0)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            steps += 1
            done = terminated or truncated
        assert truncated and not terminated
        assert steps == expected and info["physics_steps"] == 1000


def test_bad_action_repeat_and_obs_type():
    with pytest.raises(ValueError, match="divisor of 1000"):
        make_real_env("cartpole", action_repeat=7)
    with pytest.raises(ValueError, match="obs_type"):
        make_real_env("cartpole", "rgb")


def test_seeding_is_deterministic():
    a, b = make_real_env("cartpole"), make_real_env("cartpole")
    actions = np.random.default_rng(0).uniform(-1, 1, (10, 1))
    for env in (a, b):
        env.reset(seed=123)
    oa, ia = a.reset(seed=7)
    ob, ib = b.reset(seed=7)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(ia["qpos"], ib["qpos"])
    for act in actions:
        ra, rb = a.step(act), b.step(act)
        np.testing.assert_array_equal(ra[0], rb[0])
        assert ra[1] == rb[1]
    other, _ = a.reset(seed=8)
    assert not np.array_equal(a.reset(seed=7)[1]["qpos"], a.reset(seed=8)[1]["qpos"])


def test_reset_to_a_given_state_lands_there_and_checks_sizes():
    env = make_real_env("cartpole")
    qpos, qvel = np.array([0.5, 0.3]), np.array([-0.2, 1.0])
    obs, info = env.reset(seed=0, options={"qpos": qpos, "qvel": qvel})
    np.testing.assert_allclose(info["qpos"], qpos)
    np.testing.assert_allclose(info["qvel"], qvel)
    np.testing.assert_array_equal(obs, env.camera.render())
    with pytest.raises(ValueError, match=r"qpos \[slider, hinge_1\] must have shape \(2,\), got \(3,\)"):
        env.reset(options={"qpos": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="finite"):
        env.reset(options={"qvel": [np.nan, 0.0]})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"state": [0.0]})


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_returns_equal_raw_dm_control_from_the_same_state(name):
    spec = get_system(name)
    suite, _ = import_dm_control()
    raw = suite.load(spec.domain, spec.task, task_kwargs={"random": 42})
    raw.reset()
    env = make_real_env(name, "state")
    _, info = env.reset(seed=42)
    np.testing.assert_array_equal(info["qpos"], raw.physics.data.qpos)  # same reset state
    actions = np.random.default_rng(1).uniform(-1, 1, (spec.agent_steps, 1))
    ours = theirs = 0.0
    for action in actions:
        _, reward, terminated, truncated, _ = env.step(action)
        ours += reward
        for _ in range(spec.action_repeat):
            theirs += raw.step(action).reward or 0.0
        if terminated or truncated:
            break
    assert raw._reset_next_step  # the raw episode ended exactly when ours did
    assert abs(ours - theirs) < 1e-3


def test_reset_to_a_state_matches_raw_dm_control_from_that_state():
    suite, _ = import_dm_control()
    raw = suite.load("cartpole", "swingup", task_kwargs={"random": 0})
    raw.reset()
    qpos, qvel = [0.3, 2.5], [0.1, -0.4]
    with raw.physics.reset_context():
        raw.physics.data.qpos[:], raw.physics.data.qvel[:] = qpos, qvel
    env = make_real_env("cartpole", "state")
    env.reset(seed=0, options={"qpos": qpos, "qvel": qvel})
    rng = np.random.default_rng(3)
    ours = theirs = 0.0
    for _ in range(40):
        action = rng.uniform(-1, 1, 1)
        ours += env.step(action)[1]
        theirs += sum(raw.step(action).reward for _ in range(8))
    assert abs(ours - theirs) < 1e-3


def test_bad_actions_raise_and_out_of_range_is_clipped():
    env = make_real_env("cartpole", "state")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    big = env.step([5.0])[0]
    env.reset(seed=0)
    one = env.step([1.0])[0]
    np.testing.assert_array_equal(big, one)


def test_render_is_a_larger_view():
    env = make_real_env("cartpole", render_mode="rgb_array")
    env.reset(seed=0)
    assert env.render().shape == (256, 512, 3)
    assert make_real_env("cartpole").render() is None
    assert make_real_env("cartpole", image_size=(32, 64)).reset(seed=0)[0].shape == (32, 64, 3)


def test_scripted_cartpole_controller_swings_up():
    # The data collector's controller must actually reach upright, or the data never does.
    env = RealEnv("cartpole", "state", action_repeat=1)
    _, info = env.reset(seed=0)
    controller = CartpoleSwingUp(env.physics, np.random.default_rng(0))
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, info = env.step(np.clip(controller(info["qpos"], info["qvel"]), -1, 1))
        total += reward
        done = terminated or truncated
    assert total > 700


def test_scripted_pendulum_controller_balances_or_turns_over_as_drawn():
    """Its draw decides: pumped to the upright energy it swings up and balances; above it, it turns over."""
    env = RealEnv("pendulum", "state", action_repeat=1)
    seen = {}
    for seed in (1, 0):  # draws a balancing (target 0) and a rotating controller
        _, info = env.reset(seed=seed)
        controller = PendulumSwingUp(env.physics, np.random.default_rng(seed))
        start, total, done = info["qpos"][0], 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(controller(info["qpos"], info["qvel"]))
            total += reward
            done = terminated or truncated
        seen["balance" if controller.target == 0 else "rotate"] = (total, abs(info["qpos"][0] - start) / (2 * np.pi))
    assert seen["balance"][0] > 700  # the task's own return, from its own reset
    assert seen["rotate"][1] > 5  # full turns of the hinge in one episode
    # the draw comes from the sequence's generator: the same seed, the same controller
    a, b = (PendulumSwingUp(env.physics, np.random.default_rng(7)) for _ in range(2))
    assert (a.pump, a.target) == (b.pump, b.target)


def test_scripted_acrobot_controller_pumps_the_arm_over_the_top():
    """The elbow's energy pump swings the tip up where the task rewards; smooth noise alone does not."""
    env = RealEnv("acrobot", "state", action_repeat=1)

    def episode(seed: int, policy) -> tuple[float, float]:
        _, info = env.reset(seed=seed)
        start, total, done = info["qpos"][0], 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(np.clip(policy(info["qpos"], info["qvel"]), -1, 1))
            total, done = total + reward, terminated or truncated
        return total, abs(info["qpos"][0] - start) / (2 * np.pi)

    for seed in (0, 1):
        pumped, turns = episode(seed, AcrobotSwingUp(env.physics, np.random.default_rng(seed)))
        noise = SmoothNoise(1, np.random.default_rng(seed), 8.0, 0.5, 1.0)
        unpumped, _ = episode(seed, lambda q, v: noise())
        assert pumped > 80 and turns > 2 and unpumped < 30, (pumped, turns, unpumped)
    a, b = (AcrobotSwingUp(env.physics, np.random.default_rng(7)) for _ in range(2))
    assert (a.pump, a.rate_scale, a.target) == (b.pump, b.rate_scale, b.target) and a.target >= a.upright


@pytest.mark.parametrize("backend", ["bogus", "osmesa"])
def test_a_gl_backend_that_cannot_render_names_mujoco_gl(backend):
    code = (
        "import keycld_gym\n"
        "try:\n"
        "    keycld_gym.make_real_env('cartpole').reset(seed=0)\n"
        "except keycld_gym.RenderBackendError as e:\n"
        "    print('ERR', e)\n"
        "else:\n"
        "    print('RENDERED')\n"
    )
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    if "RENDERED" in out:
        pytest.skip(f"MUJOCO_GL={backend} renders on this machine")
    assert "ERR" in out and "MUJOCO_GL" in out and "apt-get install" in out, out
