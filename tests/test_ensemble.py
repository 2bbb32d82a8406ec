"""The ensemble of dynamics: members trained by bootstrap, saved beside the model, stepped together, in the env."""

import shutil

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from keycld_gym.envs.imagined_env import KeyCLDEnv, KeyCLDVectorEnv
from keycld_gym.errors import CheckpointError
from keycld_gym.model.checkpoint import CONFIG, load_model
from keycld_gym.model.ensemble import ENSEMBLE_WEIGHTS, DynamicsEnsemble, member_state
from keycld_gym.training.ensemble import train_ensemble


@pytest.fixture(scope="module")
def ensemble_dir(tiny_model_dir, tiny_data, tmp_path_factory):
    """The tiny model with two more members, trained by `train_ensemble`."""
    folder = tmp_path_factory.mktemp("ensemble") / "model"
    shutil.copytree(tiny_model_dir, folder)
    record = train_ensemble(folder, folder.parent / "members", 3, data=str(tiny_data), progress=False, command="pytest")
    assert record["members"] == 3 and record["seeds"] == [1, 2]
    return folder


def _state(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, model.spec.num_keypoints, 2, generator=g) * 0.3
    return model.project(q, torch.randn(q.shape, generator=g) * 0.1, iterations=20)


def test_member_zero_is_the_model_and_equal_members_agree(tiny_model_dir):
    model = load_model(tiny_model_dir)
    assert model.ensemble is None
    ensemble = DynamicsEnsemble(model, [member_state(model)] * 2)
    q, v = _state(model)
    u = torch.zeros(len(q), model.action_dim)
    qa, va = ensemble.step(q.expand(3, *q.shape), v.expand(3, *v.shape), u)
    q1, v1 = model.step(q, v, u)
    assert torch.allclose(qa[0], q1, atol=1e-6) and torch.allclose(va[0], v1, atol=1e-6)
    assert float(ensemble.disagreement(qa).max()) < 1e-4
    assert isinstance(model.constraints.raw_length, torch.nn.Parameter)  # the model's own parameters are back
    with pytest.raises(ValueError, match="does not fit the model"):
        DynamicsEnsemble(model, [{"dynamics.nonsense": torch.zeros(1)}])


@pytest.mark.parametrize("system", ["pendulum", "cartpole", "acrobot"])
def test_members_step_as_one_batch_exactly_as_one_by_one(system):
    """The recipes' structured dynamics step their members as one batch; each member's step is the model's own."""
    from keycld_gym.model.keycld import KeyCLDModel
    from keycld_gym.training.recipes import get_recipe

    torch.manual_seed(0)
    model = KeyCLDModel(system, get_recipe(system).model).eval()
    own = member_state(model)
    # members with other constants: every parameter moved, walls and joint damping included
    members = [{n: t + 0.05 * (i + 1) * torch.randn_like(t) for n, t in own.items()} for i in range(2)]
    ensemble = DynamicsEnsemble(model, members)
    assert ensemble.stacked
    q, v = _state(model, n=5)
    u = torch.randn(len(q), model.action_dim)
    qs, vs = q.expand(3, *q.shape).clone(), v.expand(3, *v.shape).clone()
    qs[1:] += 0.01 * torch.randn_like(qs[1:])  # each member from its own state
    batched = ensemble.step(qs, vs, u)
    ensemble.force_vmap = True
    mapped = ensemble.step(qs, vs, u)
    for m, params in enumerate([own, *members]):
        with torch.no_grad():
            for n, t in params.items():
                dict(model.named_parameters())[n].copy_(t)
            one = model.step(qs[m], vs[m], u)
        for a, b, c in zip(batched, mapped, one):
            assert torch.isfinite(a[m]).all()
            torch.testing.assert_close(a[m], c, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b[m], c, rtol=1e-5, atol=1e-6)


