"""`keycld-gym sweep`: trials of the bundled recipe on Ray Tune, ranked by real return on selection seeds."""

import json

import pytest

from keycld_gym.cli import main
from keycld_gym.rl.sweep import SELECTION_SEED, SweepConfig


def test_a_sweep_is_its_seeds_crossed_with_its_grid():
    config = SweepConfig("cartpole", seeds=(0, 1), grid={"learning_rate": (3e-4, 1e-3), "uncertainty_penalty": (0.0,)})
    trials = config.trials()
    assert [t["name"] for t in trials] == ["seed0-learning_rate0.0003-uncertainty_penalty0.0",
                                           "seed0-learning_rate0.001-uncertainty_penalty0.0",
                                           "seed1-learning_rate0.0003-uncertainty_penalty0.0",
                                           "seed1-learning_rate0.001-uncertainty_penalty0.0"]
    train = config.train_config(trials[1])
    assert train.seed == 0 and train.uncertainty_penalty == 0.0 and train.hyperparams == {"learning_rate": 1e-3}
    assert train.recipe().hyperparams["learning_rate"] == 1e-3
    assert config.real_frames(3) == 3 * 1000
    assert SweepConfig("cartpole", max_steps=5).real_frames(2) == 2 * 5 * 8  # agent steps of 8 physics steps


@pytest.mark.parametrize("kwargs, message", [
    (dict(grid={"no_such_setting": (1,)}), "unknown sac settings"),
    (dict(seeds=()), "seeds must be distinct"),
    (dict(seeds=(1, 1)), "seeds must be distinct"),
    (dict(grid={"learning_rate": ()}), "at least one value"),
    (dict(selection_episodes=0), "selection_episodes"),
])
def test_bad_sweeps_are_refused_before_any_trial(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig("cartpole", **kwargs)


def test_the_grid_option_is_checked(capsys):
    assert main(["sweep", "--out", "unused", "--grid", "learning_rate"]) == 2
    assert "--grid takes KEY=V1,V2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_a_two_trial_sweep_on_the_cluster_ranks_by_real_return_and_resumes(ray_cluster, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--system", "cartpole", "--seeds", "0", "1", "--steps", "200", "--eval-every", "100",
            "--selection-episodes", "1", "--max-steps", "5", "--episodes", "2", "--out", str(out), "--ray", ray_cluster,
            "--quiet"]
    assert main(argv) == 0
    record = json.loads((out / "sweep.json").read_text())
    rows = record["rows"]
    assert record["complete"] and sorted(r["trial"] for r in rows) == ["seed0", "seed1"]
    assert rows[0]["real_return"] >= rows[1]["real_return"] and rows[0]["real_frames"] == 5 * 8
    for r in rows:
        selection = json.loads((out / "trials" / r["trial"] / "selection.json").read_text())
        assert selection["seed"] == SELECTION_SEED and selection["real_returns"] == r["real_returns"]
    assert record["best"]["trial"] == rows[0]["trial"] and record["best"]["seed"] == 100_000
    assert "bundle-agent --agent" in record["best"]["bundle"] and (out / "best-eval.json").exists()
    assert (out / "tune" / "sweep").is_dir()  # Tune's own state, which a rerun restores
    # rerun: nothing is trained again
    agent = out / "trials" / "seed0" / "agent" / "agent.safetensors"
    stamp = agent.stat().st_mtime_ns
    assert main(argv) == 0 and agent.stat().st_mtime_ns == stamp
    assert json.loads((out / "sweep.json").read_text())["rows"] == rows
    capsys.readouterr()
