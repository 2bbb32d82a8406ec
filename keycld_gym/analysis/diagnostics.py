"""Where a model and its agents lose, measured against the true simulator, for every system.

    keycld-gym diagnose --checkpoint pendulum --data runs/pendulum/data/task-eval [MORE_SETS] [--agent bundled]

The true keypoints (`sim/keypoint_truth.py`: the bodies each keypoint stands for, in the
plane the camera sees) are mapped into the model's keypoint space by one affine map, fitted
by least squares on held-out frames. Then:

- `keypoints`: the encoder's error against that map, in pixels (RMS and 99th percentile):
  how precisely the keypoints carry the state; split into its bias, the part a smooth
  (cubic) function of the true points explains (a keypoint that leans toward the pole
  as it swings), and the rest, noise. `tracked`: the same against the point each keypoint
  follows on its body (a pole keypoint short of the tip is no error; `tracked_point_error`).
- `subpixel`: the encoder's response to the whole system moved sideways in steps of a
  tenth of a pixel (its root body shifted in the simulator, then rendered): the slope of
  the encoded keypoints against the true shift (1: unbiased) and the jitter, the RMS
  deviation from a straight line per state, in pixels. An encoder that snaps to pixel
  centres shows a staircase: jitter near 0.29 px (a uniform error over a pixel).
- `response`: the model's accelerations against the true ones at random states, split into
  the passive part (gravity, damping, the constraints; action 0) and the actuator's part
  (action 1 minus action 0), as relative errors, and the push's gain per keypoint.
  `response_near_goal`: the same at the states where the task pays most (a balanced pole),
  where the agents spend their time.
- `true_physics`: the model's encoder, renderer and start-state estimation with the true
  system's constants in place of the learned ones (the structured form solved by least
  squares on exact samples of the true system, mapped into keypoint space), scored by the
  held-out VPT over the prediction horizon: about the best any learned dynamics can do
  behind this encoder.
- `prediction_budget` (`analysis/prediction_budget.py`): what ends the predictions over the
  prediction horizon, on every held-out set given: the VPT with the true start state, the
  true constants, both, and the true states drawn by the renderer, beside the model's and
  the held frame's; and the free swing's period and decay the constants imply.
- `oracle_agent`: an agent's real return when its observations are the true keypoints
  (mapped, no rendering; `envs/true_keypoints.py`) instead of the estimate from rendered
  frames: the gap to its real return is what the state estimate costs. For an agent
  trained on the true state (`train-agent --world true`) it is the reference return of
  the RL alone.
- `causal`: the real env's online state estimate (the agent's recipe's estimator, else the
  system's bundled keypoint agent's; `Tracking` or `Filtering`) run frame by frame through
  the held-out sequences as the real env runs it, read once per agent step, against the
  true state mapped into keypoint space: position and velocity RMS error per coordinate
  (image units, and per second), and its cost per agent step (one sequence, one thread).
- `agent_estimate` (`estimate_episodes` > 0, with an agent): the same estimate along the
  agent's own episodes in the real task (rendered, one process), at every step it acts on,
  overall and near the goal (where the task pays at least `GOAL_REWARD` per step): the
  errors that matter to the agent, on the states it visits.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from keycld_gym.agents import bundled_recipe
from keycld_gym.analysis.prediction_budget import prediction_budget
from keycld_gym.data.dataset import iter_sequences
from keycld_gym.envs.real_keypoints import RealKeypointEnv
from keycld_gym.envs.true_keypoints import TrueKeypointEnv
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.model.physics_fit import apply_physics, solve_physics
from keycld_gym.model.tracking import Estimator, Filtering, Tracking, estimator_to_dict
from keycld_gym.rl.agent import Agent
from keycld_gym.rl.agent_evaluation import episode_returns
from keycld_gym.sim.keypoint_truth import (
    KeypointMap,
    exact_samples,
    fit_keypoint_map,
    random_state,
    true_motion,
    true_points,
)
from keycld_gym.sim.real_env import RealEnv
from keycld_gym.sim.systems import WINDOWS


class KeypointSamples(NamedTuple):
    """Encoded keypoints and true points `(N, K, 2)` on sampled held-out frames, their qpos `(N, nq)`, every frame's qpos `(M, nq)`."""

    keypoints: np.ndarray
    points: np.ndarray
    qpos: np.ndarray
    all_qpos: np.ndarray


