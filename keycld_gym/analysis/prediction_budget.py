"""What ends a model's open-loop predictions: the VPT with one part at a time replaced by the truth.

    keycld-gym diagnose --checkpoint pendulum --data runs/pendulum/data/task-eval runs/pendulum/data/states-eval

Over the system's prediction horizon (`SystemSpec.prediction_horizon_s`), on the held-out
sequences of one or more sets, each prediction is scored as `evaluate_model` scores it (VPT
at the agent interval, in seconds, against the same epsilon), with the true system brought
into the model's keypoint space by the diagnostics' keypoint map:

- `model`: the model as it is: the start state fitted on the start window, the learned
  constants, its renderer.
- `true_start`: the learned constants from the true state at the last start frame (mapped,
  projected onto the model's constraints): what the start-state estimate costs.
- `true_constants`: the true constants (`true_physics_model`: the structured form solved on
  exact samples of the true system) from the fitted start: what the constants cost.
- `true_start_and_constants`: both; what is left is the renderer, the map and the integrator.
- `rendered_truth`: the true state at every step (mapped) drawn by the model's renderer: the
  renderer and the map alone, the ceiling of anything that predicts through them.
- `hold_frame`: the floor, the last start frame held.

`cost_s` says what each part costs in seconds of median VPT: the start and the constants
what the truth in their place gains, the renderer what it loses on the true states; the
largest is `largest_cause`. `free_oscillation`
adds what the constants imply on their own: released from rest near the hanging state with
no action, the swing of the last keypoint in the true system, the model and the model with
the true constants, as a period and an amplitude ratio per period.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keycld_gym.analysis.evaluation import (
    frame_mse,
    held_out_sets,
    horizon_steps,
    mse_epsilon,
    open_loop,
    predict_open_loop,
    render_states,
    valid_prediction_time,
)
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.keypoint_truth import KeypointMap, true_motion
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import WINDOWS

PARTS = ("model", "true_start", "true_constants", "true_start_and_constants", "rendered_truth", "hold_frame")
# sequences rendered and compared at a time: bounds the memory of long horizons (frames as floats)
_CHUNK = 8


def mapped_true_states(model: KeyCLDModel, kmap: KeypointMap, qpos: np.ndarray, qvel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """True states `(..., nq)`, `(..., nv)` as keypoints and velocities `(..., K, 2)` each, in the model's space."""
    env = RealEnv(model.spec, "state", action_repeat=1)
    flat_q, flat_v = qpos.reshape(-1, qpos.shape[-1]), qvel.reshape(-1, qvel.shape[-1])
    points, velocities = [], []
    for q, v in zip(flat_q, flat_v):
        env.physics.data.qpos[:], env.physics.data.qvel[:] = q, v
        p, dp = true_motion(env.physics, model.spec)
        points.append(kmap.points(p))
        velocities.append(kmap.vectors(dp))
    env.close()
    shape = (*qpos.shape[:-1], model.spec.num_keypoints, 2)
    return (torch.tensor(np.array(points), dtype=torch.float32).reshape(shape),
            torch.tensor(np.array(velocities), dtype=torch.float32).reshape(shape))


def _vpt_steps(model: KeyCLDModel, predicted: torch.Tensor | None, real: np.ndarray, held: np.ndarray,
               epsilon: float) -> np.ndarray:
    """VPT in agent steps `(S,)` against real frames uint8 `(S, N, H, W, 3)` of predicted keypoints `(S, N, K, 2)`
    drawn by the model, or (None) of the frames `held` uint8 `(S, H, W, 3)` held."""
    steps = []
    for i in range(0, len(real), _CHUNK):
        chunk = real[i:i + _CHUNK]
        if predicted is None:
            drawn = np.broadcast_to(held[i:i + _CHUNK, None], chunk.shape).astype(np.float32) / 255
        else:
            q = predicted[i:i + _CHUNK]
            drawn = render_states(model, q.flatten(0, 1)).reshape(chunk.shape)
        errors = frame_mse(drawn, chunk.astype(np.float32) / 255)
        steps.append(valid_prediction_time(np.nan_to_num(errors, nan=np.inf), epsilon))
    return np.concatenate(steps)


