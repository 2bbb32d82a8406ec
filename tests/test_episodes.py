"""Real episodes as dynamics data: the recorder, the real env that feeds it, grown data sets."""

import json

import numpy as np
import pytest

from keycld_gym.data.dataset import WindowDataset, load_manifest
from keycld_gym.data.episodes import (
    EpisodeRecorder,
    add_episodes,
    episode_sequences,
    grow_dataset,
)
from keycld_gym.errors import ManifestMismatchError


def _episode(t, seed=0, shape=(64, 128, 3)):  # cartpole's frames
    rng = np.random.default_rng(seed)
    return {"frames": rng.integers(0, 255, (t, *shape), dtype=np.uint8),
            "actions": rng.uniform(-1, 1, (t, 1)).astype(np.float32), "rewards": rng.random(t).astype(np.float32)}


def test_recorder_pairs_each_frame_with_the_action_after_it():
    rec = EpisodeRecorder()
    with pytest.raises(RuntimeError, match="reset the env first"):
        rec.step(np.zeros(1), 0.0, np.zeros((2, 2, 3)))
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(5)]
    rec.begin(frames[0])
    for i in range(1, 4):
        rec.step(np.array([i], np.float32), float(i), frames[i])
    rec.begin(frames[4])  # a reset ends the episode before it
    rec.end()  # one frame, no step: not an episode
    [ep] = rec.take()
    assert [f[0, 0, 0] for f in ep["frames"]] == [0, 1, 2]  # the last frame has no action after it
    assert ep["actions"][:, 0].tolist() == [1, 2, 3] and ep["rewards"].tolist() == [1, 2, 3]
    assert rec.take() == []


def test_episodes_are_cut_into_whole_sequences():
    parts = episode_sequences(_episode(130), 48)
    assert parts["frames"].shape == (2, 48, 64, 128, 3) and parts["actions"].shape == (2, 48, 1)
    assert np.array_equal(parts["rewards"][1], _episode(130)["rewards"][48:96])
    with pytest.raises(ValueError, match="at least 2 frames"):
        episode_sequences(_episode(10), 1)


def test_a_grown_data_set_keeps_the_base_split_and_adds_episodes_once(tiny_data, tmp_path):
    out = tmp_path / "grown"
    base = load_manifest(tiny_data)
    manifest = grow_dataset(out, tiny_data)
    assert manifest["sequences"] == base["sequences"] and manifest["regime"] == "task+agent"
    before = WindowDataset(out, 1, split="val", val_fraction=0.45)
    record = add_episodes(out, [_episode(100, 1), _episode(60, 2)], {"name": "round-1", "returns": [1.0, 2.0]})
    assert record["sequences"] == [6, 7, 8]  # ids after the base's: 2 + 1 whole sequences of 48 frames
    again = add_episodes(out, [_episode(100, 3)], {"name": "round-1"})  # a resumed loop adds nothing twice
    assert again == record and load_manifest(out)["sequences"] == 9
    data = WindowDataset(out, 1, split="all")
    assert data.num_sequences == 9 and np.isnan(data.data["qpos"][6:]).all()  # no simulator state kept
    assert np.array_equal(data.data["frames"][6], _episode(100, 1)["frames"][:48])
    after = WindowDataset(out, 1, split="val", val_fraction=0.45)
    assert set(before.data["sequence_ids"]) <= set(after.data["sequence_ids"])  # old sequences keep their split
    assert grow_dataset(out, tiny_data)["sequences"] == 9  # idempotent
    with pytest.raises(ManifestMismatchError, match="not a grown data set"):
        add_episodes(tiny_data, [_episode(100)], {"name": "x"})
    with pytest.raises(ValueError, match="no episode holds a whole sequence"):
        add_episodes(out, [_episode(20)], {"name": "short"})
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["base"]["manifest_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatchError, match="grown from another data set"):
        grow_dataset(out, tiny_data)


def test_the_real_keypoint_env_records_every_physics_step(tiny_model_dir):
    from keycld_gym.envs.real import make_real_env
    from keycld_gym.model.checkpoint import load_model

    model = load_model(tiny_model_dir)
    env = make_real_env("cartpole", "keypoints", model=model, record=True)
    repeat = env.action_repeat
    _, _ = env.reset(seed=3)
    first = env.recorder._frames[0].copy()
    total = 0.0
    for a in (0.5, -1.0, 0.25):
        _, reward, _, _, _ = env.step(np.array([a], np.float32))
        total += reward
    [ep] = env.take_episodes()
    env.close()
    assert len(ep["frames"]) == len(ep["actions"]) == 4 * repeat  # the reset's zero-action step and three more
    assert np.array_equal(ep["frames"][0], first)
    assert ep["actions"][:repeat].tolist() == [[0.0]] * repeat and ep["actions"][-1].tolist() == [0.25]
    assert ep["rewards"].sum() == pytest.approx(total, abs=1e-4)  # the reset step's reward is paid with the first step
    with pytest.raises(ValueError, match="record=True is for obs_type='keypoints'"):
        make_real_env("cartpole", "pixels", record=True)
