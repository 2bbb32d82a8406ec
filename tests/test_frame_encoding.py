"""Pixel agents through the world model's encoder: every frame, imagined or real, becomes its keypoints."""

import numpy as np
import pytest

from keycld_gym.agents import get_recipe
from keycld_gym.envs.imagined_env import KeyCLDVectorEnv
from keycld_gym.envs.sb3 import SB3VecEnv
from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import load_model
from keycld_gym.rl.agent import Agent, imagined_vec_env, load_agent, real_vec_env
from keycld_gym.rl.frame_encoding import VecEncodeFrames

RECIPE = get_recipe("cartpole", "pixels", "sac")


def test_the_recipe_reads_frames_through_the_encoder():
    assert RECIPE.features == "keycld-encoder" and RECIPE.frame_stack > 1
    assert get_recipe("cartpole", "pixels", "ppo").features == "cnn"
    with pytest.raises(ValueError, match="pixel observations only"):
        get_recipe("cartpole", "keypoints", "sac").replace(features="keycld-encoder")
    with pytest.raises(ValueError, match="unknown pixel features"):
        RECIPE.replace(features="resnet")


def test_imagined_frames_become_the_encoders_keypoints_stacked(tiny_model_dir):
    model = load_model(tiny_model_dir)
    k = model.spec.num_keypoints
    frames = SB3VecEnv(KeyCLDVectorEnv(3, "cartpole", tiny_model_dir, obs_type="pixels"))
    frames.seed(4)
    encoded = VecEncodeFrames(SB3VecEnv(KeyCLDVectorEnv(3, "cartpole", tiny_model_dir, obs_type="pixels")), model)
    encoded.seed(4)
    f, e = frames.reset(), encoded.reset()
    assert e.shape == (3, 2 * k) and e.dtype == np.float32
    np.testing.assert_allclose(e, model.encode_frames(f).flatten(1).numpy(), atol=1e-6)

    actions = np.zeros((3, 1), np.float32)
    ended = False
    while not ended:  # through an episode's end: its last frame is encoded too
        f, _, dones, f_infos = frames.step(actions)
        e, _, _, e_infos = encoded.step(actions)
        np.testing.assert_allclose(e, model.encode_frames(f).flatten(1).numpy(), atol=1e-6)
        ended = bool(dones.any())
    last = e_infos[int(np.flatnonzero(dones)[0])]["terminal_observation"]
    assert last.shape == (2 * k,)

    stacked = imagined_vec_env(RECIPE, 2, tiny_model_dir, seed=0)
    assert stacked.observation_space.shape == (RECIPE.frame_stack * 2 * k,)
    with pytest.raises(ValueError, match="needs uint8 frames"):
        VecEncodeFrames(SB3VecEnv(KeyCLDVectorEnv(2, "cartpole", tiny_model_dir, obs_type="keypoints")), model)


