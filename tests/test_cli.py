import json

import pytest

from keycld_gym.cli import main


def test_collect_then_preview(tmp_path, capsys):
    data = tmp_path / "pend"
    assert main(["collect", "--system", "pendulum", "--out", str(data), "--episodes", "2", "--frames", "10",
                 "--seed", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 sequences x 10 frames = 20 real frames, regime 'task'" in out
    assert main(["preview", "--data", str(data), "--out", str(tmp_path / "p.png"), "--frames", "4", "--stride", "2"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_clear_errors_exit_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["collect", "--system", "hopper", "--out", str(tmp_path), "--episodes", "1"])
    assert "invalid choice: 'hopper'" in capsys.readouterr().err
    assert main(["preview", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_train_resume_and_evaluate_model(tiny_data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--system", "cartpole", "--data", str(tiny_data), "--out", str(out), "--keypoint-steps", "3",
            "--dynamics-steps", "2", "--threads", "1", "--quiet"]
    assert main(args) == 0
    assert "trained cartpole (constrained)" in capsys.readouterr().out
    assert main(args) == 2  # the folder holds a run: it says to resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # a finished run resumes to "done" at once
    capsys.readouterr()
    # --resume with another setting is refused, naming it; nothing of the run changes
    recorded = (out / "train_config.json").read_text()
    assert main(args[:-5] + ["--dynamics-steps", "5", "--threads", "1", "--quiet", "--resume"]) == 2
    assert "dynamics_steps" in capsys.readouterr().err
    assert (out / "train_config.json").read_text() == recorded
    # a start that fails (no such data) leaves no settings behind to block the corrected command
    failed = tmp_path / "failed"
    assert main(["train", "--system", "cartpole", "--data", str(tmp_path / "nowhere"), "--out", str(failed),
                 "--quiet"]) == 2
    assert not (failed / "train_config.json").exists()
    capsys.readouterr()
    # the tiny model holds two of tiny_data's sequences out: it is scored on those
    js = tmp_path / "eval.json"
    assert main(["evaluate-model", "--checkpoint", str(tiny_model_dir), "--data", str(tiny_data), "--json", str(js),
                 "--start-frames", "9", "--agent-steps", "4", "--physics-frames", "10", "--no-references",
                 "--threads", "1"]) == 0
    report = json.loads(js.read_text())
    assert report["split"] == "val" and report["sequences"] == 2
    assert "2 held-out sequences" in capsys.readouterr().out
    # the run above held no sequence out (val_fraction 0.1 of 6): it says so instead of scoring training data
    assert main(["evaluate-model", "--checkpoint", str(out / "model"), "--data", str(tiny_data),
                 "--start-frames", "9", "--agent-steps", "4", "--physics-frames", "10", "--threads", "1"]) == 2
    assert "no held-out" in capsys.readouterr().err
    assert main(["evaluate-model", "--checkpoint", str(tmp_path / "nowhere"), "--data", str(tiny_data)]) == 2
    assert "does not exist" in capsys.readouterr().err
