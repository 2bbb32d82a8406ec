"""The imagined env: Gymnasium and SB3 checks, seeding, resets, bad input, batching, SB3 adapter."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import cart_push, true_cart_push
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import keycld_gym
from keycld_gym import CheckpointError
from keycld_gym.envs.imagined_env import KeyCLDEnv, KeyCLDVectorEnv
from keycld_gym.envs.registration import env_id
from keycld_gym.envs.sb3 import SB3VecEnv
from keycld_gym.model.start_bank import read_start_bank
from keycld_gym.training.recipes import get_recipe as get_model_recipe


@pytest.fixture(scope="module")
def ckpt(tiny_model_dir):
    return str(tiny_model_dir)


@pytest.mark.parametrize("obs_type", ["pixels", "keypoints", "dict"])
def test_gymnasium_and_sb3_checkers(ckpt, obs_type):
    env = gym.make("KeyCLD-Cartpole-v0", checkpoint=ckpt, obs_type=obs_type)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(KeyCLDEnv("cartpole", ckpt, obs_type=obs_type), warn=False)


def test_make_without_import_and_without_weights(ckpt, monkeypatch, tmp_path):
    code = ("import gymnasium as gym; e = gym.make('keycld_gym:KeyCLD-Cartpole-v0', checkpoint=%r); "
            "o, _ = e.reset(seed=0); print(o.shape)" % ckpt)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(64, 128, 3)" in out.stdout
    monkeypatch.setattr("keycld_gym.model.checkpoint.BUNDLED_DIR", tmp_path)  # a package without weights
    with pytest.raises(CheckpointError, match="keycld-gym pipeline --system acrobot"):
        gym.make("KeyCLD-Acrobot-v0")
    with pytest.raises(CheckpointError, match="keycld-gym pipeline --system acrobot"):
        keycld_gym.make_real_env("acrobot", "keypoints")  # no bundled model to estimate with
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="not 'pendulum'"):
        KeyCLDEnv("pendulum", ckpt)


def test_spaces_equal_the_real_env(ckpt):
    real = keycld_gym.make_real_env("cartpole", "pixels")
    env = KeyCLDEnv("cartpole", ckpt)
    assert env.observation_space == real.observation_space
    assert env.action_space == real.action_space
    assert KeyCLDEnv("cartpole", ckpt, obs_type="keypoints").observation_space.shape == (8,)
    real.close()


def test_seeding_is_deterministic_and_episodes_last_1000_physics_steps(ckpt):
    env = KeyCLDEnv("cartpole", ckpt, obs_type="keypoints")
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    starts = {env.reset(seed=s)[0].tobytes() for s in range(8)}
    assert len(starts) > 1  # different seeds pick different real start windows
    env.reset(seed=0)
    n = 0
    while True:
        _, r, term, trunc, info = env.step(np.array([0.3], np.float32))
        n += 1
        assert 0.0 <= r <= env.action_repeat and not term
        if trunc:
            break
    assert n == 1000 // env.action_repeat and info["physics_steps"] == 1000


def test_envs_of_one_model_share_the_start_bank_fit_and_a_changed_model_refits(ckpt, monkeypatch):
    from keycld_gym.envs import imagination

    fits = []
    fit = imagination.estimate_state_from_frames
    monkeypatch.setattr(imagination, "estimate_state_from_frames", lambda *a, **k: fits.append(1) or fit(*a, **k))
    monkeypatch.setattr(imagination, "_BANK_CACHE", {})
    first, _ = KeyCLDVectorEnv(2, "cartpole", ckpt, obs_type="keypoints").reset(seed=3)
    again, _ = KeyCLDVectorEnv(2, "cartpole", ckpt, obs_type="keypoints").reset(seed=3)
    np.testing.assert_array_equal(first, again)
    assert len(fits) == 1  # the second env reused the first one's fit
    changed = keycld_gym.load_model(ckpt)
    with torch.no_grad():
        next(changed.encoder.parameters()).add_(0.1)
    env = KeyCLDVectorEnv(2, "cartpole", ckpt, obs_type="keypoints")
    env.sim.model.load_state_dict(changed.state_dict())
    env.reset(seed=3)
    assert len(fits) == 2  # other weights: the bank is fitted anew


def test_reset_from_frames_and_from_a_state(ckpt):
    # a model without forces: frames of a system at rest (just after the task's reset) must
    # give their own keypoints back, as far as the constraints allow, and no velocity
    model = keycld_gym.load_model(ckpt)
    with torch.no_grad():
        model.dynamics.potential_net[-1].weight.zero_()
        model.dynamics.input_net[-1].weight.zero_()
        model.dynamics.input_net[-1].bias.zero_()
    env = KeyCLDEnv("cartpole", model, obs_type="keypoints")
    bank = read_start_bank(ckpt)
    frames = bank["frames"][0]
    _, info = env.reset(options={"frames": frames, "frame_dt": env.system.physics_dt})
    with torch.no_grad():
        encoded = env.model.encode(torch.from_numpy(frames)).mean(0, keepdim=True)  # at rest: one place, jittered
        on_manifold = env.model.project(encoded, torch.zeros_like(encoded), iterations=20)[0][0].numpy()
    # the start lands on the frames' encoded keypoints as far as the constraints allow: at least
    # as close to them as a projection of them onto the constraints
    enc = encoded[0].numpy()
    assert np.linalg.norm(info["keypoints"] - enc) <= np.linalg.norm(on_manifold - enc) + 1e-3
    assert abs(info["keypoints"][0, 0] - enc[0, 0]) < 0.02  # the cart's free coordinate
    assert np.abs(info["velocities"]).max() < 0.5
    state = np.arange(8, dtype=np.float32) / 10
    obs, info = env.reset(options={"state": state})
    assert info["constraint_violation"] < 1e-4  # projected onto the constraints
    obs2, _ = env.reset(options={"frames": bank["frames"][1][::4], "frame_dt": 4 * env.system.physics_dt})
    assert np.all(np.isfinite(obs2))
    with pytest.raises(ValueError, match="frames"):
        env.reset(options={"frames": frames[:1]})
    with pytest.raises(ValueError, match="frame_dt"):
        env.reset(options={"frames": frames, "frame_dt": 0.015})
    with pytest.raises(ValueError, match="actions"):
        env.reset(options={"frames": frames, "actions": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="state"):
        env.reset(options={"state": [np.nan] * 8})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"qpos": [0, 0]})


def test_bad_and_out_of_range_actions(ckpt):
    env = KeyCLDEnv("cartpole", ckpt, obs_type="keypoints")
    env.reset(seed=0)
    for bad in (np.array([np.nan]), np.array([np.inf]), np.zeros(3), np.zeros((2, 2))):
        with pytest.raises(ValueError, match="action must"):
            env.step(bad)
    env.reset(seed=1)
    high = env.step(np.array([7.0]))[0]
    env.reset(seed=1)
    np.testing.assert_array_equal(high, env.step(np.array([1.0]))[0])


def test_divergence_truncates_with_finite_output(ckpt):
    env = KeyCLDEnv("cartpole", ckpt, obs_type="dict")
    env.reset(options={"state": np.array([0, 0, 0, 0.5, 1e4, 0, 0, 0], np.float32)})
    obs, r, term, trunc, info = env.step(np.zeros(1))
    assert trunc and info["diverged"] and np.isfinite(r)
    assert np.all(np.isfinite(obs["keypoints"]))


def test_vector_env_equals_single_envs_and_stays_finite(ckpt):
    n = 3
    made = gym.make_vec("KeyCLD-Cartpole-v0", num_envs=n, vectorization_mode="vector_entry_point",
                        checkpoint=ckpt, obs_type="keypoints")
    assert isinstance(made.unwrapped, KeyCLDVectorEnv) and made.num_envs == n
    with pytest.raises(TypeError, match="obs_typ"):  # a misspelled argument is not silently dropped
        gym.make_vec("KeyCLD-Cartpole-v0", num_envs=n, vectorization_mode="vector_entry_point", obs_typ="keypoints")
    venv = KeyCLDVectorEnv(n, "cartpole", ckpt, obs_type="keypoints")
    singles = [KeyCLDEnv("cartpole", ckpt, obs_type="keypoints") for _ in range(n)]
    rng = np.random.default_rng(0)
    obs, _ = venv.reset(seed=5)
    for i in range(n):  # the single envs start where the batch's envs started
        singles[i].reset(options={"state": obs[i]})
    for _ in range(20):
        actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
        obs, rew, _, trunc, _ = venv.step(actions)
        assert not trunc.any()
        for i in range(n):
            o, r, *_ = singles[i].step(actions[i])
            np.testing.assert_allclose(obs[i], o, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(rew[i], r, rtol=1e-4, atol=1e-5)
    # 10,000 random steps: no non-finite value anywhere, autoreset in the same step
    big = KeyCLDVectorEnv(100, "cartpole", ckpt, obs_type="keypoints", action_repeat=50)
    obs, _ = big.reset(seed=0)
    ends = 0
    for _ in range(100):
        obs, rew, term, trunc, infos = big.step(rng.uniform(-1, 1, (100, 1)).astype(np.float32))
        assert np.all(np.isfinite(obs)) and np.all(np.isfinite(rew))
        if trunc.any():
            ends += int(trunc.sum())
            assert all(np.all(np.isfinite(infos["final_obs"][i])) for i in np.flatnonzero(trunc))
            assert np.all(infos["physics_steps"][trunc] == 0)
    assert ends >= 100 * 100 * 50 // 1000


def test_next_step_autoreset_gives_the_same_episodes_one_step_later(ckpt):
    """"next_step" (RLlib's mode): the last observation where "same_step" puts it in final_obs, then a reset step."""
    n, repeat = 3, 250  # episodes of 4 agent steps
    same = KeyCLDVectorEnv(n, "cartpole", ckpt, obs_type="keypoints", action_repeat=repeat)
    nxt = gym.make_vec("KeyCLD-Cartpole-keypoints-v0", num_envs=n, vectorization_mode="vector_entry_point",
                       checkpoint=ckpt, action_repeat=repeat, autoreset_mode="next_step")
    assert nxt.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    same.reset(seed=3)
    nxt.reset(seed=3)
    a = np.full((n, 1), 0.3, np.float32)
    for _ in range(3):
        o1, r1, _, t1, _ = same.step(a)
        o2, r2, _, t2, _ = nxt.step(a)
        np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r1, r2, rtol=1e-5)
    _, r1, _, t1, i1 = same.step(a)
    o2, r2, _, t2, i2 = nxt.step(a)
    assert t1.all() and t2.all() and "final_obs" not in i2
    np.testing.assert_allclose(np.stack(i1["final_obs"]), o2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    o2, r2, _, t2, i2 = nxt.step(np.full((n, 1), 0.9, np.float32))  # the reset step: its actions are ignored
    assert not t2.any() and np.all(r2 == 0) and np.all(i2["physics_steps"] == 0)
    o2, *_ = nxt.step(a)
    o1, *_ = same.step(a)
    np.testing.assert_allclose(o1, o2, rtol=1e-5, atol=1e-6)  # the next episodes start where same_step's did
    with pytest.raises(ValueError, match="autoreset_mode"):
        KeyCLDVectorEnv(n, "cartpole", ckpt, obs_type="keypoints", autoreset_mode="disabled")


def test_action_gain_scales_what_the_model_integrates_per_episode(ckpt):
    """Gain g with action a moves the model as gain 1 with g * a; each episode draws its gain."""
    state = {"state": np.array([0.1, 0.0, 0.3, 0.5, 0.2, 0.0, -0.1, 0.4], np.float32)}
    doubled = KeyCLDVectorEnv(3, "cartpole", ckpt, obs_type="keypoints", action_gain=(2.0, 2.0))
    plain = KeyCLDVectorEnv(3, "cartpole", ckpt, obs_type="keypoints")
    doubled.reset(seed=0, options=state)
    plain.reset(seed=0, options=state)
    a = np.array([[0.3], [-0.2], [0.45]], np.float32)
    obs_doubled, *_ = doubled.step(a)
    obs_plain, *_ = plain.step(2 * a)
    np.testing.assert_allclose(obs_doubled, obs_plain, atol=1e-5)
    ranged = KeyCLDVectorEnv(64, "cartpole", ckpt, obs_type="keypoints", action_gain=(0.8, 1.6))
    ranged.reset(seed=1)
    gains = ranged.sim.action_gain.numpy().ravel()
    assert gains.min() >= 0.8 and gains.max() <= 1.6 and gains.std() > 0.1
    with pytest.raises(ValueError, match="action_gain"):
        KeyCLDVectorEnv(2, "cartpole", ckpt, obs_type="keypoints", action_gain=(1.5, 0.5))


def test_sb3_learns_on_the_batched_env(ckpt):
    from stable_baselines3 import PPO

    venv = SB3VecEnv(KeyCLDVectorEnv(4, "cartpole", ckpt, obs_type="keypoints", action_repeat=100))
    obs = venv.reset()
    assert obs.shape == (4, 8)
    for _ in range(10):
        obs, rew, dones, infos = venv.step(np.zeros((4, 1), np.float32))
    assert dones.all() and all("terminal_observation" in i and i["TimeLimit.truncated"] for i in infos)
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    assert model.num_timesteps >= 64


@pytest.mark.parametrize("estimator", ["window", "filter"])
def test_real_keypoint_twin_has_the_imagined_spaces_and_full_returns(ckpt, estimator):
    from keycld_gym.model.tracking import Filtering, Tracking

    model = keycld_gym.load_model(ckpt)
    # 100 physics steps per agent step leave no overlap between windows, so each one is a cold
    # fit: a short window keeps those quick
    tracking = Tracking(window=5) if estimator == "window" else Filtering()
    real = keycld_gym.make_real_env("cartpole", "keypoints", model=model, action_repeat=100, tracking=tracking)
    imagined = KeyCLDEnv("cartpole", ckpt, obs_type="keypoints", action_repeat=100)
    assert real.observation_space == imagined.observation_space and real.action_space == imagined.action_space
    obs, _ = real.reset(seed=0)
    real.action_space.seed(0)
    assert real.observation_space.contains(obs)
    steps, total = 0, 0.0
    while True:
        obs, r, term, trunc, info = real.step(real.action_space.sample())
        steps, total = steps + 1, total + r
        assert np.all(np.isfinite(obs))
        if term or trunc:
            break
    # the first agent step of 100 physics steps goes under a zero action, gathering frames: 9 are left
    assert steps == 9 and 0 < total <= 1000
    with pytest.raises(ValueError, match="either model or checkpoint"):
        keycld_gym.make_real_env("cartpole", "keypoints", model=model, checkpoint=ckpt)
    with pytest.raises(TypeError, match="Tracking or Filtering"):
        keycld_gym.make_real_env("cartpole", "keypoints", model=model, tracking="kalman")
    with pytest.raises(ValueError, match="reads no model"):
        keycld_gym.make_real_env("cartpole", "pixels", model=model)


def test_bundled_cartpole_model_and_default_env():
    model = keycld_gym.load_model("cartpole")
    cfg = model.checkpoint_config
    assert cfg["training"]["phase"] == "done" and cfg["data"]["regime"] == "task"
    assert "keycld-gym pipeline --system cartpole" in cfg["training"]["command"] and cfg["training"]["seed"] == 0
    assert cfg["keypoints_from"]["data"]["frames"] + cfg["data"]["frames"] <= 45_000
    assert model.config == get_model_recipe("cartpole").model  # the recipe as it stands made it
    assert abs(cart_push(model) / true_cart_push() - 1) < 0.06  # measured: 5.58 against 5.88
    env = gym.make("KeyCLD-Cartpole-v0", render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 128, 3) and obs.dtype == np.uint8
    # the start comes from real frames of the task's reset: pole hanging below the cart
    kp = info["keypoints"]
    assert kp[1, 1] < kp[0, 1] - 0.3
    for _ in range(5):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
    assert env.render().shape == (256, 512, 3)


@pytest.mark.parametrize("system, max_frames, keypoints", [("pendulum", 50_000, 1), ("acrobot", 100_000, 2)])
def test_bundled_model_made_by_its_pipeline_and_default_env(system, max_frames, keypoints):
    """`gym.make("KeyCLD-<System>-v0")` out of the box: the bundled model, made by its recipe's pipeline."""
    model = keycld_gym.load_model(system)
    cfg = model.checkpoint_config
    assert cfg["training"]["phase"] == "done" and cfg["data"]["regime"] == "task"
    assert f"keycld-gym pipeline --system {system}" in cfg["training"]["command"]
    assert cfg["keypoints_from"]["data"]["frames"] + cfg["data"]["frames"] <= max_frames  # the budget
    assert model.config == get_model_recipe(system).model  # the recipe as it stands made it
    env = gym.make(env_id(system))
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["keypoints"].shape == (keypoints, 2)  # from real start frames of the task's reset
    check_env(env.unwrapped, skip_render_check=True)


def test_energy_shaping_adds_the_potential_change_and_sums_to_its_ends(ckpt):
    """Potential-based shaping: each reward plus c (Phi(s') - Phi(s)), an episode's sum plus c (Phi(s_T) - Phi(s_0))."""
    plain = KeyCLDVectorEnv(3, "cartpole", ckpt, obs_type="keypoints", max_episode_steps=6)
    shaped = KeyCLDVectorEnv(3, "cartpole", ckpt, obs_type="keypoints", max_episode_steps=6, energy_shaping=5.0)
    plain.reset(seed=2)
    shaped.reset(seed=2)
    start = shaped._shaping(shaped.sim.q, shaped.sim.v)
    actions = np.linspace(-1, 1, 3, dtype=np.float32)[:, None]
    extra = np.zeros(3)
    for t in range(6):
        before = shaped._shaping(shaped.sim.q, shaped.sim.v)
        _, r0, _, _, _ = plain.step(actions)
        _, r1, _, truncated, infos = shaped.step(actions)
        if t < 5:  # before the reset that ends the episode, the change of this step's state
            np.testing.assert_allclose(r1 - r0, 5.0 * (shaped._shaping(shaped.sim.q, shaped.sim.v) - before), atol=1e-6)
        extra += r1 - r0
    assert truncated.all()  # the episodes ended and restarted: the potential is the new start's again
    end = np.array([shaped._shaping(*(torch.as_tensor(x).reshape(2, 1, -1, 2).float()))[0]
                    for x in infos["final_obs"]])
    np.testing.assert_allclose(extra, 5.0 * (end - start), rtol=1e-4, atol=1e-5)  # the final obs: float32
    np.testing.assert_allclose(shaped._potential, shaped._shaping(shaped.sim.q, shaped.sim.v))
    with pytest.raises(ValueError, match="energy_shaping must be a finite number >= 0"):
        KeyCLDEnv("cartpole", ckpt, obs_type="keypoints", energy_shaping=-1.0)


def test_the_energy_potential_of_the_bundled_acrobot_runs_from_hanging_to_upright():
    from keycld_gym.model.energy import EnergyPotential, upright_state

    model = keycld_gym.load_model("acrobot")
    potential = EnergyPotential(model)
    top, _ = upright_state(model)
    q = torch.from_numpy(top).float()[None]
    assert abs(potential(q, torch.zeros_like(q))[0]) < 0.02  # upright at rest: the target energy
    env = KeyCLDVectorEnv(32, "acrobot", obs_type="keypoints")
    env.reset(seed=0)  # the task's own resets: both joints at random angles, nearly at rest
    phi = potential(env.sim.q, env.sim.v)
    assert (phi > -1.05).all() and (phi < 0.05).all()  # between hanging at rest (-1) and upright at rest (0)
    tip_height = env.sim.q[:, 1, 1].numpy()
    assert np.corrcoef(np.argsort(np.argsort(phi)), np.argsort(np.argsort(tip_height)))[0, 1] > 0.7


def test_the_env_contract_is_enforced_where_it_is_stated(ckpt, tiny_data):
    """No step before reset; no start state or frames that would give a non-finite or meaningless observation."""
    env = KeyCLDEnv("cartpole", ckpt, obs_type="keypoints")
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(1, np.float32))
    venv = KeyCLDVectorEnv(2, "cartpole", ckpt, obs_type="keypoints")
    with pytest.raises(gym.error.ResetNeeded):
        venv.step(np.zeros((2, 1), np.float32))
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="not finite once projected|leave the frame"):
        env.reset(options={"state": np.full(8, 1e30, np.float32)})
    assert np.all(np.isfinite(env.step(np.zeros(1, np.float32))[0]))  # the env kept a finite state
    frames = read_start_bank(ckpt)["frames"][0]
    with pytest.raises(ValueError, match="span"):  # seconds for milliseconds: refused at once, not fitted for minutes
        env.reset(options={"frames": frames, "frame_dt": 2.0})
    with pytest.raises(ValueError, match="finite"):
        env.reset(options={"frames": frames, "frame_dt": float("nan")})
    with pytest.raises(ValueError, match="moving parts"):
        env.reset(options={"frames": np.zeros_like(frames)})
    noise = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    with pytest.raises(ValueError, match="moving parts"):
        env.reset(options={"frames": noise})


def test_a_folder_named_like_a_system_does_not_shadow_the_bundled_model(monkeypatch, tmp_path):
    from keycld_gym.model.checkpoint import bundled_path, checkpoint_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cartpole").mkdir()
    assert checkpoint_folder("cartpole") == bundled_path("cartpole")
    assert checkpoint_folder("./cartpole") == tmp_path / "cartpole" or checkpoint_folder("./cartpole").resolve() == (tmp_path / "cartpole").resolve()


def test_corrupt_side_files_and_non_finite_weights_are_checkpoint_errors(ckpt, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from keycld_gym.files import sha256_file

    folder = tmp_path / "model"
    shutil.copytree(ckpt, folder)
    bank = folder / "start_frames.npz"
    bank.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_start_bank(folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, folder / "model.safetensors")
    config = (folder / "config.json").read_text()
    import json

    record = json.loads(config)
    record["weights_sha256"] = sha256_file(folder / "model.safetensors")  # a valid checksum of NaN weights
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="non-finite"):
        keycld_gym.load_model(folder)
