"""Every script in scripts/ run for real on a tiny budget: its main() on tiny inputs, its output checked."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TESTED = {"benchmark_env", "benchmark_real", "env_vpt", "explorer_returns", "keypoint_precision", "systems_figure"}


def run_script(name: str, *args: object) -> None:
    """Load scripts/<name>.py as a module and run its main() with these command-line arguments."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)  # a script's --threads stays with it


def test_every_script_has_a_test():
    """A new command-line script comes with its tiny run here (issue 42); modules others load (mkdocs hooks) do not count."""
    programs = {p.stem for p in SCRIPTS.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert programs == TESTED


def test_benchmark_env(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench" / "env.json"
    run_script("benchmark_env", "--checkpoint", tiny_model_dir, "--seconds", 0.05, "--batches", 2, "--threads", 1,
               "--json", out)
    r = json.loads(out.read_text())
    assert r["system"] == "cartpole" and r["checkpoint"] == str(tiny_model_dir)
    assert [(row["env"], row["obs"], row["num_envs"]) for row in r["rows"]] == [
        ("real", "pixels", 1), ("imagined", "pixels", 1), ("imagined", "pixels", 2),
        ("imagined", "keypoints", 1), ("imagined", "keypoints", 2)]
    assert all(row["steps_per_s"] > 0 for row in r["rows"]) and r["rows"][0]["ratio_to_real_pixels"] == 1.0
    assert f"wrote {out}" in capsys.readouterr().out


def test_benchmark_real(tmp_path):
    out = tmp_path / "real.json"
    run_script("benchmark_real", "--seconds", 0.05, "--episodes", 1, "--frames", 4, "--workers", 1, "--json", out)
    r = json.loads(out.read_text())
    assert r["image_shape"] == [64, 128, 3]
    assert [(row["obs_type"], row["action_repeat"]) for row in r["real_env"]] == [
        ("pixels", 8), ("state", 8), ("pixels", 1), ("state", 1)]
    assert all(row["physics_steps_per_s"] == pytest.approx(row["agent_steps_per_s"] * row["action_repeat"])
               for row in r["real_env"])
    c = r["collection"]
    assert (c["episodes"], c["frames_per_sequence"], c["workers"]) == (1, 4, 1)
    assert c["frames_per_s"] > 0 and c["bytes_per_frame"] > 0


def test_env_vpt(tiny_model_dir, tiny_data, tmp_path, capsys):
    reference = tmp_path / "eval.json"
    reference.write_text(json.dumps({"model": {"vpt_agent_median": 3.0, "vpt_agent_mean": 4.5}}))
    out = tmp_path / "env_vpt.json"
    run_script("env_vpt", "--checkpoint", tiny_model_dir, "--data", tiny_data, "--sequences", 1, "--start-frames", 9,
               "--agent-steps", 2, "--threads", 1, "--model-json", reference, "--json", out)
    r = json.loads(out.read_text())
    assert r["sequences"] == 1 and len(r["env_vpt_agent"]) == 1 and r["epsilon"] > 0
    assert 0 <= r["env_vpt_agent_median"] <= 2
    assert (r["model_vpt_agent_median"], r["model_vpt_agent_mean"]) == (3.0, 4.5)
    assert "(evaluate-model: median 3.0, mean 4.5)" in capsys.readouterr().out


def test_explorer_returns(tmp_path):
    for mode in ("controller", "explorer", "noise"):
        out = tmp_path / f"{mode}.json"
        run_script("explorer_returns", "--system", "pendulum", "--seeds", 1, "--mode", mode, "--json", out)
        r = json.loads(out.read_text())
        assert (r["system"], r["mode"], len(r["rows"])) == ("pendulum", mode, 1)
        assert 0.0 <= r["rows"][0]["return"] <= 1000.0 and r["rows"][0]["turns"] >= 0
        assert r["means"]["return"] == r["rows"][0]["return"]


def test_keypoint_precision(tiny_data, tmp_path):
    """Two keypoint steps of the cartpole recipe's encoder on the tiny data, scored on the same data."""
    out = tmp_path / "kp"
    run_script("keypoint_precision", "--system", "cartpole", "--data", tiny_data, "--eval", tiny_data, "--out", out,
               "--steps", 2, "--train", "keypoint_batch=2", "--train", "start_fit_frames=9", "--threads", 1)
    r = json.loads((out / "keypoint_precision.json").read_text())
    assert r["keypoint_steps"] == 2 and r["train_overrides"] == {"keypoint_batch": 2, "start_fit_frames": 9}
    assert sorted(r["keypoint_order"]) == [0, 1]
    assert r["error"]["frames"] == 6 * len(range(0, 48, 5)) and r["error"]["rms_px"] > 0
    assert set(r["tracked"]["link_fractions"]) == {"0-1"}
    assert np.isfinite(r["subpixel"]["slope_mean"]) and r["subpixel"]["states"] == 24
    assert "link0_angle_rms_rad" in r["state"]
    assert (out / "model").is_dir()


def test_systems_figure(tmp_path, capsys):
    import imageio.v3 as iio

    out = tmp_path / "systems.png"
    run_script("systems_figure", "--out", out)
    image = iio.imread(out)
    # three systems, four states each, frames 64 high and 128 wide (square ones padded), enlarged twice
    assert image.shape == (3 * (128 + 2) + 2, 4 * (256 + 2) + 2, 3)
    assert image.min() < 128  # something drawn
    assert f"wrote {out}" in capsys.readouterr().out
