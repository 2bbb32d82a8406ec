"""Evaluating a KeyCLD model on held-out real sequences (docs/method/metrics.md, "VPT").

- VPT: from the first `start_frames` frames of a sequence (physics interval, with their
  actions) estimate the state, predict open loop under the recorded actions, and count the
  predicted frames before the per-frame MSE to the real frame first exceeds epsilon (the
  mean MSE between held-out frames and their mean image). At the agent interval (the env's
  action repeat) and at the physics interval, in steps and in seconds, over the system's
  `prediction_horizon_s` by default. References on the same sequences: holding the last
  start frame, and the true simulator restarted from the true state plus noise; the share of
  sequences valid over the whole horizon (`saturated`) says whether the horizon is long
  enough to tell them apart. Several held-out sets (the task's reset, set states) are scored
  together and per set and per explorer.
- How well the keypoints carry the state: rail keypoints' x against the true slider
  position (correlation), link angles from keypoint pairs against the true joint angles
  (RMS after fitting one offset and the mirror sign).
- Reconstruction error, constraint violation over long rollouts, the reward head's error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keycld_gym.analysis.calibration import calibration, ensemble_predictions
from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import WindowDataset
from keycld_gym.files import sha256_file
from keycld_gym.model.checkpoint import load_model
from keycld_gym.model.estimation import fit_trajectory
from keycld_gym.model.keycld import KeyCLDModel, fit_circle
from keycld_gym.sim.angles import wrap_angle
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import WINDOWS, SystemSpec


def valid_prediction_time(errors: np.ndarray, epsilon: float) -> np.ndarray:
    """Predicted frames before the per-frame error first exceeds epsilon: `(S, N)` -> `(S,)`."""
    bad = errors > epsilon
    return np.where(bad.any(1), bad.argmax(1), errors.shape[1])


def frame_mse(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-frame MSE of frames in [0, 1] `(..., H, W, 3)` -> `(...)`."""
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    return ((a - b) ** 2).mean((-3, -2, -1)).numpy()


def mse_epsilon(frames: np.ndarray) -> float:
    """VPT's threshold: mean MSE between frames uint8 `(N, H, W, 3)` and their mean image."""
    x = torch.from_numpy(frames).float() / 255
    return float(((x - x.mean(0)) ** 2).mean())


def angle_rms(predicted: np.ndarray, true: np.ndarray) -> tuple[float, int]:
    """RMS of wrapped angle error after fitting one offset and the mirror sign; returns (rms, sign)."""
    best = (math.inf, 1)
    for sign in (1, -1):
        d = wrap_angle(sign * predicted - true)
        offset = math.atan2(np.sin(d).mean(), np.cos(d).mean())
        rms = float(np.sqrt((wrap_angle(d - offset) ** 2).mean()))
        best = min(best, (rms, sign))
    return best


def keypoint_state_metrics(keypoints: np.ndarray, qpos: np.ndarray, spec: SystemSpec) -> dict[str, float]:
    """How well keypoints `(N, K, 2)` carry the true state `(N, nq)`.

    Rail keypoints (a `fixed_height` constraint) against the slider position; each distance
    constraint's vector angle against the true angle of that link (joint angles summed down
    the chain, in the order of the hinges in qpos).
    """
    out: dict[str, float] = {}
    hinges = [i for i, n in enumerate(spec.qpos_names) if "slider" not in n]
    sliders = [i for i, n in enumerate(spec.qpos_names) if "slider" in n]
    link_angle = np.cumsum(qpos[:, hinges], 1)
    links = 0
    for c in spec.constraints:
        if c.kind == "fixed_height" and sliders:
            corr = np.corrcoef(keypoints[:, c.a, 0], qpos[:, sliders[0]])[0, 1]
            out[f"keypoint{c.a}_x_vs_{spec.qpos_names[sliders[0]]}_corr"] = float(corr)
        elif c.kind in ("fixed_pivot_distance", "fixed_distance") and links < len(hinges):
            if c.kind == "fixed_distance":
                d = keypoints[:, c.b] - keypoints[:, c.a]
            else:  # around the keypoints' own fitted circle centre
                centre = fit_circle(torch.from_numpy(keypoints[:, c.a])).numpy()
                d = keypoints[:, c.a] - centre
            rms, _ = angle_rms(np.arctan2(d[:, 0], d[:, 1]), link_angle[:, links])
            out[f"link{links}_angle_rms_rad"] = rms
            links += 1
    return out


