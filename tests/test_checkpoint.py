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


def test_the_mirror_average_is_switched_in_a_trained_models_config(tmp_path, capsys):
    """`keycld-gym mirror-average`: the config changes, the weights do not; a missing folder is a clear error."""
    from keycld_gym.cli import main
    from keycld_gym.model.checkpoint import NOISE_FILE

    save_checkpoint(tmp_path, KeyCLDModel("cartpole", TINY_MODEL))
    weights = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / NOISE_FILE).write_text("{}")
    assert main(["mirror-average", "--checkpoint", str(tmp_path), "on"]) == 0
    assert "measure it again" in capsys.readouterr().out
    assert load_model(tmp_path).config.encoder.mirror_average
    assert (tmp_path / WEIGHTS).read_bytes() == weights
    assert main(["mirror-average", "--checkpoint", str(tmp_path), "off"]) == 0
    assert not load_model(tmp_path).config.encoder.mirror_average
    edits = json.loads((tmp_path / CONFIG).read_text())["edits"]
    assert [e["encoder.mirror_average"] for e in edits] == [True, False] and all(e["command"] for e in edits)
    assert main(["mirror-average", "--checkpoint", str(tmp_path / "nowhere"), "on"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_bundled_models_card_says_how_its_encoder_reads_and_how_it_was_edited(tmp_path):
    """`bundle_model`: the card names the mirror average and the command that switched it on."""
    from keycld_gym.model.checkpoint import set_mirror_average
    from keycld_gym.training.bundling import bundle_model

    data = {"path": "data/x", "sequences": 4, "frames_per_sequence": 50, "frames": 200, "seed": 0, "regime": "task",
            "regime_description": "the task's own reset", "train_sequences": 3, "train_frames": 150,
            "manifest_sha256": "0" * 64}
    training = {"command": "keycld-gym train --data data/x", "seed": 0, "wall_time_s": 60.0, "torch_threads": 1,
                "phase": "done"}
    save_checkpoint(tmp_path / "model", KeyCLDModel("cartpole", TINY_MODEL), {"data": data, "training": training})
    card = (bundle_model(tmp_path / "model", dest=tmp_path / "plain") / "README.md").read_text()
    assert "mirror" not in card and "edited" not in card
    set_mirror_average(tmp_path / "model", True, command="keycld-gym mirror-average --checkpoint model on")
    card = (bundle_model(tmp_path / "model", dest=tmp_path / "bundled") / "README.md").read_text()
    assert "`EncoderConfig.mirror_average`" in card
    assert "then edited, weights untouched: `keycld-gym mirror-average --checkpoint model on`" in card
    assert load_model(tmp_path / "bundled").config.encoder.mirror_average
