"""Training: both phases run on real data, losses fall, an interrupted run resumes exactly."""

import csv

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, cart_push, tiny_train_config, true_cart_push

from keycld_gym import CheckpointError
from keycld_gym.model.checkpoint import load_model
from keycld_gym.training.config import TrainConfig
from keycld_gym.training.dynamics_phase import rollout_loss
from keycld_gym.training.losses import foreground_weights, heatmap_sharpness_loss
from keycld_gym.training.trainer import Trainer


def _column(path, name):
    with open(path) as f:
        return [float(r[name]) for r in csv.DictReader(f)]


def test_keypoint_phase_loss_falls(tiny_data, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_train_config(tiny_data, keypoint_steps=80, dynamics_steps=0, log_every=5, keypoint_lr=3e-3)
    Trainer(cfg, tmp_path, progress=False).run()
    loss = _column(tmp_path / "log_keypoints.csv", "recon_weighted")
    assert len(loss) == 16
    assert np.mean(loss[-3:]) < 0.5 * np.mean(loss[:2])


def true_keypoints(qpos):
    """Cart and pole tip of the standard cartpole in image units of its `fixed` camera `(S, T, 2, 2)`."""
    scale = 0.6036  # image units per metre at the cart's depth (ObservationCamera.project)
    x, theta = qpos[..., 0], qpos[..., 1]
    cart = np.stack([scale * x, np.zeros_like(x)], -1)
    tip = cart + scale * np.stack([np.sin(theta), np.cos(theta)], -1)
    return torch.from_numpy(np.stack([tip, cart], -2)).float()  # pole first: the trainer must reorder


@pytest.mark.parametrize("loss", ["mse", "robust"])
def test_dynamics_phase_learns_real_motion_and_orders_keypoints(tiny_data, tiny_model_dir, tmp_path, monkeypatch, loss):
    """On the real system's keypoint trajectories the dynamics loss falls and constraints are measured."""
    torch.manual_seed(0)
    # line-fit start states only (no shooting refit), so the loss measures what the dynamics learn
    cfg = tiny_train_config(tiny_data, keypoints_from=str(tiny_model_dir), keypoint_steps=0, dynamics_steps=60,
                            horizon_start=12, horizon_ramp_steps=0, log_every=5, dynamics_batch=20, start_fit_frames=0,
                            rollout_loss=loss)
    trainer = Trainer(cfg, tmp_path, progress=False)
    truth = true_keypoints(trainer.train.data["qpos"])
    monkeypatch.setattr(trainer.dynamics, "encode_sequences", lambda frames: truth)
    trainer.run()
    mse = _column(tmp_path / "log_dynamics.csv", "dynamics_mse")
    assert np.mean(mse[-3:]) < 0.5 * np.mean(mse[:2])
    model = load_model(tmp_path / "model")
    # reordered so that keypoint 0 is the one on the rail (the tip hangs ~0.6 below it), and
    # the constants start at the truth and stay near it
    assert abs(model.constraints.height[0].item()) < 0.1
    assert abs(model.constraints.length[1].item() - 0.6036) < 0.05
    assert model.checkpoint_config["training"]["phase"] == "done"
    assert model.checkpoint_config["data"]["regime"] == "task"


def test_robust_rollout_loss_weighs_an_outlier_rollout_little():
    """Against a typical rollout's, an outlier's error (100x the batch's median) weighs as much in plain MSE, 2% in the robust loss."""
    errors = torch.tensor([1.0, 0.8, 1.2, 0.9, 1.1, 100.0]) * 1e-4
    weights = {}
    for kind in ("mse", "robust"):
        e = errors.clone().requires_grad_(True)
        rollout_loss(e, kind).backward()
        weights[kind] = float(e.grad[-1] / e.grad[0])
    assert weights["mse"] == pytest.approx(1.0)
    assert weights["robust"] < 0.02
    # a typical rollout's error counts as itself, within the log's curvature
    e = torch.full((8,), 1e-4)
    assert rollout_loss(e, "robust").item() == pytest.approx(1e-4 * np.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="rollout_loss must be one of"):
        TrainConfig(system="cartpole", data="d", rollout_loss="huber")


def test_robust_scale_keeps_typical_rollouts_nearer_mse_and_still_cuts_outliers():
    """At 4 batch medians a typical rollout keeps 80% of its MSE weight, a 100x outlier under 5%."""
    errors = torch.tensor([1.0, 0.8, 1.2, 0.9, 1.1, 100.0]) * 1e-4
    grads = {}
    for scale in (1.0, 4.0):
        e = errors.clone().requires_grad_(True)
        rollout_loss(e, "robust", scale).backward()
        grads[scale] = e.grad * len(e)  # the plain mean's gradient is 1 for each
    assert grads[1.0][0] == pytest.approx(0.5, rel=1e-3)
    assert grads[4.0][0] == pytest.approx(0.8, rel=1e-3)
    assert grads[4.0][-1] < 0.05
    with pytest.raises(ValueError, match="robust_scale must be a positive"):
        TrainConfig(system="cartpole", data="d", robust_scale=0.0)


def test_rollouts_start_across_each_sequence_and_physical_constants_learn_faster(tiny_data, tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    """Start states sit every `start_stride` frames and all of them train; the mass matrix has its own rate."""
    cfg = tiny_train_config(tiny_data, keypoints_from=str(tiny_model_dir), keypoint_steps=0, dynamics_steps=12,
                            horizon_start=6, horizon_ramp_steps=0, start_stride=10, dynamics_batch=16)
    trainer = Trainer(cfg, tmp_path, progress=False)
    monkeypatch.setattr(trainer.dynamics, "encode_sequences", lambda frames: true_keypoints(trainer.train.data["qpos"]))
    trainer._make_optimizer()
    starts = trainer.dynamics.start_frames()
    assert starts.tolist() == [0, 10, 20, 30, 40]  # 48 frames: the last start still has 6 steps after it
    sequences = trainer.train.num_sequences
    assert trainer.dynamics.start_q.shape == (sequences, len(starts), 2, 2)
    before = trainer.dynamics.start_q.detach().clone()
    rates = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert rates[id(trainer.model.dynamics.mass_raw_diag)] == cfg.physics_lr
    assert rates[id(trainer.model.dynamics.walls)] == cfg.physics_lr
    assert rates[id(next(trainer.model.dynamics.potential_net.parameters()))] == cfg.dynamics_lr
    trainer.run()
    moved = (trainer.dynamics.start_q.detach() - before).abs().flatten(2).amax(-1) > 0  # (S, G)
    assert moved[:, -1].any() and moved[:, 0].any()


def test_structured_dynamics_start_from_a_least_squares_fit_of_the_real_system(tiny_data, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    """Constant B on the cart, gravity and walls only: the fit puts the action's effect near the truth."""
    import json
    from dataclasses import replace

    from keycld_gym.model.dynamics import DynamicsConfig

    dyn = DynamicsConfig(input_matrix="constant", input_keypoints=(0,), linear_potential=True, potential_mlp=False)
    cfg = tiny_train_config(tiny_data, model=replace(TINY_MODEL, dynamics=dyn), keypoints_from=str(tiny_model_dir),
                            keypoint_steps=0, dynamics_steps=2)
    trainer = Trainer(cfg, tmp_path, progress=False)
    monkeypatch.setattr(trainer.dynamics, "encode_sequences", lambda frames: true_keypoints(trainer.train.data["qpos"]))
    trainer.run()
    fit = json.loads((tmp_path / "physics_fit.json").read_text())
    assert fit["mass"][0][0] == 1.0 and fit["samples"] > 20  # 6 short sequences, the rail ends left out
    model = load_model(tmp_path / "model")
    assert not hasattr(model.dynamics, "potential_net")
    # 39 samples of 6 short sequences: the fit's push comes out 20% weak (4.66 against 5.88); the
    # bundled model's, from 17,800 frames, is within 2% (test_imagined_env)
    assert abs(cart_push(model) / true_cart_push() - 1) < 0.25


def test_mirrored_sequences_double_the_data_and_leave_no_sideways_pull(tiny_data, tiny_model_dir, tmp_path, monkeypatch):
    """Each sequence also as its mirror image (x and the push negated): the fit's gravity has no sideways part."""
    import json
    from dataclasses import replace

    from keycld_gym.model.dynamics import DynamicsConfig

    dyn = DynamicsConfig(input_matrix="constant", input_keypoints=(0,), linear_potential=True, potential_mlp=False)
    gravity = {}
    for mirror in (False, True):
        out = tmp_path / str(mirror)
        cfg = tiny_train_config(tiny_data, model=replace(TINY_MODEL, dynamics=dyn), keypoints_from=str(tiny_model_dir),
                                keypoint_steps=0, dynamics_steps=2, mirror_sequences=mirror)
        trainer = Trainer(cfg, out, progress=False)
        monkeypatch.setattr(trainer.dynamics, "encode_sequences", lambda frames: true_keypoints(trainer.train.data["qpos"]))
        trainer.run()
        gravity[mirror] = np.array(json.loads((out / "physics_fit.json").read_text())["gravity"]).reshape(-1, 2)
    kp, acts, rews = trainer.dynamics.data()
    s = len(trainer.train.data["frames"])
    assert kp.shape[0] == acts.shape[0] == rews.shape[0] == 2 * s
    torch.testing.assert_close(kp[s:], kp[:s] * torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(acts[s:], -acts[:s])
    torch.testing.assert_close(rews[s:], rews[:s])
    # the real pull is straight down: sideways only by the data's lopsidedness, and none once mirrored
    assert np.abs(gravity[True][:, 0]).max() < 1e-6 * np.abs(gravity[True][:, 1]).max()
    assert np.abs(gravity[False][:, 0]).max() > 1e-4 * np.abs(gravity[False][:, 1]).max()


@pytest.mark.parametrize("kind", ["unconstrained", "neural_ode"])
def test_ablations_train(tiny_data, tiny_model_dir, tmp_path, kind):
    """The project page's ablations train with the same trainer (some optimizer groups get no gradient)."""
    from dataclasses import replace

    from keycld_gym.model.dynamics import DynamicsConfig

    model = replace(TINY_MODEL, dynamics=DynamicsConfig(kind=kind))
    cfg = tiny_train_config(tiny_data, model=model, keypoints_from=str(tiny_model_dir), keypoint_steps=0, dynamics_steps=3)
    trained = Trainer(cfg, tmp_path, progress=False).run()
    assert trained.config.dynamics.kind == kind
    assert (tmp_path / "model").exists()


def test_keypoint_learning_rate_decays_from_the_first_to_the_last_step():
    from keycld_gym.training.keypoint_phase import KeypointPhase

    def rates(**kwargs):
        phase = KeypointPhase(None, TrainConfig(system="cartpole", data="", keypoint_steps=101, **kwargs), None, None, None)
        return np.array([phase.learning_rate(s) for s in range(101)])

    np.testing.assert_allclose(rates(keypoint_lr=2e-3), 2e-3)  # the default: constant
    decayed = rates(keypoint_lr=2e-3, keypoint_lr_final=0.05)
    np.testing.assert_allclose(decayed[[0, 50, 100]], [2e-3, 2e-3 * 0.525, 1e-4])
    assert (np.diff(decayed) < 0).all()


def test_interrupted_run_resumes_exactly(tiny_data, tmp_path):
    # with a decaying keypoint learning rate: the resumed run must take it up where it was
    cfg = tiny_train_config(tiny_data, keypoint_steps=5, dynamics_steps=5, keypoint_lr_final=0.1)
    torch.manual_seed(0)
    straight = Trainer(cfg, tmp_path / "a", progress=False).run()
    torch.manual_seed(0)
    Trainer(cfg, tmp_path / "b", progress=False).run(stop_after=3)  # stopped inside phase 1
    torch.manual_seed(123)  # a resumed process starts from another RNG state
    t = Trainer(cfg, tmp_path / "b", progress=False)
    t.run(resume=True, stop_after=4)  # stopped inside phase 2
    resumed = Trainer(cfg, tmp_path / "b", progress=False).run(resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_existing_run_needs_resume_and_the_same_settings(tiny_data, tmp_path):
    cfg = tiny_train_config(tiny_data, keypoint_steps=2, dynamics_steps=1)
    Trainer(cfg, tmp_path, progress=False).run(stop_after=1)
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(cfg, tmp_path, progress=False).run()
    with pytest.raises(CheckpointError, match="keypoint_steps"):
        Trainer(tiny_train_config(tiny_data, keypoint_steps=3, dynamics_steps=1), tmp_path, progress=False)


def test_foreground_weights_and_heatmap_term():
    median = torch.zeros(4, 6, 3)
    frames = torch.zeros(2, 4, 6, 3)
    frames[0, 1, 2] = 0.5
    w = foreground_weights(frames, median, 20.0, 0.1)
    assert w.shape == (2, 4, 6, 1) and w[0, 1, 2, 0] == 21 and w.sum() == 2 * 24 + 20
    heat = torch.randn(3, 2, 8, 16, requires_grad=True)
    kp = torch.zeros(3, 2, 2)
    loss = heatmap_sharpness_loss(heat, kp, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and heat.grad.abs().sum() > 0


def test_constraint_consistency_prefers_the_elbow_to_the_shoulder():
    """On an acrobot, keypoints on the elbow and the tip keep both links; one on the shoulder pivot does not."""
    from keycld_gym.sim.systems import get_system
    from keycld_gym.training.losses import constraint_consistency, pivot_closeness

    spec = get_system("acrobot")
    shoulder = torch.zeros(1, 2)
    a1, a2 = torch.rand(64) * 6.3, torch.rand(64) * 6.3
    elbow = 0.3 * torch.stack([torch.sin(a1), torch.cos(a1)], -1)
    tip = elbow + 0.3 * torch.stack([torch.sin(a1 + a2), torch.cos(a1 + a2)], -1)
    right = torch.stack([elbow, tip], 1)
    assert constraint_consistency(right, spec.constraints, shoulder, [0]) < 1e-10
    on_pivot = torch.stack([shoulder.expand(64, 2), tip], 1)  # the zero-length pivot link holds, the other does not
    wrong = constraint_consistency(on_pivot, spec.constraints, shoulder, [0])
    assert wrong > 1e-3
    assert pivot_closeness(on_pivot, shoulder, 0.1) > pivot_closeness(right, shoulder, 0.1) + 0.4
    q = on_pivot.clone().requires_grad_(True)
    constraint_consistency(q, get_system("cartpole").constraints).backward()  # no pivot: heights and lengths only
    assert q.grad.abs().sum() > 0


def test_coverage_pulls_a_link_along_the_foreground_and_liveness_penalties():
    """Also for a link from a pivot: its free end is pulled along the bar."""
    from keycld_gym.training.losses import coverage_loss, keypoint_liveness

    fg = torch.zeros(1, 32, 64)
    fg[0, 16, 32:44] = 1  # a horizontal bar from x = 0 to about 0.7
    q = torch.tensor([[[0.0, 0.0], [0.2, 0.0]]], requires_grad=True)
    loss = coverage_loss(q, fg, [(0, 1)], 1.0)
    loss.backward()
    assert q.grad[0, 1, 0] < 0  # the free end is pulled outwards along the bar
    far = coverage_loss(torch.tensor([[[0.0, 0.0], [0.7, 0.0]]]), fg, [(0, 1)], 1.0)
    assert far < loss
    bob = torch.tensor([[[0.2, 0.0]]], requires_grad=True)  # one keypoint on a rod from a pivot at the centre
    coverage_loss(bob, fg, [], 1.0, torch.zeros(1, 2), [0]).backward()
    assert bob.grad[0, 0, 0] < 0
    still = torch.zeros(8, 2, 2)
    spread, close = keypoint_liveness(still, 0.05, 0.1)
    assert spread > 0 and close > 0.99
    moving = torch.randn(8, 2, 2)
    moving[:, 1] += 3.0
    spread, close = keypoint_liveness(moving, 0.05, 0.1)
    assert spread == 0 and close < 1e-3


def test_constrained_keypoints_train_and_hold_the_constraints_through_both_phases(tiny_data, tmp_path):
    """`EncoderConfig.constrained` on real frames: the loss falls, encoded keypoints keep the constraints exactly."""
    from dataclasses import replace

    from keycld_gym.data.dataset import iter_sequences

    torch.manual_seed(0)
    model = replace(TINY_MODEL, encoder=replace(TINY_MODEL.encoder, constrained=True))
    cfg = tiny_train_config(tiny_data, model=model, keypoint_steps=80, dynamics_steps=4, log_every=5, keypoint_lr=3e-3)
    Trainer(cfg, tmp_path, progress=False).run()
    loss = _column(tmp_path / "log_keypoints.csv", "recon_weighted")
    assert np.mean(loss[-3:]) < 0.5 * np.mean(loss[:2])
    trained = load_model(tmp_path / "model")
    q = trained.encode_frames(next(iter_sequences(tiny_data, "cartpole"))["frames"])
    assert q[:, 0, 1].std() < 1e-5  # the cart on its rail
    lengths = (q[:, 1] - q[:, 0]).norm(dim=-1)
    assert lengths.std() < 1e-3 * lengths.mean()
    # the dynamics phase kept the keypoints' order and started its constants at the encoder's
    kc = trained.keypoint_constraints
    assert abs(trained.constraints.height[0].item() - kc.height[0].item()) < 0.05
    assert abs(trained.constraints.length[1].item() - kc.length[1].item()) < 0.05
    # a run that reuses this encoder (the pipeline's dynamics step, the ablations) places the
    # keypoints where it did: with the learned link lengths, not their starting values
    assert abs(kc.length[1].item() - 0.5) > 1e-4
    reuse = replace(cfg, keypoints_from=str(tmp_path / "model"), keypoint_steps=0, dynamics_steps=2)
    reused = Trainer(reuse, tmp_path / "reuse", progress=False).run()
    frames = next(iter_sequences(tiny_data, "cartpole"))["frames"]
    assert torch.equal(reused.encode_frames(frames), q)
    with pytest.raises(ValueError, match="same kind"):
        Trainer(replace(reuse, model=TINY_MODEL), tmp_path / "mismatch", progress=False)


def test_a_continued_run_starts_from_the_models_dynamics_and_its_fitted_start_states(tiny_data, tiny_model_dir,
                                                                                   tmp_path):
    """`continue_from`: no least-squares start, no reordering; warm starts for the first sequences, cold for the rest."""
    from keycld_gym.model.ensemble import member_state

    source = load_model(tiny_model_dir)
    with pytest.raises(ValueError, match="keypoints_from set to the same model"):
        tiny_train_config(tiny_data, continue_from=str(tiny_model_dir), keypoints_from=str(tiny_data), keypoint_steps=0)
    cfg = tiny_train_config(tiny_data, keypoints_from=str(tiny_model_dir), continue_from=str(tiny_model_dir),
                            keypoint_steps=0, dynamics_steps=3, horizon_ramp_steps=0,
                            val_fraction=source.checkpoint_config["training"]["config"]["val_fraction"])
    trainer = Trainer(cfg, tmp_path / "a", progress=False)
    start = member_state(trainer.model)
    assert all(torch.equal(t, member_state(source)[n]) for n, t in start.items())  # the model's own dynamics
    trainer.dynamics.prepare()
    assert not (tmp_path / "a" / "physics_fit.json").exists()
    assert all(torch.equal(t, member_state(source)[n]) for n, t in member_state(trainer.model).items())
    # warm starts for the first sequences are refined from where they are; the rest fitted cold
    q, v = trainer.dynamics.start_q.clone(), trainer.dynamics.start_v.clone()
    warm = Trainer(cfg, tmp_path / "b", progress=False, start_states=(q[:2], v[:2]))
    calls, refit = [], warm.dynamics.refit_start_states
    warm.dynamics.refit_start_states = lambda cold, sequences: calls.append((cold, sequences)) or refit(cold, sequences)
    warm.dynamics.prepare()
    assert calls == [(False, slice(0, 2)), (True, slice(2, None))]
    assert warm.dynamics.start_q.shape == q.shape and warm.dynamics.start_q.isfinite().all()
    with pytest.raises(ValueError, match="do not fit"):
        Trainer(cfg, tmp_path / "c", progress=False, start_states=(q[:, :1], v[:, :1])).dynamics.prepare()
    model = Trainer(cfg, tmp_path / "d", progress=False).run()
    assert any(not torch.equal(t, start[n]) for n, t in member_state(model).items())  # it trained on
    assert load_model(tmp_path / "d" / "model").checkpoint_config["continued_from"]["member"] == 0
    with pytest.raises(CheckpointError, match="no member 1"):
        Trainer(tiny_train_config(tiny_data, keypoints_from=str(tiny_model_dir), continue_from=str(tiny_model_dir),
                                  continue_member=1, keypoint_steps=0), tmp_path / "e", progress=False)