def reward_errors(model: KeyCLDModel, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                  window: int, near_s: float) -> dict[str, Any]:
    """The reward head on whole sequences: RMSE per physics step overall, where the task rewards, and next to it.

    frames `(S, T, H, W, 3)`, actions `(S, T, A)`, rewards `(S, T)` (reward t for arriving at
    frame t + 1). States come from fits over consecutive `window`-frame windows. A sparse
    reward (the pendulum's) is zero almost everywhere, so the overall RMSE says little: the
    `rewarded` samples are those with a positive true reward, the `near` ones unrewarded
    samples within `near_s` seconds of one.
    """
    s_count, t_len = rewards.shape
    kps = torch.from_numpy(_encode(model, frames.reshape(-1, *frames.shape[2:]))).reshape(s_count, t_len, -1, 2)
    act = torch.from_numpy(actions)
    starts = range(0, t_len - window + 1, window - 1)
    window_actions = torch.cat([act[:, s:s + window - 1] for s in starts])
    qs, vs = fit_trajectory(model, torch.cat([kps[:, s:s + window] for s in starts]), window_actions)
    with torch.no_grad():
        pred = model.reward(qs[:, 1:], vs[:, 1:], window_actions).numpy()
    true = np.concatenate([rewards[:, s:s + window - 1] for s in starts])
    pred, true = pred.reshape(len(starts), s_count, -1).transpose(1, 0, 2).reshape(s_count, -1), \
        true.reshape(len(starts), s_count, -1).transpose(1, 0, 2).reshape(s_count, -1)
    rewarded = true > 0
    reach = max(1, round(near_s / model.spec.physics_dt))
    near = np.zeros_like(rewarded)
    for shift in range(1, reach + 1):
        near[:, shift:] |= rewarded[:, :-shift]
        near[:, :-shift] |= rewarded[:, shift:]
    near &= ~rewarded

    def rmse(mask: np.ndarray) -> float | None:
        return float(np.sqrt(((pred - true)[mask] ** 2).mean())) if mask.any() else None

    return {"rmse": rmse(np.ones_like(rewarded)), "rmse_rewarded": rmse(rewarded), "rmse_near_rewarded": rmse(near),
            "samples": int(true.size), "rewarded_samples": int(rewarded.sum()), "near_samples": int(near.sum()),
            "mean_true_rewarded": float(true[rewarded].mean()) if rewarded.any() else None,
            "mean_predicted_rewarded": float(pred[rewarded].mean()) if rewarded.any() else None,
            "window": window, "near_s": near_s}


