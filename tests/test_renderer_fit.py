"""Refitting the renderer so imagined frames read back as the keypoints they were drawn from."""

import json

import numpy as np
import torch

from keycld_gym.model.checkpoint import load_model


def test_fit_renderer_lowers_the_read_back_error_and_changes_only_the_renderer(tiny_model_dir, tiny_data, tmp_path,
                                                                               capsys):
    from keycld_gym.cli import main

    torch.manual_seed(0)
    before = load_model(tiny_model_dir)
    out = tmp_path / "refit"
    assert main(["fit-renderer", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--steps", "60", "--weight", "100", "--threads", "1", "--quiet"]) == 0
    assert "renderer refit" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    result = config["renderer"]
    assert np.mean(result["after"]["reencode_rms"]) < np.mean(result["before"]["reencode_rms"])
    # scored on the tiny model's own two validation sequences (48 frames each), never trained on
    assert result["train_frames"] == 4 * 48 and result["command"]
    assert result["scored_on"] == "val" and result["scored_frames"] == 2 * 48
    assert config["data"] == before.checkpoint_config["data"]  # the model's provenance is kept
    assert (out / "start_frames.npz").exists() == (tiny_model_dir / "start_frames.npz").exists()
    after = load_model(out)
    for (name, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items()):
        if not name.startswith("renderer."):
            assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for (n, a), (_, b) in zip(before.state_dict().items(), after.state_dict().items())
               if n.startswith("renderer."))


def test_fit_renderer_can_fit_a_fresh_full_resolution_renderer(tiny_model_dir, tiny_data, tmp_path):
    from keycld_gym.cli import main

    torch.manual_seed(0)
    out = tmp_path / "full"
    assert main(["fit-renderer", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--steps", "60", "--weight", "0", "--foreground-weight", "1", "--full-resolution", "--threads", "1",
                 "--quiet"]) == 0
    result = json.loads((out / "config.json").read_text())["renderer"]
    assert result["fresh_renderer"] == {"full_resolution": True} and result["foreground_weight"] == 1.0
    assert result["after"]["recon_mse"] < 0.9 * result["fresh"]["recon_mse"]  # it learned from its untrained start
    model = load_model(out)  # the checkpoint rebuilds the new renderer
    assert model.config.renderer.full_resolution
    h, w = model.spec.image_shape[:2]
    assert model.renderer.background.shape[-2:] == (h, w)
    assert model.render(torch.zeros(1, model.spec.num_keypoints, 2)).shape == (1, h, w, 3)