def test_a_pixel_agent_learns_in_imagination_and_acts_on_real_frames(tiny_model_dir, tmp_path):
    """End to end: SB3 on encoded imagined frames, saved, loaded, one real dm_control episode on real frames."""
    from stable_baselines3 import SAC

    from keycld_gym.model.checkpoint import read_config
    from keycld_gym.rl.agent_evaluation import evaluate_agent

    venv = imagined_vec_env(RECIPE, 2, tiny_model_dir, seed=0)
    algo = SAC(RECIPE.policy, venv, learning_starts=16, batch_size=16, gradient_steps=1, seed=0, device="cpu",
               policy_kwargs=RECIPE.policy_kwargs)
    algo.learn(64)
    model_info = {"path": str(tiny_model_dir), "weights_sha256": read_config(tiny_model_dir)["weights_sha256"],
                  "model_real_frames": 0, "model_data_regime": "task"}
    training = {"command": "SAC(...).learn(64)", "seed": 0, "steps": 64, "wall_s": 1.0, "torch_threads": 1}
    folder = Agent.from_algorithm(algo, RECIPE).save(tmp_path / "agent", model=model_info, training=training)
    agent = load_agent(folder, "cartpole", "pixels")
    real = real_vec_env(RECIPE, load_model(tiny_model_dir))
    obs = real.reset()
    assert obs.shape == (1, RECIPE.frame_stack * 2 * load_model(tiny_model_dir).spec.num_keypoints)
    real.close()

    result = evaluate_agent(agent, episodes=1, seed=3, checkpoint=tiny_model_dir, workers=1, max_steps=20)
    assert result["obs_type"] == "pixels" and 0.0 <= result["real_return_mean"] <= 1000.0
    assert np.isfinite(result["imagined_return_mean"])
    with pytest.raises(CheckpointError, match="encoder of the model it was trained in"):
        evaluate_agent(agent, episodes=1, checkpoint=None)  # the bundled model: another encoder
    with pytest.raises(ValueError, match="needs the world model"):
        real_vec_env(RECIPE, None)

    # bundled, it carries its model, which evaluations then use unless told otherwise
    import json

    from keycld_gym.files import write_json
    from keycld_gym.training.bundling import bundle_agent

    write_json(tmp_path / "eval.json", result)
    bundled = load_agent(bundle_agent(folder, tmp_path / "eval.json", tmp_path / "bundled"))
    assert bundled.model_folder == tmp_path / "bundled" / "model" and agent.model_folder is None
    assert "`model/`: the world model it was trained in" in (tmp_path / "bundled" / "README.md").read_text()
    again = evaluate_agent(bundled, episodes=1, seed=3, workers=1, max_steps=20, imagined=False)
    assert again["model"] == str(bundled.model_folder) and again["real_returns"] == result["real_returns"]
    bundle_agent(tmp_path / "bundled", tmp_path / "eval.json", tmp_path / "bundled")  # re-recorded in place
    config = json.loads((folder / "agent.json").read_text())
    config["model"]["path"] = str(tmp_path / "gone")
    write_json(folder / "agent.json", config)
    with pytest.raises(CheckpointError, match="holds no model"):
        bundle_agent(folder, tmp_path / "eval.json", tmp_path / "elsewhere")


def test_measured_frame_noise_goes_on_the_imagined_keypoints_only(noisy_model_dir):
    from keycld_gym.model.checkpoint import read_noise

    model = load_model(noisy_model_dir)
    std = read_noise(noisy_model_dir, "frame_std")
    assert std.shape == (2 * model.spec.num_keypoints,)
    clean = VecEncodeFrames(SB3VecEnv(KeyCLDVectorEnv(256, "cartpole", noisy_model_dir, obs_type="pixels")), model)
    noisy = VecEncodeFrames(SB3VecEnv(KeyCLDVectorEnv(256, "cartpole", noisy_model_dir, obs_type="pixels")), model,
                            noise_std=np.full(len(std), 0.05), seed=1)
    clean.seed(2)
    noisy.seed(2)
    np.testing.assert_allclose((noisy.reset() - clean.reset()).std(0), 0.05, rtol=0.2)

    recipe = RECIPE.replace(observation_noise="measured")
    imagined = imagined_vec_env(recipe, 2, noisy_model_dir, seed=0)
    assert isinstance(imagined.venv, VecEncodeFrames)  # right below the frame stack
    np.testing.assert_array_equal(imagined.venv.noise_std, std)
    real = real_vec_env(recipe, model)  # the real side reads real frames as they are
    assert real.venv.noise_std is None
    real.close()
    with pytest.raises(ValueError, match="noise_std must have shape"):
        VecEncodeFrames(clean.venv, model, noise_std=np.ones(3))


def test_a_noise_file_without_the_frame_error_says_to_measure_again(tmp_path):
    from keycld_gym.model.checkpoint import NOISE_FILE, read_noise

    (tmp_path / NOISE_FILE).write_text('{"std": [0.1, 0.1]}')
    with pytest.raises(CheckpointError, match="older measurement"):
        read_noise(tmp_path, "frame_std")
