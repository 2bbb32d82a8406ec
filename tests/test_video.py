"""Prediction videos: real held-out sequences beside a tiny model's open-loop prediction."""

import imageio.v3 as iio
import numpy as np
import pytest

from keycld_gym.analysis.video import (
    BAR,
    INVALID,
    annotate,
    prediction_video,
    side_by_side_frames,
    write_video,
)
from keycld_gym.cli import main
from keycld_gym.sim.systems import WINDOWS, get_system


def test_annotate_adds_label_bars_and_the_failure_border():
    frame = np.full((64, 64, 3), 100, np.uint8)
    panel = annotate(frame, np.zeros((2, 2)), 2, "KeyCLD", "t = 0.08 s", border=INVALID)
    assert panel.shape == (128 + 2 * BAR, 128, 3)
    assert tuple(panel[BAR, 64]) == INVALID and tuple(panel[BAR + 64, 0]) == INVALID
    assert (panel[:BAR] < 255).any() and (panel[-BAR:] < 255).any()  # the title and the caption are drawn
    plain = annotate(frame, None, 2, "ground truth", "")
    assert tuple(plain[BAR + 64, 0]) == (100, 100, 100)
    assert side_by_side_frames([plain, plain, plain], gap=4).shape == (128 + 2 * BAR, 3 * 128 + 8, 3)


def test_write_video_refuses_other_formats(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif"):
        write_video(tmp_path / "v.avi", np.zeros((2, 8, 8, 3), np.uint8), 10)


def test_prediction_video_of_held_out_sequences(tiny_model_dir, tiny_data, tmp_path):
    scale = 2
    result = prediction_video(tiny_model_dir, tiny_data, tmp_path / "v.gif", compare=[tiny_model_dir], scale=scale)
    spec = get_system("cartpole")
    start = spec.frames(WINDOWS.evaluation_start)
    steps = (48 - start) // spec.action_repeat
    assert result["split"] == "val" and result["sequences"] == [0, 1]  # the tiny model's 2 held-out sequences
    assert result["agent_steps"] == steps and result["frames"] == 2 * (steps + 1)
    assert list(result["valid_steps"]) == ["KeyCLD 1", "KeyCLD 2"]  # one kind twice: numbered
    video = iio.imread(tmp_path / "v.gif", index=None)[..., :3]
    ph, pw = spec.camera.height * scale, spec.camera.width * scale
    h, w = ph + 2 * BAR, 3 * pw + 2 * 4  # ground truth | model | the same model compared
    assert video.shape == (result["frames"], h, w, 3)
    # a panel's border turns red exactly where its prediction stops being valid
    valid = next(iter(result["valid_steps"].values()))
    for s in range(2):
        for t in range(steps + 1):
            border = tuple(video[s * (steps + 1) + t, BAR, pw + 4 + pw // 2])  # the model panel's top edge
            assert (border == INVALID) == (t > valid[s]), (s, t, border)


def test_video_command_writes_an_mp4_and_rejects_bad_requests(tiny_model_dir, tiny_data, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert main(["video", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--sequences", "1", "--label", "tiny", "--scale", "1", "--threads", "1"]) == 0
    assert "tiny: valid for" in capsys.readouterr().out
    video = iio.imread(out, index=None)
    assert video.shape[0] == 2 and video.shape[1] % 16 == 0 and video.shape[1] >= 64 + 2 * BAR
    assert main(["video", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--sequences", "0,5"]) == 2
    assert "held-out sequences" in capsys.readouterr().err
    assert main(["video", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--agent-steps", "9"]) == 2
    assert "agent steps" in capsys.readouterr().err
    assert main(["video", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--out", str(out),
                 "--label", "a", "--label", "b"]) == 2
    assert "one distinct label per model" in capsys.readouterr().err