def true_keypoint_samples(model: KeyCLDModel, data: str | Path, every: int = 5) -> KeypointSamples:
    """The encoder against the true bodies on every `every`-th frame of `data` (one read of the data)."""
    spec = model.spec
    env = RealEnv(spec, "state", action_repeat=1)
    kps, points, sampled, states = [], [], [], []
    for seq in iter_sequences(data, spec.name):
        states.append(seq["qpos"].reshape(-1, len(spec.qpos_names)))
        frames, qpos = seq["frames"][::every], seq["qpos"][::every]
        kps.append(model.encode_frames(frames).numpy())
        sampled.append(qpos)
        for q in qpos:
            env.physics.data.qpos[:] = q
            env.physics.forward()
            points.append(true_points(env.physics, spec))
    env.close()
    return KeypointSamples(np.concatenate(kps), np.array(points), np.concatenate(sampled), np.concatenate(states))


def keypoint_map_for(model: KeyCLDModel, data: str | Path, every: int = 5) -> KeypointMap:
    """The map from true points into `model`'s keypoint space (`tracked_keypoint_map`), fitted on held-out `data` (every `every`-th frame)."""
    samples = true_keypoint_samples(model, data, every=every)
    return tracked_keypoint_map(model, samples.keypoints, samples.points)


def pixel_errors(model: KeyCLDModel, keypoints: np.ndarray, points: np.ndarray, kmap: KeypointMap) -> np.ndarray:
    """Encoded keypoints minus the mapped true points, in pixels `(N, K, 2)`."""
    # image units span [-1, 1] over the frame's height (docs/method/keypoints.md, "State"): px = units * H / 2
    return (keypoints - kmap.points(points)) * (model.spec.camera.height / 2)


def keypoint_error(model: KeyCLDModel, keypoints: np.ndarray, points: np.ndarray, kmap: KeypointMap) -> dict[str, Any]:
    """The encoder's error against the mapped true points: pixels (RMS, 99th percentile, bias and noise), per keypoint and overall."""
    diff = pixel_errors(model, keypoints, points, kmap)
    err = np.linalg.norm(diff, axis=-1)  # (N, K)
    noise = np.linalg.norm(diff - state_bias(diff, kmap.moved(points)), axis=-1)
    return {
        "rms_px": float(np.sqrt((err**2).mean())), "p99_px": float(np.percentile(err, 99)),
        "per_keypoint_rms_px": np.sqrt((err**2).mean(0)).round(4).tolist(),
        "noise_rms_px": float(np.sqrt((noise**2).mean())),
        "per_keypoint_noise_rms_px": np.sqrt((noise**2).mean(0)).round(4).tolist(),
        "frames": len(err), "map_scale_units_per_m": kmap.scale,
    }


# where along a moving link a keypoint may sit: half the link to a fifth beyond its end, in 0.5% steps
LINK_FRACTIONS = tuple(np.round(np.arange(0.5, 1.2001, 0.005), 3))


def tracked_keypoint_map(model: KeyCLDModel, keypoints: np.ndarray, points: np.ndarray,
                         fractions: tuple[float, ...] = LINK_FRACTIONS, sweeps: int = 2) -> KeypointMap:
    """The affine map from true points to keypoints `(N, K, 2)` with the point each keypoint tracks on its body.

    A keypoint learned without labels follows some fixed point of its body, not always the
    one the spec names: the cartpole's pole keypoint may sit at 93% of the pole instead of
    its tip. For a link from a fixed pivot the one affine map absorbs that (a scale about
    the pivot); for a link whose start moves (`fixed_distance`: the pole from the cart) it
    cannot, so the point's place along each such link (`KeypointMap.along`) is fitted with
    the map (a grid of fractions, `sweeps` rounds of coordinate descent).
    """
    links = [(c.a, c.b) for c in model.spec.constraints if c.kind == "fixed_distance"]
    chosen = [1.0] * len(links)

    def fitted(fs: list[float]) -> KeypointMap:
        return fit_keypoint_map(keypoints, points, tuple((a, b, f) for (a, b), f in zip(links, fs)))

    def squared_error(fs: list[float]) -> float:  # the search's score: no bias split, as keypoint_error makes
        return float((pixel_errors(model, keypoints, points, fitted(fs)) ** 2).sum())

    for _ in range(sweeps if links else 0):
        for i in range(len(links)):
            chosen[i] = float(min(fractions, key=lambda f: squared_error([*chosen[:i], f, *chosen[i + 1:]])))
    return fitted(chosen)


