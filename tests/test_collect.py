import json
import shutil

import numpy as np
import pytest

from keycld_gym import CorruptShardError, ManifestMismatchError
from keycld_gym.data import collect as collect_mod
from keycld_gym.data.collect import MANIFEST, CollectConfig, collect
from keycld_gym.data.dataset import WindowDataset, load_manifest, load_shard
from keycld_gym.sim.real_env import RealEnv

CONFIG = CollectConfig("cartpole", episodes=4, frames=24, seed=3, shard_size=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "cartpole"
    manifest = collect(root, CONFIG, progress=False, command="test")
    return root, manifest


def test_manifest_records_regime_counts_and_checksums(dataset):
    root, manifest = dataset
    assert manifest["complete"] and manifest["regime"] == "task"
    assert manifest["sequences"] == 4 and manifest["frames"] == 4 * 24
    assert manifest["physics_dt"] == 0.01 and manifest["spec"]["camera"]["width"] == 128
    assert [r["file"] for r in manifest["shards"]] == [f"shard_0000{i}.npz" for i in range(4)]
    on_disk = json.loads((root / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert not list(root.glob("*.tmp*"))


def test_frames_match_the_recorded_states_and_actions_vary(dataset):
    root, manifest = dataset
    shard = load_shard(root / manifest["shards"][0]["file"], manifest["shards"][0]["sha256"])
    assert shard["frames"].shape == (1, 24, 64, 128, 3) and shard["frames"].dtype == np.uint8
    env = RealEnv("cartpole", "state", action_repeat=1)
    env.reset(seed=0)
    for t in (0, 11, 23):
        env.set_state(shard["qpos"][0, t], shard["qvel"][0, t])
        np.testing.assert_array_equal(env.camera.render(), shard["frames"][0, t])
    # Replaying the recorded actions from the first recorded state reproduces the states.
    env.set_state(shard["qpos"][0, 0], shard["qvel"][0, 0])
    for t in range(5):
        _, reward, _, _, info = env.step(shard["actions"][0, t])
        np.testing.assert_allclose(info["qpos"], shard["qpos"][0, t + 1], atol=1e-9)
        assert reward == pytest.approx(float(shard["rewards"][0, t]), abs=1e-6)
    # Actions vary in time (not one constant per sequence), for noise-driven sequences too.
    kinds = []
    for record in manifest["shards"]:
        seq = load_shard(root / record["file"])
        kinds.append(str(seq["explorers"][0]))
        if kinds[-1] == "noise":
            assert len(np.unique(seq["actions"][0])) > 5
    assert "noise" in kinds


def test_windows_at_a_stride_and_a_split_by_sequence(dataset):
    root, _ = dataset
    ds = WindowDataset(root, window=3, stride=8, split="all")
    assert len(ds) == 4 * (24 - 17 + 1)
    item = ds[0]
    assert item["frames"].shape == (3, 64, 128, 3)
    assert item["actions"].shape == (2, 8, 1) and item["rewards"].shape == (2, 8)
    assert ds.dt == pytest.approx(0.08)
    full = load_shard(root / "shard_00000.npz")
    np.testing.assert_array_equal(item["frames"][1].numpy(), full["frames"][0, 8])
    np.testing.assert_array_equal(item["actions"][1].numpy(), full["actions"][0, 8:16])
    train = WindowDataset(root, 3, stride=8, split="train", val_fraction=0.5)
    val = WindowDataset(root, 3, stride=8, split="val", val_fraction=0.5)
    ids_t, ids_v = set(train.data["sequence_ids"]), set(val.data["sequence_ids"])
    assert ids_t.isdisjoint(ids_v) and ids_t | ids_v == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="spans 33 frames"):
        WindowDataset(root, 5, stride=8)


def test_interrupted_run_resumes_to_the_same_result(dataset, tmp_path, monkeypatch):
    reference_root, reference = dataset
    root = tmp_path / "resumed"
    real_record_shard = collect_mod.record_shard
    calls = []

    def dies_on_third_shard(config, ids):
        calls.append(ids[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_record_shard(config, ids)

    monkeypatch.setattr(collect_mod, "record_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        collect(root, CONFIG, progress=False, command="test")
    partial = load_manifest(root, require_complete=False)
    assert not partial["complete"] and partial["sequences"] == 2
    with pytest.raises(ManifestMismatchError, match="incomplete"):
        WindowDataset(root, 2)
    calls.clear()
    monkeypatch.setattr(collect_mod, "record_shard", lambda config, ids: calls.append(ids[0]) or real_record_shard(config, ids))
    manifest = collect(root, CONFIG, progress=False, command="test")
    assert calls == [2, 3]  # finished shards are not redone
    assert manifest["complete"]
    assert [r["sha256"] for r in manifest["shards"]] == [r["sha256"] for r in reference["shards"]]


def test_parallel_workers_give_the_same_shards(dataset, tmp_path):
    _, reference = dataset
    manifest = collect(tmp_path / "par", CONFIG, workers=2, progress=False, command="test")
    assert [r["sha256"] for r in manifest["shards"]] == [r["sha256"] for r in reference["shards"]]


def test_states_regime_spreads_start_states(tmp_path):
    config = CollectConfig("cartpole", episodes=6, frames=2, seed=0, regime="states", shard_size=6)
    manifest = collect(tmp_path / "states", config, progress=False)
    shard = load_shard(tmp_path / "states" / manifest["shards"][0]["file"])
    start = shard["qpos"][:, 0]
    assert manifest["regime"] == "states" and (shard["start_steps"] == 0).all()
    assert np.abs(start[:, 0]).max() > 0.5 and np.ptp(np.cos(start[:, 1])) > 0.5


def test_corrupt_or_truncated_shard_names_the_file(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset[0], root)
    shard = root / "shard_00001.npz"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShardError, match="shard_00001.npz.*checksum"):
        WindowDataset(root, 2)
    with pytest.raises(CorruptShardError, match="shard_00001.npz.*corrupt or truncated"):
        load_shard(shard)
    # Rerunning the collect command repairs it.
    collect(root, CONFIG, progress=False)
    assert len(WindowDataset(root, 2, split="all")) == 4 * 23


def test_manifest_from_another_system_version_or_settings(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset[0], root)
    with pytest.raises(ManifestMismatchError, match="holds 'cartpole' data"):
        WindowDataset(root, 2, system="pendulum")
    with pytest.raises(ManifestMismatchError, match="differs in: seed"):
        collect(root, CollectConfig("cartpole", episodes=4, frames=24, seed=4, shard_size=1), progress=False)
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["spec"]["camera_note"], manifest["spec"]["action_repeat"] = "edited prose", 4
    (root / MANIFEST).write_text(json.dumps(manifest))
    assert load_manifest(root)["spec"]["camera_note"] == "edited prose"  # changes no frame: still valid
    manifest["spec"]["physics_dt"] = 0.02
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatchError, match="another spec of 'cartpole'.*physics_dt"):
        load_manifest(root)
    manifest["format_version"] = 99
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatchError, match="format version 99"):
        load_manifest(root)
    (root / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestMismatchError, match="not valid JSON"):
        load_manifest(root)
    with pytest.raises(FileNotFoundError, match="keycld-gym collect"):
        load_manifest(tmp_path / "nowhere")


def test_bad_collect_settings():
    with pytest.raises(ValueError, match="regime"):
        CollectConfig("cartpole", episodes=1, regime="random")
    with pytest.raises(ValueError, match=r"frames must be in \[2, 1000\]"):
        CollectConfig("cartpole", episodes=1, frames=1001)
    with pytest.raises(ValueError, match="unknown system"):
        CollectConfig("cartpoles", episodes=1)