def render_states(model: KeyCLDModel, q: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The model's frames of keypoint states q `(N, K, 2)`: float `(N, H, W, 3)` in [0, 1]."""
    with torch.no_grad():
        return np.concatenate([model.render(q[i:i + batch]).numpy() for i in range(0, len(q), batch)])


def _encode(model: KeyCLDModel, frames: np.ndarray) -> np.ndarray:
    return model.encode_frames(frames).numpy()


def held_out_sequences(model: KeyCLDModel, data: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """The sequences of data set `data` that `model` never trained on, and which split they are.

    All of them ("all"), or the validation split ("val") when the model trained on this set.
    """
    ckpt = getattr(model, "checkpoint_config", {}) or {}
    trained_on_it = ckpt.get("data", {}).get("manifest_sha256") == sha256_file(Path(data) / MANIFEST)
    split = "val" if trained_on_it else "all"
    val_fraction = ckpt.get("data", {}).get("val_fraction", 0.1)
    return WindowDataset(data, 1, split=split, val_fraction=val_fraction, system=model.spec.name).data, split


def held_out_sets(model: KeyCLDModel, data: str | Path | Sequence[str | Path], max_sequences: int | None = None
                  ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The held-out sequences of one or more data sets, as one batch cut to the shortest set's length.

    Returns the arrays of `held_out_sequences` concatenated over the sets, with `"set"` `(S,)`
    the index of each sequence's set, and one record per set: its folder, split, regime and
    sequences (at most `max_sequences` of each).
    """
    folders = [data] if isinstance(data, (str, Path)) else list(data)
    if not folders:
        raise ValueError("name at least one held-out data set")
    parts, sets = [], []
    for i, folder in enumerate(folders):
        d, split = held_out_sequences(model, folder)
        n = len(d["frames"]) if max_sequences is None else min(max_sequences, len(d["frames"]))
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        parts.append({k: v[:n] for k, v in d.items()} | {"set": np.full(n, i)})
        sets.append({"data": str(folder), "split": split, "regime": manifest.get("regime"), "sequences": int(n),
                     "frames_per_sequence": int(d["frames"].shape[1])})
    length = min(p["frames"].shape[1] for p in parts)
    keys = set.intersection(*(set(p) for p in parts))
    joined = {k: np.concatenate([p[k][:, :length] if p[k].ndim > 1 else p[k] for p in parts]) for k in keys}
    return joined, sets


def predict_open_loop(model: KeyCLDModel, frames: np.ndarray, actions: np.ndarray, start_frames: int,
                      steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimate each sequence's state from its first frames, then predict open loop under its actions.

    frames: uint8 `(S, T, H, W, 3)`; actions: `(S, T, A)` at the physics rate. Returns the
    window's encoded keypoints `(S, start_frames, K, 2)`, the fitted window states q and v
    `(S, start_frames, K, 2)` and the predicted q `(S, steps, K, 2)` at physics steps
    1..steps after the last start frame.
    """
    last = start_frames - 1
    kp_window = torch.from_numpy(_encode(model, frames[:, :start_frames]))
    act = torch.from_numpy(np.asarray(actions, np.float32))
    qs_fit, vs_fit = fit_trajectory(model, kp_window, act[:, :last])
    pred = open_loop(model, qs_fit[:, -1], vs_fit[:, -1], act[:, last:], list(range(1, steps + 1)))
    return kp_window, qs_fit, vs_fit, pred


@torch.no_grad()
def open_loop(model: KeyCLDModel, q: torch.Tensor, v: torch.Tensor, actions: torch.Tensor, times: list[int]) -> torch.Tensor:
    """Keypoints `(S, len(times), K, 2)` at physics steps `times` after states q, v `(S, K, 2)` under actions `(S, T, A)`."""
    out, want = [], set(times)
    for t in range(1, max(times) + 1):
        q, v = model.step(q, v, actions[:, t - 1])
        if t in want:
            out.append(q)
    return torch.stack(out, 1)


def horizon_steps(spec: SystemSpec, frames_per_sequence: int, start_frames: int) -> tuple[int, bool]:
    """The VPT's default horizon in agent steps: the spec's `prediction_steps`, or as many as sequences of
    `frames_per_sequence` allow after the start window (at least 1); and whether the data cut it short."""
    allowed = (frames_per_sequence - start_frames) // spec.action_repeat
    return max(1, min(spec.prediction_steps, allowed)), allowed < spec.prediction_steps


def true_simulator_frames(spec: SystemSpec, qpos: np.ndarray, qvel: np.ndarray, actions: np.ndarray,
                          times: list[int], noise: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Frames of the real simulator restarted from noisy true states.

    qpos, qvel: `(S, nq)`, `(S, nv)` true start states; actions `(S, N, A)` physics-rate;
    times: physics steps after the start at which to render. Returns uint8 `(S, len(times), H, W, 3)`.
    """
    env = RealEnv(spec.name, "state", action_repeat=1)
    env.reset(seed=0)
    out = np.empty((len(qpos), len(times), *env.frame_shape), np.uint8)
    want = {t: i for i, t in enumerate(times)}
    for s in range(len(qpos)):
        env.set_state(qpos[s] + rng.normal(0, noise[0], qpos[s].shape), qvel[s] + rng.normal(0, noise[1], qvel[s].shape))
        for t in range(max(times) + 1):
            if t in want:
                out[s, want[t]] = env.camera.render()
            if t < max(times):
                env.step(actions[s, t])
    env.close()
    return out


def evaluate_model(
    model: KeyCLDModel,
    data: str | Path | Sequence[str | Path],
    *,
    start_frames: int | None = None,
    agent_steps: int | None = None,
    physics_frames: int = 50,
    noise: tuple[float, float] = (0.005, 0.035),
    long_rollout: int = 1000,
    max_sequences: int | None = None,
    seed: int = 0,
    references: bool = True,
) -> dict[str, Any]:
    """All model metrics on the held-out sequences of one or more data sets (see the module docstring).

    agent_steps: the VPT's horizon (None: the system's `prediction_horizon_s`, or as many
    agent steps as the sequences allow where they are shorter; the result says which).
    max_sequences: at most this many sequences of each set.
    """
    t_start = time.monotonic()
    model.eval()
    spec = model.spec
    repeat = spec.action_repeat
    if start_frames is None:
        start_frames = spec.frames(WINDOWS.evaluation_start)
    ckpt = getattr(model, "checkpoint_config", {}) or {}
    d, sets = held_out_sets(model, data, max_sequences)
    frames, actions, rewards = d["frames"], d["actions"].astype(np.float32), d["rewards"]
    s_count, t_len = frames.shape[:2]
    if s_count == 0:
        raise ValueError(f"{data} has no held-out sequences to evaluate on")
    horizon_capped = False
    if agent_steps is None:
        agent_steps, horizon_capped = horizon_steps(spec, t_len, start_frames)
    horizon = agent_steps * repeat
    need = start_frames + max(horizon, physics_frames)
    if t_len < need:
        raise ValueError(
            f"sequences in {data} have {t_len} frames; this evaluation needs {need} ({start_frames} start frames + "
            f"{agent_steps} agent steps of {repeat}): collect with --frames {need} or more"
        )
    last = start_frames - 1
    agent_times = [repeat * (i + 1) for i in range(agent_steps)]  # physics steps after the last start frame
    phys_times = list(range(1, physics_frames + 1))
    times = sorted(set(agent_times) | set(phys_times))
    col = {t: i for i, t in enumerate(times)}
    real = frames[:, [last + t for t in times]]
    epsilon = mse_epsilon(frames[:, ::10].reshape(-1, *frames.shape[2:]))

    # model: estimate the state from the start window, predict open loop
    kp_window, qs_fit, vs_fit, pred_all = predict_open_loop(model, frames, actions, start_frames, max(times))
    act = torch.from_numpy(actions)
    pred_q = pred_all[:, [t - 1 for t in times]]  # (S, len(times), K, 2)
    # where prediction errors come from: the start fit's residual, then the keypoint drift
    kp_future = torch.from_numpy(_encode(model, frames[:, [last + t for t in agent_times]]))
    drift = (pred_q[:, [col[t] for t in agent_times]] - kp_future).norm(dim=-1)  # (S, agent_steps, K)
    residual = float((qs_fit - kp_window).norm(dim=-1).median())
    pred = render_states(model, pred_q.flatten(0, 1)).reshape(s_count, len(times), *frames.shape[2:])
    err_model = frame_mse(pred, real.astype(np.float32) / 255)
    err_hold = frame_mse(np.broadcast_to(frames[:, last:last + 1], real.shape).astype(np.float32) / 255, real.astype(np.float32) / 255)

    def vpt_block(errors: np.ndarray) -> dict[str, Any]:
        a = valid_prediction_time(errors[:, [col[t] for t in agent_times]], epsilon)
        p = valid_prediction_time(errors[:, [col[t] for t in phys_times]], epsilon)
        return {
            "vpt_agent_median": float(np.median(a)), "vpt_agent_mean": float(a.mean()), "vpt_agent": a.tolist(),
            "vpt_physics_median": float(np.median(p)), "vpt_physics_mean": float(p.mean()), "vpt_physics": p.tolist(),
            # in seconds too: steps of different systems (and the two intervals) are not alike
            "vpt_agent_s_median": float(np.median(a)) * spec.agent_dt, "vpt_agent_s_mean": float(a.mean()) * spec.agent_dt,
            "vpt_physics_s_median": float(np.median(p)) * spec.physics_dt,
            "saturated": float((a == agent_steps).mean()),  # the share of sequences valid over the whole horizon
        }

    result: dict[str, Any] = {
        "system": spec.name,
        "dynamics": model.config.dynamics.kind,
        "data": ", ".join(x["data"] for x in sets), "split": ", ".join(x["split"] for x in sets),
        "sequences": int(s_count), "sets": sets,
        "start_frames": start_frames, "frame_interval_s": spec.physics_dt,
        "agent_steps": agent_steps, "agent_interval_s": spec.agent_dt, "physics_frames": physics_frames,
        "horizon_s": agent_steps * spec.agent_dt, "horizon_capped_by_data": horizon_capped,
        "epsilon": epsilon,
        "model": vpt_block(err_model),
        "start_fit_residual_median": residual,
        "keypoint_drift_median": {str(i + 1): float(drift[:, i].median()) for i in range(agent_steps)},
        "hold_frame": vpt_block(err_hold),
    }
    if model.ensemble is not None:  # does the members' disagreement say where these predictions fail?
        members_q = ensemble_predictions(model, qs_fit[:, -1], vs_fit[:, -1], act[:, last:], agent_times)
        result["calibration"] = calibration(model, members_q, kp_future, np.asarray(result["model"]["vpt_agent"]))
    if references:
        qpos, qvel = d["qpos"][:s_count, last], d["qvel"][:s_count, last]
        sim = true_simulator_frames(spec, qpos, qvel, actions[:, last:], times, noise, np.random.default_rng(seed))
        result["true_simulator_noisy"] = vpt_block(frame_mse(sim.astype(np.float32) / 255, real.astype(np.float32) / 255))
        result["true_simulator_noise"] = {"qpos_std": noise[0], "qvel_std": noise[1]}

    # per set (its regime) and per explorer, in seconds: a median over all hides a regime
    def medians(mask: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"sequences": int(mask.sum())}
        for name in ("model", "hold_frame", "true_simulator_noisy"):
            if name in result and mask.any():
                out[f"{name}_vpt_s_median"] = float(np.median(np.asarray(result[name]["vpt_agent"])[mask])) * spec.agent_dt
        return out

    for i, record in enumerate(sets):
        record.update(medians(d["set"] == i))
    result["by_explorer"] = {str(k): medians(d["explorers"] == k) for k in np.unique(d["explorers"])}

    # keypoints against the true state, and reconstruction, on every 5th frame
    sub = frames[:, ::5].reshape(-1, *frames.shape[2:])
    kp_sub = _encode(model, sub)
    result["keypoints"] = keypoint_state_metrics(kp_sub, d["qpos"][:s_count, ::5].reshape(len(sub), -1), spec)
    recon = render_states(model, torch.from_numpy(kp_sub))
    result["reconstruction_mse"] = float(frame_mse(recon, sub.astype(np.float32) / 255).mean())

    # reward head on the fitted window states (reward t belongs to arriving at state t + 1)
    with torch.no_grad():
        r_pred = model.reward(qs_fit[:, 1:], vs_fit[:, 1:], act[:, :last]).numpy()
    r_true = rewards[:, :last]
    result["reward_rmse"] = float(np.sqrt(((r_pred - r_true) ** 2).mean()))
    result["reward_std"] = float(r_true.std())
    result["reward_sequences"] = reward_errors(model, frames, actions, rewards, spec.frames(WINDOWS.smoothing),
                                               WINDOWS.tracking)

    # long open-loop rollout under random actions: does the state stay on the constraints?
    gen = torch.Generator().manual_seed(seed)
    q, v = qs_fit[:, -1], vs_fit[:, -1]
    worst, finite = 0.0, True
    with torch.no_grad():
        for _ in range(long_rollout):
            u = torch.rand(s_count, actions.shape[-1], generator=gen) * 2 - 1
            q, v = model.step(q, v, u)
            finite = finite and bool(torch.isfinite(q).all() and torch.isfinite(v).all())
            worst = max(worst, float(model.constraints.phi(q).abs().max()))
    result["long_rollout"] = {"steps": long_rollout, "max_abs_constraint_violation": worst, "finite": finite}

    # what the held-out sequences contain (so a VPT can be read against it)
    if "hinge_1" in spec.qpos_names:
        angle = d["qpos"][:s_count, last:last + horizon + 1, spec.qpos_names.index("hinge_1")]
        result["sequences_reaching_upright"] = int((np.cos(angle) > np.cos(0.3)).any(1).sum())
    result["explorers"] = {str(k): int(v) for k, v in zip(*np.unique(d["explorers"][:s_count], return_counts=True))}
    result["checkpoint"] = {"data": ckpt.get("data"), "weights_sha256": ckpt.get("weights_sha256"),
                            "training": {k: v for k, v in ckpt.get("training", {}).items() if k != "config"}}
    result["wall_time_s"] = round(time.monotonic() - t_start, 1)
    return result


def load_and_evaluate(checkpoint: str, data: str | Sequence[str], **kwargs) -> dict[str, Any]:
    """`evaluate_model` of a checkpoint folder (or bundled system name)."""
    return evaluate_model(load_model(checkpoint), data, **kwargs)
