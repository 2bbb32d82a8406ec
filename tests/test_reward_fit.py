"""Refitting the reward head on estimated states."""

import json

import pytest
import torch

from keycld_gym.model.checkpoint import load_model


def test_fit_reward_lowers_the_error_and_writes_a_checkpoint(tiny_model_dir, tiny_data, tmp_path, capsys):
    from keycld_gym.cli import main

    torch.manual_seed(0)
    before = load_model(tiny_model_dir)
    out = tmp_path / "refit"
    assert main(["fit-reward", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--steps", "300", "--threads", "1", "--quiet"]) == 0
    assert "reward head refit" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    result = config["reward_head"]
    assert result["rmse_after"]["train"] < result["rmse_before"]["train"]
    assert result["samples"]["train"] > 0 and result["command"]
    assert (out / "start_frames.npz").exists() == (tiny_model_dir / "start_frames.npz").exists()
    after = load_model(out)
    # only the reward head changed
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()):
        assert torch.equal(a, b) != name.startswith("reward_net"), name
    # a finished refit is never replaced unasked; --steps 0 is no refit
    written = (out / "model.safetensors").read_bytes()
    assert main(["fit-reward", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--steps", "3", "--threads", "1", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "model.safetensors").read_bytes() == written
    assert main(["fit-reward", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--steps", "3", "--threads", "1", "--quiet", "--force"]) == 0
    assert not list(out.parent.glob("*.tmp*"))  # written beside and moved in whole
    with pytest.raises(SystemExit):
        main(["fit-reward", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
              "--steps", "0"])
