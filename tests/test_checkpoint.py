"""Checkpoints: safetensors + JSON round trip; every way a checkpoint can be wrong gives a clear error."""

import json
import shutil

import pytest
import torch
from conftest import TINY_MODEL

from keycld_gym import CheckpointError, load_model
from keycld_gym.model.checkpoint import CONFIG, WEIGHTS, save_checkpoint
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.training.state import load_state, save_state


def test_round_trip_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = KeyCLDModel("cartpole", TINY_MODEL)
    save_checkpoint(tmp_path, model, {"training": {"seed": 3}})
    loaded = load_model(tmp_path)
    frames = torch.randint(0, 255, (2, 64, 128, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded.encode(frames), model.encode(frames))
    q, v, u = torch.randn(2, 2, 2) * 0.3, torch.randn(2, 2, 2), torch.rand(2, 1)
    torch.testing.assert_close(loaded.step(q, v, u), model.step(q, v, u))
    assert loaded.checkpoint_config["training"]["seed"] == 3
    assert not any(p.suffix == ".pkl" or p.suffix == ".pt" for p in tmp_path.iterdir())


def test_corrupt_missing_and_mismatched_checkpoints(tmp_path):
    model = KeyCLDModel("cartpole", TINY_MODEL)
    good = save_checkpoint(tmp_path / "good", model)

    bad = shutil.copytree(good, tmp_path / "flipped")
    raw = bytearray((bad / WEIGHTS).read_bytes())
    raw[-10] ^= 0xFF
    (bad / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(bad)

    trunc = shutil.copytree(good, tmp_path / "truncated")
    (trunc / WEIGHTS).write_bytes((trunc / WEIGHTS).read_bytes()[:100])
    cfg = json.loads((trunc / CONFIG).read_text())
    cfg.pop("weights_sha256")
    (trunc / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(trunc)

    other = shutil.copytree(good, tmp_path / "spec")
    cfg = json.loads((other / CONFIG).read_text())
    # prose and the agent's default interval change no weight: the checkpoint stays valid
    cfg["spec"]["camera_note"], cfg["spec"]["action_repeat"] = "another note", 4
    (other / CONFIG).write_text(json.dumps(cfg))
    load_model(other)
    cfg["spec"]["camera"]["height"] = 32  # another frame: the encoder saw other images
    (other / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="another spec of 'cartpole'.*camera"):
        load_model(other)

    garbled = shutil.copytree(good, tmp_path / "garbled")
    (garbled / CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(garbled)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a keycld-gym checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="neither a checkpoint folder nor a system"):
        load_model("hopper")


def test_weights_of_another_shape_are_refused(tmp_path):
    save_checkpoint(tmp_path, KeyCLDModel("cartpole", TINY_MODEL))
    cfg = json.loads((tmp_path / CONFIG).read_text())
    cfg["model"]["encoder"]["channels"] = 16
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(tmp_path)


def test_nested_state_round_trip(tmp_path):
    state = {"a": torch.arange(3.0), "b": [1, {"c": torch.ones(2, 2)}], "d": "x", 0: None}
    save_state(tmp_path / "s", state)
    back = load_state(tmp_path / "s")
    torch.testing.assert_close(back["a"], state["a"])
    torch.testing.assert_close(back["b"][1]["c"], torch.ones(2, 2))
    assert back["d"] == "x" and back[0] is None
    (tmp_path / "s.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="delete"):
        load_state(tmp_path / "s")