def tracked_point_error(model: KeyCLDModel, keypoints: np.ndarray, points: np.ndarray, kmap: KeypointMap) -> dict[str, Any]:
    """The keypoint error against the point each keypoint tracks on its body (`tracked_keypoint_map`), in pixels.

    `placement_floor_rms_px`: the error against the spec's points (one affine map, as
    `keypoint_error`) of a perfect encoder of the tracked points: the part of that error
    that is the choice of point, which no precision removes (cartpole, a pole keypoint at
    93% of the pole: 0.46 px).
    """
    error = keypoint_error(model, keypoints, points, kmap)
    perfect = kmap.points(points)
    floor = pixel_errors(model, perfect, points, fit_keypoint_map(perfect, points))
    return {"rms_px": error["rms_px"], "p99_px": error["p99_px"], "per_keypoint_rms_px": error["per_keypoint_rms_px"],
            "link_fractions": {f"{a}-{b}": round(f, 3) for a, b, f in kmap.along},
            "placement_floor_rms_px": float(np.sqrt((np.linalg.norm(floor, axis=-1) ** 2).mean()))}


def state_bias(errors: np.ndarray, points: np.ndarray, degree: int = 3) -> np.ndarray:
    """The part of errors `(N, K, 2)` that a polynomial of the true points `(N, K, 2)` explains (least squares)."""
    p = points.reshape(len(points), -1)
    std = p.std(0)
    p = (p - p.mean(0)) / np.where(std > 1e-9, std, 1.0)  # a point fixed in one coordinate (a rail) gives a zero column
    columns = [np.ones(len(p))]
    for d in range(1, degree + 1):
        columns += [np.prod(p[:, list(c)], 1) for c in itertools.combinations_with_replacement(range(p.shape[1]), d)]
    features = np.stack(columns, 1)
    flat = errors.reshape(len(errors), -1)
    coef, *_ = np.linalg.lstsq(features, flat, rcond=None)
    return (features @ coef).reshape(errors.shape)


def subpixel_response(model: KeyCLDModel, held_out_qpos: np.ndarray, kmap: KeypointMap, states: int = 24,
                      steps: int = 11, seed: int = 0) -> dict[str, Any]:
    """The encoder against sideways shifts of 0 to 1 px in `steps` steps, at `states` of the held-out true states `(M, nq)` (module docstring)."""
    spec = model.spec
    pick = np.random.default_rng(seed).choice(len(held_out_qpos), min(states, len(held_out_qpos)), replace=False)
    qpos = held_out_qpos[pick]
    px = spec.camera.height / 2  # image units to pixels
    direction = kmap.a[:, 0] / np.linalg.norm(kmap.a[:, 0])  # world x in the image
    metres_per_px = 1.0 / (px * float(np.linalg.norm(kmap.a[:, 0])))
    fractions = np.linspace(0.0, 1.0, steps)  # of a pixel
    shifts = fractions * metres_per_px
    env = RealEnv(spec, "state", action_repeat=1)
    physics = env.physics
    root = next(i for i in range(1, physics.model.nbody) if physics.model.body_parentid[i] == 0)
    origin = physics.model.body_pos[root].copy()
    frames = []
    for q in qpos:
        physics.data.qpos[:] = q
        for dx in shifts:
            physics.model.body_pos[root] = origin + np.array([dx, 0.0, 0.0])
            physics.forward()
            frames.append(env.camera.render())
    physics.model.body_pos[root] = origin
    env.close()
    # positions along the image direction of world x, in pixels; the true shift runs 0 to 1 px
    x = model.encode_frames(np.stack(frames)).numpy().reshape(len(qpos), steps, -1, 2) @ direction * px
    t = fractions[None, :, None]
    slope = ((t - t.mean()) * (x - x.mean(1, keepdims=True))).sum(1) / ((t - t.mean()) ** 2).sum()  # (states, K)
    line = x.mean(1, keepdims=True) + slope[:, None] * (t - t.mean())
    jitter = x - line
    return {"states": len(qpos), "steps": steps, "shift_px": 1.0,
            "slope_mean": float(slope.mean()), "slope_per_keypoint": slope.mean(0).round(4).tolist(),
            "jitter_rms_px": float(np.sqrt((jitter**2).mean())),
            "jitter_per_keypoint_rms_px": np.sqrt((jitter**2).mean((0, 1))).round(4).tolist(),
            "jitter_p99_px": float(np.percentile(np.abs(jitter), 99))}


