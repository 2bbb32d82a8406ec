"""The registered ids under the tools people use: Gymnasium's checker, vector envs and wrappers, SB3, RL Zoo."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import (
    FrameStackObservation,
    NormalizeObservation,
    RecordEpisodeStatistics,
    RecordVideo,
)

import keycld_gym
from keycld_gym import CheckpointError
from keycld_gym.envs.registration import VARIANTS, env_id, env_ids


def test_every_system_and_variant_is_registered_lazily_with_its_episode_length():
    ids = [i for i in gym.registry if i.startswith("KeyCLD-")]
    assert sorted(ids) == sorted(env_ids()) and len(ids) == len(keycld_gym.SYSTEMS) * len(VARIANTS)
    for name, spec in keycld_gym.SYSTEMS.items():
        for variant in VARIANTS:
            registered = gym.spec(env_id(name, variant))
            assert isinstance(registered.entry_point, str)  # nothing imported at registration
            assert registered.max_episode_steps == spec.episode_steps // spec.action_repeat
    assert env_id("cartpole") == "KeyCLD-Cartpole-v0"
    assert env_id("pendulum", "real-keypoints") == "KeyCLD-Pendulum-real-keypoints-v0"
    with pytest.raises(ValueError, match="unknown env variant"):
        env_id("cartpole", "rgb")


@pytest.mark.parametrize("id_", env_ids())
def test_check_env_on_every_id(id_):
    env = gym.make(id_)
    assert env.spec.max_episode_steps is not None
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("system", list(keycld_gym.SYSTEMS))
def test_an_id_without_bundled_weights_says_how_to_train_them(system, monkeypatch, tmp_path):
    monkeypatch.setattr("keycld_gym.model.checkpoint.BUNDLED_DIR", tmp_path)  # a package without weights
    for variant in ("pixels", "keypoints", "dict", "real-keypoints"):
        with pytest.raises(CheckpointError, match=f"keycld-gym pipeline --system {system}"):
            gym.make(env_id(system, variant))


def test_imagined_and_real_twins_share_spaces():
    for variant, real in (("pixels", "real"), ("keypoints", "real-keypoints")):
        a, b = gym.make(env_id("pendulum", variant)), gym.make(env_id("pendulum", real))
        assert a.observation_space == b.observation_space and a.action_space == b.action_space
        a.close(), b.close()


def test_made_without_an_import():
    code = ("import gymnasium as gym; e = gym.make('keycld_gym:KeyCLD-Pendulum-keypoints-v0'); "
            "o, _ = e.reset(seed=0); print(o.shape, e.spec.max_episode_steps)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "(4,) 500" in out.stdout


def _vector_roundtrip(envs: gym.vector.VectorEnv) -> None:
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, *envs.single_observation_space.shape)
    obs, reward, term, trunc, _ = envs.step(envs.action_space.sample())
    assert reward.shape == (2,) and np.all(np.isfinite(obs))
    envs.close()


def test_gymnasium_sync_vector_envs():
    for variant in ("keypoints", "real"):
        _vector_roundtrip(gym.make_vec(env_id("pendulum", variant), num_envs=2, vectorization_mode="sync"))


def test_the_batched_imagination_honours_max_episode_steps():
    envs = gym.make_vec(env_id("pendulum", "keypoints"), num_envs=2, max_episode_steps=3)
    envs.reset(seed=0)
    truncated = [envs.step(envs.action_space.sample())[3] for _ in range(3)]
    assert not truncated[1].any() and truncated[2].all()
    envs.close()


def test_gymnasium_async_vector_envs_as_a_user_writes_them():
    """Forked workers, gymnasium's default on Linux, in a fresh process."""
    code = ("import gymnasium as gym, numpy as np\n"
            "for id_ in ('KeyCLD-Pendulum-keypoints-v0', 'KeyCLD-Pendulum-real-v0'):\n"
            "    envs = gym.make_vec(id_, num_envs=2, vectorization_mode='async')\n"
            "    obs, _ = envs.reset(seed=0)\n"
            "    obs, r, *_ = envs.step(envs.action_space.sample())\n"
            "    print(id_, obs.shape, bool(np.isfinite(r).all()))\n"
            "    envs.close()\n")
    out = subprocess.run([sys.executable, "-c", "import keycld_gym\n" + code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "KeyCLD-Pendulum-keypoints-v0 (2, 4) True" in out.stdout
    assert "KeyCLD-Pendulum-real-v0 (2, 64, 64, 3) True" in out.stdout


def test_async_real_envs_after_rendering_fail_clearly_when_forked_and_work_spawned():
    """A GL context does not survive a fork: a forked worker of a process that rendered says so instead of hanging."""
    real = gym.make(env_id("pendulum", "real"))
    real.reset(seed=0)  # this process now holds a GL context
    real.close()
    forked = gym.make_vec(env_id("pendulum", "real"), num_envs=2, vectorization_mode="async",
                          vector_kwargs={"context": "fork"})
    with pytest.raises(keycld_gym.RenderBackendError, match="spawn"):
        forked.reset(seed=0)
    forked.close(terminate=True)
    _vector_roundtrip(gym.make_vec(env_id("pendulum", "real"), num_envs=2, vectorization_mode="async",
                                   vector_kwargs={"context": "spawn"}))


@pytest.mark.parametrize("variant", ["pixels", "keypoints", "real", "real-keypoints"])
def test_standard_wrappers(variant, tmp_path):
    env = gym.make(env_id("pendulum", variant), render_mode="rgb_array")
    env = RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda e: e == 0, disable_logger=True)
    env = RecordEpisodeStatistics(FrameStackObservation(env, 3))
    if "keypoints" in variant:
        env = NormalizeObservation(env)
    obs, _ = env.reset(seed=0)
    assert obs.shape[0] == 3
    for _ in range(4):
        obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    env.close()
    assert list((tmp_path / "videos").glob("*.mp4")), "RecordVideo wrote no video"


def test_stable_baselines3_takes_the_id_as_a_string():
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", env_id("pendulum", "keypoints"), learning_starts=32, batch_size=16, seed=0, device="cpu")
    model.learn(64)
    assert model.num_timesteps == 64 and model.env.observation_space.shape == (4,)


@pytest.mark.slow
def test_rl_zoo_trains_an_agent_on_a_keycld_id(tmp_path):
    """RL Zoo, as its README runs it, with the hyper-parameter file the project ships."""
    pytest.importorskip("rl_zoo3")
    id_ = env_id("pendulum", "keypoints")
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "sac", "--env", id_, "--gym-packages", "keycld_gym",
           "--conf-file", "keycld_gym.agents.rl_zoo_sac", "-n", "64", "--hyperparams", "learning_starts:32", "n_envs:2",
           "--eval-freq", "-1", "-f", str(tmp_path), "--seed", "0", "--verbose", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert list(tmp_path.glob(f"sac/{id_}_1/{id_}.zip")), out.stdout[-2000:]
