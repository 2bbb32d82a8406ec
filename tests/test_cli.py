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