def test_trained_members_differ_are_saved_beside_the_model_and_load(ensemble_dir, tiny_model_dir):
    model = load_model(ensemble_dir)
    assert model.ensemble is not None and model.ensemble.size == 3
    own = member_state(load_model(tiny_model_dir))
    assert all(torch.equal(model.ensemble.params[n][0], own[n]) for n in own)  # the model itself is member 0
    assert any(not torch.equal(p[1], p[2]) for p in model.ensemble.params.values())  # seeds and bootstraps differ
    q, v = _state(model)
    qa, _ = model.ensemble.step(q.expand(3, *q.shape), v.expand(3, *v.shape), torch.zeros(len(q), model.action_dim))
    assert float(model.ensemble.disagreement(qa).mean()) > 0
    # the members' run resumes: a second call trains nothing more and gives the same members
    again = train_ensemble(ensemble_dir, ensemble_dir.parent / "members", 3, progress=False)
    assert again["members"] == 3
    reloaded = load_model(ensemble_dir)
    assert all(torch.equal(reloaded.ensemble.params[n], model.ensemble.params[n]) for n in model.ensemble.params)


def test_members_train_side_by_side_as_they_train_one_after_another(ensemble_dir, tiny_model_dir, tiny_data, tmp_path):
    """`workers=2`: members 2 and 3 in two processes after the first; member 2 as the sequential run made it."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    record = train_ensemble(folder, tmp_path / "members", 4, data=str(tiny_data), workers=2, progress=False)
    assert record["seeds"] == [1, 2, 3] and (tmp_path / "members" / "member-3" / "model").is_dir()
    ours, theirs = load_model(folder).ensemble.params, load_model(ensemble_dir).ensemble.params
    for name in theirs:
        torch.testing.assert_close(ours[name][:3], theirs[name], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(p[2], p[3]) for p in ours.values())
    with pytest.raises(ValueError, match="workers must be at least 1"):
        train_ensemble(folder, tmp_path / "members", 4, workers=0)


def test_a_corrupt_or_missing_ensemble_is_a_clear_error(ensemble_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(ensemble_dir, broken)
    data = (broken / ENSEMBLE_WEIGHTS).read_bytes()
    (broken / ENSEMBLE_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        load_model(broken)
    (broken / ENSEMBLE_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_model(broken)
    assert "ensemble" in (broken / CONFIG).read_text()


def test_env_reports_uncertainty_and_applies_penalty_and_limit(ensemble_dir, tiny_model_dir):
    env = KeyCLDEnv("cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints")
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert info["uncertainty"] == 0.0
    _, reward, _, _, info = env.step(np.zeros(1, np.float32))
    assert np.isfinite(info["uncertainty"]) and info["uncertainty"] > 0

    # the penalty: the same episode (same seed, same member) with and without it
    plain = KeyCLDVectorEnv(4, "cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints")
    penalised = KeyCLDVectorEnv(4, "cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints", uncertainty_penalty=2.0)
    plain.reset(seed=5)
    penalised.reset(seed=5)
    actions = np.full((4, 1), 0.5, np.float32)
    _, r0, _, _, i0 = plain.step(actions)
    _, r1, _, _, i1 = penalised.step(actions)
    np.testing.assert_allclose(i0["uncertainty"], i1["uncertainty"], rtol=1e-6)
    np.testing.assert_allclose(r1, r0 - 2.0 * i0["uncertainty"], rtol=1e-5, atol=1e-7)

    # the limit: an episode ends where the members disagree by more than it
    strict = KeyCLDVectorEnv(4, "cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints",
                             uncertainty_limit=float(i0["uncertainty"].min()) / 2)
    strict.reset(seed=5)
    _, _, terminated, truncated, infos = strict.step(actions)
    assert truncated.all() and not terminated.any() and "final_obs" in infos

    mean = KeyCLDVectorEnv(4, "cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints", ensemble_mode="mean")
    mean.reset(seed=5)
    assert np.isfinite(mean.step(actions)[0]).all()

    # "off": the model's own dynamics, as the model without members steps them
    off = KeyCLDVectorEnv(4, "cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints", ensemble_mode="off")
    alone = KeyCLDVectorEnv(4, "cartpole", checkpoint=str(tiny_model_dir), obs_type="keypoints")
    off.reset(seed=5)
    alone.reset(seed=5)
    o_off, r_off, _, _, i_off = off.step(actions)
    o_alone, r_alone, _, _, _ = alone.step(actions)
    assert "uncertainty" not in i_off
    np.testing.assert_allclose(o_off, o_alone, atol=1e-6)
    np.testing.assert_allclose(r_off, r_alone, atol=1e-6)

    with pytest.raises(ValueError, match="need a model with an ensemble"):
        KeyCLDEnv("cartpole", checkpoint=str(tiny_model_dir), obs_type="keypoints", uncertainty_penalty=1.0)
    with pytest.raises(ValueError, match="need a model with an ensemble"):
        KeyCLDEnv("cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints", uncertainty_penalty=1.0,
                  ensemble_mode="off")
    for bad in (dict(uncertainty_penalty=-1.0), dict(uncertainty_penalty=float("nan")), dict(uncertainty_limit=0.0),
                dict(ensemble_mode="median")):
        with pytest.raises(ValueError):
            KeyCLDEnv("cartpole", checkpoint=str(ensemble_dir), obs_type="keypoints", **bad)


def test_gym_make_passes_the_options(ensemble_dir):
    env = gym.make("KeyCLD-Cartpole-v0", checkpoint=str(ensemble_dir), obs_type="keypoints", uncertainty_limit=50.0)
    env.reset(seed=0)
    assert "uncertainty" in env.step(np.zeros(1, np.float32))[4]


def test_calibration_ranks_a_disagreement_that_tracks_the_error(tiny_model_dir):
    from keycld_gym.analysis.calibration import calibration

    model = load_model(tiny_model_dir)
    model.ensemble = DynamicsEnsemble(model, [member_state(model)] * 2)
    rng = np.random.default_rng(0)
    observed = torch.from_numpy(rng.normal(size=(8, 5, 2, 2)).astype(np.float32))
    scale = torch.from_numpy(rng.uniform(0.01, 0.2, size=(8, 5, 1, 1)).astype(np.float32))  # per sequence and step
    offsets = torch.tensor([1.0, -1.0, 0.5]).reshape(3, 1, 1, 1, 1)
    members_q = observed + offsets * scale  # spread and member 0's error both proportional to the scale
    vpt = np.array([1, 2, 3, 4, 5, 1, 2, 3])
    c = calibration(model, members_q, observed, vpt)
    assert c["spearman_pooled"] == pytest.approx(1.0) and c["spearman_within_step_median"] == pytest.approx(1.0)
    # member 0 exact: no error anywhere, so nothing for the disagreement to rank against
    exact = members_q.clone()
    exact[0] = observed
    assert calibration(model, exact, observed, vpt)["spearman_pooled"] is None


def test_evaluate_model_reports_the_calibration_of_an_ensemble(ensemble_dir, tiny_data):
    from keycld_gym.analysis.evaluation import evaluate_model

    result = evaluate_model(load_model(ensemble_dir), tiny_data, start_frames=9, agent_steps=4, physics_frames=10,
                            references=False)
    c = result["calibration"]
    assert c["members"] == 3 and c["steps"] == 4 and c["sequences"] == result["sequences"] and c["units"] == "pixels"
    assert all(x >= 0 for x in c["disagreement_median_by_step"]) and c["level"] >= 0
    for key in ("spearman_pooled", "spearman_within_step_median", "spearman_vpt"):
        assert c[key] is None or -1 <= c[key] <= 1


def test_video_shows_the_disagreement(ensemble_dir, tiny_data, tmp_path):
    from keycld_gym.analysis.video import prediction_video

    result = prediction_video(ensemble_dir, tiny_data, tmp_path / "v.gif", sequences=1)  # the tiny data allow 1 step
    spread = result["disagreement_px"]["KeyCLD"]
    assert len(spread) == 1 and len(spread[0]) == result["agent_steps"] + 1 and spread[0][0] == 0.0
    assert spread[0][-1] > 0  # the members part after the first step
    assert (tmp_path / "v.gif").stat().st_size > 0