def prediction_budget(model: KeyCLDModel, truth: KeyCLDModel, kmap: KeypointMap, data: str | Path | Sequence[str | Path],
                      *, agent_steps: int | None = None, max_sequences: int | None = None) -> dict[str, Any]:
    """The VPT of each part of `PARTS` (module docstring); `truth`: the model with the true constants."""
    spec = model.spec
    d, sets = held_out_sets(model, data, max_sequences)
    frames, actions = d["frames"], torch.from_numpy(d["actions"].astype(np.float32))
    start = spec.frames(WINDOWS.evaluation_start)
    last, repeat = start - 1, spec.action_repeat
    allowed = (frames.shape[1] - start) // repeat
    steps = horizon_steps(spec, frames.shape[1], start)[0] if agent_steps is None else agent_steps
    if not 1 <= steps <= allowed:
        raise ValueError(f"sequences of {frames.shape[1]} frames allow 1 to {allowed} agent steps after the "
                         f"{start}-frame start window, not {steps}: collect with --frames {start + repeat * steps} or more")
    times = [repeat * (i + 1) for i in range(steps)]
    real = frames[:, [last + t for t in times]]
    epsilon = mse_epsilon(frames[:, ::10].reshape(-1, *frames.shape[2:]))
    ahead = actions[:, last:]

    # the model's own prediction as `evaluate_model` makes it: the start fitted on the window
    _, qs_fit, vs_fit, predicted = predict_open_loop(model, frames, d["actions"], start, max(times))
    fitted = (qs_fit[:, -1], vs_fit[:, -1])
    with torch.no_grad():
        true_start = model.project(*mapped_true_states(model, kmap, d["qpos"][:, last], d["qvel"][:, last]), iterations=20)
    along, _ = mapped_true_states(model, kmap, d["qpos"][:, [last + t for t in times]], d["qvel"][:, [last + t for t in times]])
    predictions = {
        "model": predicted[:, [t - 1 for t in times]],
        "true_start": open_loop(model, *true_start, ahead, times),
        "true_constants": open_loop(truth, *fitted, ahead, times),
        "true_start_and_constants": open_loop(truth, *true_start, ahead, times),
        "rendered_truth": along,
        "hold_frame": None,
    }
    result: dict[str, Any] = {"system": spec.name, "sets": sets, "sequences": int(len(frames)), "agent_steps": steps,
                              "agent_interval_s": spec.agent_dt, "horizon_s": steps * spec.agent_dt, "epsilon": epsilon,
                              "start_gap_px": float((fitted[0] - true_start[0]).norm(dim=-1).mean()) * spec.camera.height / 2}
    for part, predicted in predictions.items():
        vpt = _vpt_steps(model, predicted, real, frames[:, last], epsilon)
        result[part] = {"vpt_s_median": float(np.median(vpt)) * spec.agent_dt, "vpt_s_mean": float(vpt.mean()) * spec.agent_dt,
                        "saturated": float((vpt == steps).mean()), "vpt_agent": vpt.tolist(),
                        "by_set": [float(np.median(vpt[d["set"] == i])) * spec.agent_dt for i in range(len(sets))]}
    # seconds of median VPT each part costs: what the truth in its place gains (the start, the
    # constants), and what the renderer loses on the true states themselves
    result["cost_s"] = {"start": result["true_start"]["vpt_s_median"] - result["model"]["vpt_s_median"],
                        "constants": result["true_constants"]["vpt_s_median"] - result["model"]["vpt_s_median"],
                        "renderer": result["horizon_s"] - result["rendered_truth"]["vpt_s_median"]}
    result["largest_cause"] = max(result["cost_s"], key=result["cost_s"].get)
    result["free_oscillation"] = free_oscillation(model, truth, kmap)
    return result


def _hanging_state(env: RealEnv, spec: Any, offset: float) -> np.ndarray:
    """qpos near the hanging rest state: every hinge at 0 or pi, whichever puts the last keypoint lowest, the first one `offset` rad off."""
    hinges = [i for i, n in enumerate(spec.qpos_names) if "slider" not in n]
    best, lowest = None, np.inf
    for angles in np.array(np.meshgrid(*[[0.0, np.pi]] * len(hinges))).reshape(len(hinges), -1).T:
        qpos = np.zeros(len(spec.qpos_names))
        qpos[hinges] = angles
        env.physics.data.qpos[:], env.physics.data.qvel[:] = qpos, 0.0
        env.physics.forward()
        z = true_motion(env.physics, spec)[0][-1, 1]
        if z < lowest:
            best, lowest = qpos, z
    best = best.copy()
    best[hinges[0]] += offset
    return best


def swing(x: np.ndarray, rest: float, dt: float) -> dict[str, float | None]:
    """Period (s, mean between upward crossings of `rest`) and amplitude ratio per period of a swing `(T,)` about `rest`."""
    y = x - rest
    up = np.flatnonzero((y[:-1] < 0) & (y[1:] >= 0))
    if len(up) < 2:
        return {"period_s": None, "amplitude_ratio_per_period": None}
    # the crossing time by linear interpolation between the two samples around it
    t = (up + y[up] / (y[up] - y[up + 1])) * dt
    peaks = [np.abs(y[a:b]).max() for a, b in zip(up[:-1], up[1:])]
    ratio = float(np.exp(np.mean(np.diff(np.log(peaks))))) if len(peaks) > 1 else None
    return {"period_s": float(np.diff(t).mean()), "amplitude_ratio_per_period": ratio}


def free_oscillation(model: KeyCLDModel, truth: KeyCLDModel, kmap: KeypointMap, seconds: float = 10.0,
                     offset: float = 0.3) -> dict[str, Any]:
    """The swing of the last keypoint's x released from rest `offset` rad off hanging, no action: true system, model, true constants."""
    spec = model.spec
    env = RealEnv(spec, "state", action_repeat=1)
    env.reset(seed=0)  # an episode under way: a first step would reset it
    qpos, hanging = _hanging_state(env, spec, offset), _hanging_state(env, spec, 0.0)
    n = int(round(seconds / spec.physics_dt))
    env.set_state(qpos, np.zeros(len(spec.qpos_names)))
    zero = np.zeros(env.action_space.shape, np.float32)
    real = []
    for _ in range(n):
        env.step(zero)
        real.append(kmap.points(true_motion(env.physics, spec)[0])[-1, 0])
    env.close()
    q0, v0 = mapped_true_states(model, kmap, qpos[None], np.zeros((1, len(spec.qpos_names))))
    rest = float(mapped_true_states(model, kmap, hanging[None], np.zeros((1, len(spec.qpos_names))))[0][0, -1, 0])
    u = torch.zeros(1, n, model.action_dim)
    out: dict[str, Any] = {"seconds": seconds, "offset_rad": offset, "true": swing(np.array(real), rest, spec.physics_dt)}
    for name, m in (("model", model), ("true_constants", truth)):
        with torch.no_grad():
            q, v = m.project(q0, v0, iterations=20)
        x = open_loop(m, q, v, u, list(range(1, n + 1)))[0, :, -1, 0].numpy()
        out[name] = swing(x, rest, spec.physics_dt)
    true_period = out["true"]["period_s"]
    for name in ("model", "true_constants"):
        p = out[name]["period_s"]
        out[name]["period_error"] = None if p is None or true_period is None else p / true_period - 1
    return out