def goal_states(env: RealEnv, n: int, seed: int = 0, draws: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """The n of `draws` x n random states (`random_state`) where the task pays most: qpos `(n, nq)`, qvel `(n, nv)`.

    Where an agent spends its time once it has learned (a balanced pole), and where the
    response over the whole state box, mostly swinging states, says little. 25 draws per
    state: the cartpole's pole then has a median cos 0.94, the pendulum's sparse reward (1
    within about 8 degrees) is 1 at all of them.
    """
    rng = np.random.default_rng(seed)
    physics, task = env.physics, env.task
    states, rewards = [], []
    for _ in range(n * draws):
        qpos, qvel = random_state(rng, env.system)
        with physics.reset_context():
            physics.data.qpos[:], physics.data.qvel[:] = qpos, qvel
        physics.data.ctrl[:] = 0.0
        states.append((qpos, qvel))
        rewards.append(float(task.get_reward(physics)))
    best = np.argsort(rewards)[::-1][:n]
    return np.array([states[i][0] for i in best]), np.array([states[i][1] for i in best])


def true_response(model: KeyCLDModel, kmap: KeypointMap, n: int = 200, seed: int = 0, near_goal: bool = False) -> dict[str, Any]:
    """The model's accelerations against the true ones at random states: relative errors of the passive and actuator parts.

    `near_goal`: at the `goal_states` instead of anywhere in the state box. The actuator's
    gain per keypoint (1: the push moves it as in the real system) shows a coupling error
    that the passive part hides: a model whose push tilts the balanced pole too little trains
    agents that push too hard.
    """
    spec = model.spec
    env = RealEnv(spec, "state", action_repeat=1)
    states = goal_states(env, n, seed) if near_goal else None
    s = exact_samples(env.physics, spec, n, seed, actions=(0.0, 1.0), states=states)
    env.close()
    q, qd = (torch.tensor(kmap.points(s["q"]) if k == "q" else kmap.vectors(s[k]), dtype=torch.float32) for k in ("q", "qd"))
    true = kmap.vectors(s["qdd"])  # (n, 2, K, 2)
    q, qd = model.project(q, qd, iterations=20)
    with torch.no_grad():
        acc = [model.dynamics.acceleration(q, qd, torch.full((n, 1), u)).numpy() for u in (0.0, 1.0)]
    passive, push = acc[0], acc[1] - acc[0]
    true_passive, true_push = true[:, 0], true[:, 1] - true[:, 0]

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    gain_per_keypoint = (push * true_push).sum((0, 2)) / (true_push**2).sum((0, 2))
    return {"samples": n, "states": "near the goal" if near_goal else "random",
            "passive_relative_error": rel(passive, true_passive),
            "actuator_relative_error": rel(push, true_push),
            "actuator_gain_ratio": float((push * true_push).sum() / (true_push**2).sum()),
            "actuator_gain_per_keypoint": gain_per_keypoint.round(4).tolist()}


def true_physics_model(model: KeyCLDModel, kmap: KeypointMap, n: int = 400, seed: int = 0) -> tuple[KeyCLDModel, dict]:
    """A copy of `model` with the true system's constants in its structured dynamics; and the fit's record."""
    if not model.config.dynamics.structured or model.config.dynamics.potential_mlp:
        raise ValueError("true physics needs a model with the structured dynamics (a linear potential, no potential MLP, "
                         "a constant or spec input matrix): train it with the system's recipe")
    spec = model.spec
    env = RealEnv(spec, "state", action_repeat=1)
    s = exact_samples(env.physics, spec, n, seed)
    env.close()
    truth = copy.deepcopy(model)
    dyn = truth.dynamics.double()
    fit = solve_physics(dyn, *(torch.tensor(x, dtype=torch.float64) for x in
                               (kmap.points(s["q"]), kmap.vectors(s["qd"]), kmap.vectors(s["qdd"][:, 0]), s["u"][:, 0])))
    apply_physics(dyn, fit)
    truth.dynamics = dyn.float()
    return truth, {"samples": fit.samples, "relative_residual": fit.relative_residual}


def oracle_agent_returns(agent: Agent, kmap: KeypointMap, episodes: int = 10, seed: int = 100_000) -> dict[str, Any]:
    """Real returns of an agent whose observations are the true keypoints (mapped) instead of an estimate from frames.

    All episodes run side by side in one process (nothing is rendered), so the agent acts on
    one batch: a planner plans for all of them at once.
    """
    system = agent.recipe.system
    venv = DummyVecEnv([lambda: TrueKeypointEnv(system, kmap)] * episodes)
    returns = episode_returns(agent.act, venv, episodes, seed)
    venv.close()
    return {"episodes": episodes, "seed": seed, "real_returns": returns,
            "real_return_mean": float(np.mean(returns)), "real_return_std": float(np.std(returns))}


# per physics step (the task pays at most 1): a balanced, calm cartpole pole; the pendulum's bob at the top
GOAL_REWARD = 0.8


def real_estimator(model: KeyCLDModel, agent: Agent | None = None) -> Estimator:
    """The estimator the real env meets `model`'s agents with: `agent`'s recipe's, else the system's bundled keypoint agent's (a window fit if none ships)."""
    recipe = agent.recipe if agent is not None else bundled_recipe(model.spec.name, "keypoints")
    return Tracking() if recipe is None else recipe.real_estimator


def ready_estimator(estimator: Estimator, model: KeyCLDModel, frame_std: np.ndarray) -> tuple[Estimator, str]:
    """`estimator` with nothing left to read, and where a filter's measurement noise came from.

    A filter's `measurement_std=None` is the model's measured frame error (its
    observation_noise.json, `keycld-gym observation-noise`); a model without one gets
    `frame_std` `(2K,)`, the encoder's error against the mapped true points.
    """
    if not isinstance(estimator, Filtering) or estimator.measurement_std is not None:
        return estimator, "given"
    try:
        return estimator.resolved(model), "observation_noise.json"
    except ValueError:  # a CheckpointError (no observation_noise.json), or a model not loaded from a folder
        return dataclasses.replace(estimator, measurement_std=tuple(float(x) for x in frame_std)), "the true points"


class HeldOut(NamedTuple):
    """Held-out sequences of one length: keypoints `(B, T, K, 2)`, actions `(B, T - 1, A)`, true qpos `(B, T, nq)`, qvel `(B, T, nv)`."""

    keypoints: torch.Tensor
    actions: torch.Tensor
    qpos: np.ndarray
    qvel: np.ndarray


def held_out_sequences(model: KeyCLDModel, data: str | Path) -> list[HeldOut]:
    """Every sequence of `data`, its frames encoded, grouped by length (a group runs as one batch)."""
    seqs = [(model.encode_frames(s["frames"]), s["actions"], s["qpos"], s["qvel"])
            for s in iter_sequences(data, model.spec.name)]
    groups = [[s for s in seqs if len(s[0]) == n] for n in sorted({len(s[0]) for s in seqs})]
    return [HeldOut(torch.stack([s[0] for s in g]), torch.from_numpy(np.stack([s[1] for s in g]).astype(np.float32)),
                    np.stack([s[2] for s in g]), np.stack([s[3] for s in g])) for g in groups]


def online_reads(model: KeyCLDModel, estimator: Estimator, keypoints: torch.Tensor,
                 actions: torch.Tensor) -> list[tuple[int, np.ndarray]]:
    """Frame t and the estimate `(B, 4K)` there at each agent step, keypoints `(B, T, K, 2)` added frame by frame as the real env adds them."""
    online, reads, repeat = estimator.start(model), [], model.spec.action_repeat
    for t in range(keypoints.shape[1]):
        online.add(keypoints[:, t], None if t == 0 else actions[:, t - 1])
        if t and t % repeat == 0:  # the real env's first read follows a whole agent step
            q, v = online.estimate()
            reads.append((t, torch.cat([q.flatten(1), v.flatten(1)], 1).numpy()))
    return reads


def true_observation(physics: Any, model: KeyCLDModel, kmap: KeypointMap, qpos: np.ndarray,
                     qvel: np.ndarray) -> np.ndarray:
    """The true state `(nq,)`, `(nv,)` as a keypoint observation `(4K,)`: mapped positions, then velocities (sets `physics` to it)."""
    physics.data.qpos[:], physics.data.qvel[:] = qpos, qvel
    p, v = true_motion(physics, model.spec)
    return np.concatenate([kmap.points(p).ravel(), kmap.vectors(v).ravel()])


def causal_errors(model: KeyCLDModel, estimator: Estimator, kmap: KeypointMap, sequences: list[HeldOut],
                  burn_in: int) -> np.ndarray:
    """Online estimate minus the true state `(N, 4K)` at every agent step from frame `burn_in` on."""
    env = RealEnv(model.spec, "state", action_repeat=1)
    errors = []
    for s in sequences:
        for t, estimate in online_reads(model, estimator, s.keypoints, s.actions):
            if t >= burn_in:
                truth = [true_observation(env.physics, model, kmap, q, v) for q, v in zip(s.qpos[:, t], s.qvel[:, t])]
                errors.append(estimate - np.array(truth))
    env.close()
    if not errors:
        raise ValueError(f"no held-out sequence reaches an agent step after the burn-in ({burn_in} frames)")
    return np.concatenate(errors)


def estimator_cost_ms(model: KeyCLDModel, estimator: Estimator, sequences: HeldOut) -> float:
    """Milliseconds per agent step of `estimator` on the first of `sequences` alone, on one thread (as one real env runs it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        reads = online_reads(model, estimator, sequences.keypoints[:1], sequences.actions[:1])
        return (time.perf_counter() - start) / max(len(reads), 1) * 1e3
    finally:
        torch.set_num_threads(threads)


def error_summary(errors: np.ndarray, px: float) -> dict[str, Any]:
    """Estimate errors `(N, 4K)` (positions, then velocities): RMS overall and per coordinate `(2K,)`, velocity means; `px` pixels per image unit."""
    if not len(errors):
        return {"samples": 0}
    h = errors.shape[1] // 2
    pos, vel = errors[:, :h], errors[:, h:]

    def rms(x: np.ndarray, axis: int | None = None) -> Any:
        return np.sqrt((x**2).mean(axis))

    return {"samples": len(errors), "position_rms": float(rms(pos)), "position_rms_px": float(rms(pos) * px),
            "velocity_rms": float(rms(vel)),
            "position_rms_per_coordinate": rms(pos, 0).round(5).tolist(),
            "velocity_rms_per_coordinate": rms(vel, 0).round(5).tolist(),
            "velocity_mean_per_coordinate": vel.mean(0).round(5).tolist()}


def causal_estimate(model: KeyCLDModel, kmap: KeypointMap, data: str | Path, estimator: Estimator,
                    burn_in: int | None = None) -> dict[str, Any]:
    """`causal` of the module docstring on held-out `data`; `estimator` ready to run (`ready_estimator`), `burn_in` frames unscored (default 0.32 s)."""
    burn_in = model.spec.frames(WINDOWS.evaluation_start) if burn_in is None else burn_in
    sequences = held_out_sequences(model, data)
    errors = causal_errors(model, estimator, kmap, sequences, burn_in)
    longest = max(sequences, key=lambda s: s.keypoints.shape[1])
    return {"estimator": estimator_to_dict(estimator), "sequences": sum(len(s.keypoints) for s in sequences),
            "burn_in": burn_in, "every": model.spec.action_repeat,
            **error_summary(errors, model.spec.camera.height / 2),
            "ms_per_agent_step": estimator_cost_ms(model, estimator, longest)}


def agent_estimate_errors(agent: Agent, model: KeyCLDModel, kmap: KeypointMap, estimator: Estimator, episodes: int = 1,
                          seed: int = 100_000, max_steps: int | None = None) -> dict[str, Any]:
    """`agent_estimate` of the module docstring: the estimate's error along `agent`'s real episodes (one process; `max_steps` cuts them)."""
    env = RealKeypointEnv(model.spec.name, model, tracking=estimator)
    physics = env.env.physics
    errors, near, returns = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done, steps = 0.0, False, 0
        while not done and (max_steps is None or steps < max_steps):
            errors.append(obs - true_observation(physics, model, kmap, physics.data.qpos.copy(), physics.data.qvel.copy()))
            near.append(float(env.env.task.get_reward(physics)) >= GOAL_REWARD)
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs[None])[0])
            total, done, steps = total + reward, terminated or truncated, steps + 1
        returns.append(total)
    env.close()
    errors, near, px = np.array(errors), np.array(near), model.spec.camera.height / 2
    return {"episodes": episodes, "seed": seed, "max_steps": max_steps, "estimator": estimator_to_dict(estimator),
            "goal_reward": GOAL_REWARD, "near_goal_share": float(near.mean()),
            "all": error_summary(errors, px), "near_goal": error_summary(errors[near], px),
            "away_from_goal": error_summary(errors[~near], px),
            "real_returns": returns, "real_return_mean": float(np.mean(returns))}


def diagnose(model: KeyCLDModel, data: str | Path | Sequence[str | Path], *, agent: Agent | None = None,
             episodes: int = 10, seed: int = 100_000, true_physics: bool = True, estimator: Estimator | None = None,
             estimate_episodes: int = 0) -> dict[str, Any]:
    """Every diagnostic of the module docstring for `model` on held-out `data` (and `agent`, if given).

    `data`: one held-out set or several; the keypoint map and the online estimate use the
    first, the prediction budget all of them. `estimator`: the online estimate `causal`
    scores (default `real_estimator`); `estimate_episodes`: the agent's real episodes
    `agent_estimate` runs (0: none).
    """
    if estimate_episodes and agent is None:
        raise ValueError("estimate_episodes runs an agent in the real task: give the agent")
    sets = [data] if isinstance(data, (str, Path)) else list(data)
    data = sets[0]
    keypoints, points, _, held_out_qpos = true_keypoint_samples(model, data)
    named = fit_keypoint_map(keypoints, points)
    # what follows compares with the points the keypoints follow: against the named tip, true
    # constants solved for the cartpole's pole keypoint (at 93% of the pole) were wrong ones
    kmap = tracked_keypoint_map(model, keypoints, points)
    result: dict[str, Any] = {
        "system": model.spec.name, "data": ", ".join(map(str, sets)),
        "keypoint_map": kmap.to_dict(),
        "keypoints": {**keypoint_error(model, keypoints, points, named),
                      "tracked": tracked_point_error(model, keypoints, points, kmap)},
        "subpixel": subpixel_response(model, held_out_qpos, kmap),
        "response": true_response(model, kmap),
        "response_near_goal": true_response(model, kmap, near_goal=True),
    }
    frame_std = (keypoints - kmap.points(points)).reshape(len(keypoints), -1).std(0)
    ready, source = ready_estimator(estimator or real_estimator(model, agent), model, frame_std)
    result["causal"] = {**causal_estimate(model, kmap, data, ready), "measurement_std_from": source}
    if true_physics and model.config.dynamics.structured and not model.config.dynamics.potential_mlp:
        truth, fit = true_physics_model(model, kmap)
        budget = prediction_budget(model, truth, kmap, sets)
        steps = np.asarray(budget["true_constants"]["vpt_agent"])
        result["true_physics"] = {"vpt_agent_median": float(np.median(steps)), "vpt_agent_mean": float(steps.mean()),
                                  "vpt_s_median": budget["true_constants"]["vpt_s_median"], "agent_steps": budget["agent_steps"],
                                  "fit": fit, "sequences": budget["sequences"]}
        result["prediction_budget"] = budget
    if agent is not None:
        result["oracle_agent"] = oracle_agent_returns(agent, kmap, episodes, seed)
    if agent is not None and estimate_episodes:
        result["agent_estimate"] = agent_estimate_errors(agent, model, kmap, ready, estimate_episodes, seed)
    return result
