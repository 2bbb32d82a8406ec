"""Where a cartpole model and its agents lose, measured against the true simulator.

Both checks map the true state into the model's keypoint space by an affine map fitted on
held-out frames (cart and pole keypoints are affine in x, sin(theta), cos(theta) for the
side camera).

`response`: the true simulator is put in a set of states and stepped once with action 0
and 1; its accelerations in keypoint space are set beside the model's from the same
states. Also the mass matrix on the constraint manifold against the true one (cart + a
uniform rod), as ratios (the Lagrangian's overall scale is free): total mass a, coupling b
and pole inertia c in T = a xdot^2/2 + b l cos(theta) xdot thetadot + c l^2 thetadot^2/2
(keypoint units).

`oracle-agent`: an agent's real return when its keypoint observations are the true state
mapped into keypoint space instead of the estimate from rendered frames (no rendering: 10
episodes in seconds); `--velocity-noise` adds Gaussian noise to the tangent velocities.
The gap to the agent's real return is what the state estimate costs.

`true-physics`: the model's encoder, renderer and start-state estimation with the true
cartpole's constants in place of the learned ones (cart 1 kg, a uniform 0.1 kg rod of 1 m,
10 N per unit action, no damping, mapped into keypoint space by the same affine map; the
learned rail walls kept), scored by `evaluate-model`'s VPT: about the best any learned
dynamics can do behind this encoder. Needs a model with a constant input matrix and a
linear potential.

`tracked-agent`: an agent's real return with the real env's state estimate set by
`--window`, `--iterations`, `--robust` or `--filter` (the protocol's episodes and seeds, two
processes); `--true-part positions` (or `velocities`) hands the agent that part of the true
state instead, so what the other part of the estimate costs shows (one process).

`causal`: an online estimator (the window, or `--filter` the Kalman filter) run through the
held-out sequences frame by frame as the real env runs it, read once per agent step, against
the true state mapped into keypoint space: position and velocity error RMS per coordinate,
overall and away from the rail ends, and its cost per agent step.

`agent-errors`: an agent run in the real task (one process) with the estimator set as for
`tracked-agent`; the estimate's error against the true state at every agent step, RMS and
mean, overall and apart for the steps it balances (pole within 26 degrees of the top) and
swings: the errors that matter to the agent, on the states it visits.

`estimate`: the real env's state estimate (`Tracking`: window, Gauss-Newton iterations,
Huber threshold) of held-out frames against the true state mapped into keypoint space,
every 8th frame: velocity error RMS per coordinate, overall and away from the rail ends.

    python scripts/cartpole_diagnostics.py response --checkpoint cartpole --data data/cartpole-task-eval
    python scripts/cartpole_diagnostics.py true-physics --checkpoint cartpole --data data/cartpole-task-eval
    python scripts/cartpole_diagnostics.py oracle-agent --agent bundled --checkpoint cartpole --data data/cartpole-task-eval
    python scripts/cartpole_diagnostics.py tracked-agent --agent bundled --checkpoint cartpole --data data/cartpole-task-eval --window 33
    python scripts/cartpole_diagnostics.py estimate --checkpoint cartpole --data data/cartpole-task-eval --window 17 --robust 0.02
    python scripts/cartpole_diagnostics.py causal --checkpoint cartpole --data data/cartpole-task-eval [--filter]
    python scripts/cartpole_diagnostics.py agent-errors --agent bundled --checkpoint cartpole --data data/cartpole-task-eval --episodes 4
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from keycld_gym.analysis.evaluation import evaluate_model  # noqa: E402
from keycld_gym.data.dataset import iter_sequences, iter_shards  # noqa: E402
from keycld_gym.envs.real_keypoints import RealKeypointEnv  # noqa: E402
from keycld_gym.files import write_json  # noqa: E402
from keycld_gym.model.checkpoint import load_model  # noqa: E402
from keycld_gym.model.physics_fit import PhysicsFit, apply_physics  # noqa: E402
from keycld_gym.model.tracking import Estimator, Filtering, Tracking, estimator_to_dict  # noqa: E402
from keycld_gym.rl.agent import load_agent, real_vec_env  # noqa: E402
from keycld_gym.rl.agent_evaluation import episode_returns  # noqa: E402
from keycld_gym.sim.real_env import RealEnv  # noqa: E402

STATES = [(0.0, 0.0), (0.3, 0.0), (1.0, 0.0), (np.pi / 2, 0.0), (np.pi, 0.0), (0.0, 2.0)]  # (theta, thetadot)


def state_to_keypoints(model, data: Path, every: int = 7) -> np.ndarray:
    """Affine map `(4, 4)` from [1, x, sin, cos] of the true state to the model's keypoints, least squares."""
    feats, kps = [], []
    for a in iter_shards(data, "cartpole"):
        frames, qpos = a["frames"][:, ::every], a["qpos"][:, ::every]
        kps.append(model.encode_frames(frames).numpy().reshape(-1, 4))
        x, th = qpos[..., 0].ravel(), qpos[..., 1].ravel()
        feats.append(np.stack([np.ones_like(x), x, np.sin(th), np.cos(th)], 1))
    w, *_ = np.linalg.lstsq(np.concatenate(feats), np.concatenate(kps), rcond=None)
    return w


def keypoint_state(w: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints and their velocities `(4,)` each of a true cartpole state."""
    x, th, xd, thd = qpos[0], qpos[1], qvel[0], qvel[1]
    return (np.array([1, x, np.sin(th), np.cos(th)]) @ w,
            np.array([0, xd, np.cos(th) * thd, -np.sin(th) * thd]) @ w)


def mass_ratios(m: np.ndarray) -> dict[str, float]:
    """b/a and c/a of a keypoint mass matrix `(2, 2)` [cart, pole] on the cartpole's constraint manifold."""
    a, b, c = m[0, 0] + 2 * m[0, 1] + m[1, 1], m[0, 1] + m[1, 1], m[1, 1]
    return {"coupling_over_total": float(b / a), "inertia_over_total": float(c / a)}


def response(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """The model's accelerations beside the true simulator's, and the mass ratios."""
    env = RealEnv("cartpole", "state", action_repeat=1)
    env.reset(seed=0)
    dt = env.system.physics_dt
    rows = []
    for th, thd in STATES:
        row: dict = {"theta": th, "thetadot": thd}
        for u in (0.0, 1.0):
            env.set_state(np.array([0.0, th]), np.array([0.0, thd]))
            q0, v0 = keypoint_state(w, env.physics.data.qpos.copy(), env.physics.data.qvel.copy())
            env.step(np.array([u], np.float32))
            _, v1 = keypoint_state(w, env.physics.data.qpos.copy(), env.physics.data.qvel.copy())
            q, v = model.project(torch.tensor(q0, dtype=torch.float32).reshape(1, 2, 2),
                                 torch.tensor(v0, dtype=torch.float32).reshape(1, 2, 2))
            with torch.no_grad():
                _, mv = model.step(q, v, torch.tensor([[u]]))
            row[f"true_acc_u{u:g}"] = ((v1 - v0) / dt).round(3).tolist()
            row[f"model_acc_u{u:g}"] = ((mv - v) / dt).reshape(-1).detach().numpy().round(3).tolist()
        rows.append(row)
    # the true system (dm_control cartpole.xml): cart 1 kg, pole about a uniform 0.1 kg rod of
    # 1 m from the hinge; l is where the pole keypoint sits along it, in metres
    l_metres = float((w[2, 2] + w[3, 3]) / 2 / w[1, 0])  # tip x = l sin(theta), tip y = l cos(theta)
    truth = {"coupling_over_total": 0.1 * 0.5 / l_metres / 1.1, "inertia_over_total": 0.1 / 3 / l_metres**2 / 1.1}
    m_model = model.dynamics.mass_matrix().detach().numpy()
    result = {"checkpoint": str(args.checkpoint), "data": args.data, "states": rows,
              "mass_ratios_model": mass_ratios(m_model), "mass_ratios_true": truth}
    print(f"{'theta':>6} {'thdot':>5} | {'true acc, u=0 (cart x, tip x, tip y)':>36} {'model':>24} | "
          f"{'true effect of u=1':>22} {'model':>22}")
    for r in rows:
        t0, m0 = np.array(r["true_acc_u0"]), np.array(r["model_acc_u0"])
        t1, m1 = np.array(r["true_acc_u1"]) - t0, np.array(r["model_acc_u1"]) - m0
        pick = [0, 2, 3]
        print(f"{r['theta']:6.2f} {r['thetadot']:5.1f} | {np.array2string(t0[pick], precision=2):>36} "
              f"{np.array2string(m0[pick], precision=2):>24} | {np.array2string(t1[pick], precision=2):>22} "
              f"{np.array2string(m1[pick], precision=2):>22}")
    print("mass on the constraint manifold, model:", {k: round(v, 4) for k, v in result["mass_ratios_model"].items()},
          "true:", {k: round(v, 4) for k, v in truth.items()})
    return result


def oracle_agent(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """Real returns of an agent acting on the true state mapped into keypoints (plus optional noise)."""
    agent = load_agent(args.agent, "cartpole", "keypoints")
    env = RealEnv("cartpole", "state")
    rng = np.random.default_rng(args.seed)
    returns = []
    for i in range(args.episodes):
        env.reset(seed=args.seed + i)
        total, done = 0.0, False
        while not done:
            qpos, qvel = env.physics.data.qpos.copy(), env.physics.data.qvel.copy()
            if args.velocity_noise:  # cart: image units/s -> m/s; pole: rad/s
                qvel += rng.normal(0.0, args.velocity_noise, 2) * [1.0 / w[1, 0], 1.0]
            q, v = keypoint_state(w, qpos, qvel)
            _, reward, terminated, truncated, _ = env.step(agent.act(np.concatenate([q, v])[None].astype(np.float32))[0])
            total, done = total + reward, terminated or truncated
        returns.append(total)
    print(f"oracle keypoints: real return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {args.episodes} episodes "
          f"(seeds {args.seed}-{args.seed + args.episodes - 1}): {np.round(returns, 1).tolist()}")
    return {"agent": str(args.agent), "checkpoint": str(args.checkpoint), "velocity_noise": args.velocity_noise,
            "seed": args.seed, "episodes": args.episodes, "real_returns": returns,
            "real_return_mean": float(np.mean(returns)), "real_return_std": float(np.std(returns))}


def true_physics(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """VPT of the model with the true cartpole's constants (see the module docstring)."""
    if not model.config.dynamics.structured or model.config.dynamics.potential_mlp:
        raise SystemExit("true-physics needs a model trained with --input-matrix constant --linear-potential --no-potential-mlp")
    s, l = w[1, 0], (w[2, 2] + w[3, 3]) / 2  # image units per metre of cart travel; keypoint's distance along the pole
    cart, pole, length, g, gear = 1.0, 0.1, 1.0, 9.81, 10.0  # dm_control cartpole.xml
    # T = 1/2 a |c'|^2 + b c'.(p' - c') + 1/2 c |p' - c'|^2 on the manifold, as a form in (c', p')
    a, b, c = (cart + pole) / s**2, pole * length / (2 * s * l), pole * length**2 / (3 * l**2)
    mass = np.array([[a - 2 * b + c, b - c], [b - c, c]])
    gravity = np.array([0.0, 0.0, 0.0, pole * g * length / (2 * l)])
    push = np.array([[gear / s], [0.0], [0.0], [0.0]])
    apply_physics(model.dynamics, PhysicsFit(mass / a, gravity / a, push / a, np.zeros(2), 0, 0.0))
    with torch.no_grad():
        model.dynamics.damping_raw.fill_(-30.0)  # softplus: ~1e-13
    r = evaluate_model(model, args.data, references=False)["model"]
    print(f"true physics behind {args.checkpoint}'s encoder: VPT agent median / mean {r['vpt_agent_median']:.1f} / "
          f"{r['vpt_agent_mean']:.1f}, physics {r['vpt_physics_median']:.1f} / {r['vpt_physics_mean']:.1f}")
    return {"checkpoint": str(args.checkpoint), "data": args.data, **{k: v for k, v in r.items() if k.startswith("vpt")}}


def _tracking(args: argparse.Namespace) -> Estimator:
    if args.filter:
        return Filtering(measurement_std=args.measurement_std, acceleration_std=args.acceleration_std,
                         robust=None if args.robust <= 0 else args.robust, bias_std=args.bias_std)
    return Tracking(args.window, args.iterations, None if args.robust <= 0 else args.robust)


def tracked_agent(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """Real returns of an agent with the state estimate's settings changed (see the module docstring)."""
    tracking = _tracking(args)
    agent = load_agent(args.agent, "cartpole", "keypoints")
    if args.true_part:
        returns = _part_true_returns(args, agent, model, w, tracking)
    else:
        venv = real_vec_env(agent.recipe, model, workers=2, tracking=tracking)
        returns = episode_returns(agent.act, venv, args.episodes, args.seed)
        venv.close()
    print(f"{tracking}{', true ' + args.true_part if args.true_part else ''}: real return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {args.episodes} episodes "
          f"(seeds {args.seed}-{args.seed + args.episodes - 1}): {np.round(returns, 1).tolist()}")
    return {"agent": str(args.agent), "checkpoint": str(args.checkpoint), "tracking": estimator_to_dict(tracking),
            "true_part": args.true_part, "seed": args.seed,
            "episodes": args.episodes, "real_returns": returns,
            "real_return_mean": float(np.mean(returns)), "real_return_std": float(np.std(returns))}


def _in_process(args: argparse.Namespace, agent, model, w: np.ndarray, tracking: Estimator,
                part: slice | None = None) -> tuple[list[float], np.ndarray]:
    """Real returns of `agent` run in this process, and every agent step's estimate error and true state `(N, 12)`.

    `part`: that slice of the observation replaced by the true state's. Rows: the estimate
    minus the true state in keypoint space (8), then the true qpos and qvel (4).
    """
    env = RealKeypointEnv("cartpole", model, tracking=tracking)
    returns, rows = [], []
    for i in range(args.episodes):
        obs, _ = env.reset(seed=args.seed + i)
        total, done = 0.0, False
        while not done:
            qpos, qvel = env.env.physics.data.qpos.copy(), env.env.physics.data.qvel.copy()
            true = np.concatenate(keypoint_state(w, qpos, qvel))
            rows.append(np.concatenate([obs - true, qpos, qvel]))
            if part is not None:
                obs[part] = true[part]
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs[None])[0])
            total, done = total + reward, terminated or truncated
        returns.append(total)
    env.close()
    return returns, np.array(rows)


def _part_true_returns(args: argparse.Namespace, agent, model, w: np.ndarray, tracking: Estimator) -> list[float]:
    """Real returns with one part of the estimate (positions or velocities) replaced by the true state's (one process)."""
    return _in_process(args, agent, model, w, tracking, slice(0, 4) if args.true_part == "positions" else slice(4, 8))[0]


def agent_errors(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """The estimate's error against the true state along an agent's own real episodes, balancing and swinging apart."""
    tracking = _tracking(args)
    returns, rows = _in_process(args, load_agent(args.agent, "cartpole", "keypoints"), model, w, tracking)
    err, upright = rows[:, :8], np.cos(rows[:, 9]) > 0.9  # within 26 degrees of the top
    cols = [0, 2, 3]  # cart x, tip x, tip y
    parts = {}
    for name, m in (("all", np.ones(len(rows), bool)), ("upright", upright), ("swinging", ~upright)):
        parts[name] = {"share": float(m.mean()), "position_rms": np.sqrt((err[m][:, cols] ** 2).mean(0)).round(4).tolist(),
                       "velocity_rms": np.sqrt((err[m][:, [c + 4 for c in cols]] ** 2).mean(0)).round(4).tolist(),
                       "velocity_mean": err[m][:, [c + 4 for c in cols]].mean(0).round(4).tolist()}
        print(f"{name} ({m.mean():.0%} of {len(rows)} agent steps): RMS (cart x, tip x, tip y) positions "
              f"{parts[name]['position_rms']}, velocities {parts[name]['velocity_rms']} (mean {parts[name]['velocity_mean']})")
    print(f"{tracking}: real return {np.mean(returns):.1f} +- {np.std(returns):.1f} over {args.episodes} episodes "
          f"(seeds {args.seed}-{args.seed + args.episodes - 1})")
    return {"agent": str(args.agent), "checkpoint": str(args.checkpoint), "tracking": estimator_to_dict(tracking),
            "seed": args.seed, "episodes": args.episodes, "errors": parts, "real_returns": returns,
            "real_return_mean": float(np.mean(returns)), "real_return_std": float(np.std(returns))}


def estimate(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """Velocity error of the real env's state estimate against the true state (see the module docstring)."""
    tracking = _tracking(args)
    n, kps, acts, truth, cart = tracking.frames(model.spec), [], [], [], []
    for seq in iter_sequences(args.data, "cartpole"):
        frames, qpos, qvel = seq["frames"], seq["qpos"], seq["qvel"]
        kp, a = model.encode_frames(frames), torch.from_numpy(seq["actions"].astype(np.float32))
        for t in range(48, len(frames), 8):  # the same frames for every window up to 49
            kps.append(kp[t - n + 1: t + 1])
            acts.append(a[t - n + 1: t])
            truth.append(np.concatenate(keypoint_state(w, qpos[t], qvel[t])))
            cart.append(qpos[t, 0])
    qs, vs = tracking.fit(model, torch.stack(kps), torch.stack(acts))
    err = torch.cat([qs[:, -1].flatten(1), vs[:, -1].flatten(1)], 1).numpy() - np.array(truth)
    inner = np.abs(np.array(cart)) < 1.5  # metres: away from the rail ends (+-1.8)
    rms = {name: np.sqrt((err[m][:, 4:] ** 2).mean(0))[[0, 2, 3]].round(4).tolist()
           for name, m in (("all", np.ones_like(inner)), ("away_from_rail_ends", inner))}
    print(f"{tracking}: velocity error RMS (cart x, tip x, tip y) over {len(err)} windows: all {rms['all']}, "
          f"|x| < 1.5 m {rms['away_from_rail_ends']} ({inner.mean():.0%} of them)")
    return {"checkpoint": str(args.checkpoint), "data": args.data, "tracking": vars(tracking), "windows": len(err),
            "velocity_rms": rms}


def causal(args: argparse.Namespace, model, w: np.ndarray) -> dict:
    """Position and velocity error of an online estimator run through held-out sequences as the real env runs it."""
    estimator = _tracking(args)
    seqs = list(iter_sequences(args.data, "cartpole"))
    length = min(len(s["frames"]) for s in seqs) if args.frames is None else args.frames
    kp = torch.stack([model.encode_frames(s["frames"][:length]) for s in seqs])  # (B, T, K, 2)
    acts = torch.from_numpy(np.stack([s["actions"][: length - 1] for s in seqs]).astype(np.float32))
    repeat = model.spec.action_repeat

    def run(kp: torch.Tensor, acts: torch.Tensor) -> list[tuple[int, np.ndarray]]:
        online, reads = estimator.start(model), []
        for t in range(kp.shape[1]):
            online.add(kp[:, t], None if t == 0 else acts[:, t - 1])
            if t and t % repeat == 0:  # read as an agent reads it, once per agent step
                q, v = online.estimate()
                reads.append((t, torch.cat([q.flatten(1), v.flatten(1)], 1).numpy()))
        return reads

    reads = [(t, est) for t, est in run(kp, acts) if t >= args.burn_in]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    run(kp[:1], acts[:1])  # the cost: one episode's estimator, as the real env runs it
    per_step = (time.perf_counter() - start) / ((length - 1) / repeat) * 1e3
    torch.set_num_threads(threads)
    err = np.concatenate([est - np.stack([np.concatenate(keypoint_state(w, s["qpos"][t], s["qvel"][t])) for s in seqs])
                          for t, est in reads])
    inner = np.concatenate([np.abs([s["qpos"][t, 0] for s in seqs]) < 1.5 for t, _ in reads])  # metres; rails end at +-1.8
    rms = {f"{part}_{name}": np.sqrt((err[m][:, cols] ** 2).mean(0))[[0, 2, 3]].round(4).tolist()
           for name, m in (("all", np.ones_like(inner)), ("away_from_rail_ends", inner))
           for part, cols in (("position", slice(0, 4)), ("velocity", slice(4, 8)))}
    print(f"{estimator}: over {len(err)} agent steps of {len(seqs)} sequences (frames {args.burn_in}-{length - 1}), "
          f"RMS (cart x, tip x, tip y) positions {rms['position_all']}, velocities {rms['velocity_all']}; "
          f"|x| < 1.5 m ({inner.mean():.0%}): positions {rms['position_away_from_rail_ends']}, "
          f"velocities {rms['velocity_away_from_rail_ends']}; {per_step:.1f} ms per agent step (one env, one thread)")
    return {"checkpoint": str(args.checkpoint), "data": args.data, "estimator": estimator_to_dict(estimator),
            "samples": len(err), "frames": length, "burn_in": args.burn_in, "rms": rms,
            "ms_per_agent_step": per_step}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=("response", "oracle-agent", "true-physics", "estimate", "tracked-agent", "causal",
                                     "agent-errors"))
    p.add_argument("--checkpoint", default="cartpole")
    p.add_argument("--data", required=True, help="held-out cartpole data set (frames and true states)")
    p.add_argument("--agent", default="bundled", help="oracle-agent, tracked-agent, agent-errors: an agent folder or 'bundled'")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--velocity-noise", type=float, default=0.0,
                   help="oracle-agent: std of noise on the cart velocity (image units/s) and pole rate (rad/s)")
    p.add_argument("--window", type=int, help="estimate, tracked-agent, causal: frames per window (estimate: at most 49; default: the real env's)")
    p.add_argument("--iterations", type=int, default=Tracking.iterations, help="estimate, tracked-agent, causal: Gauss-Newton iterations")
    p.add_argument("--robust", type=float,
                   help="estimate, tracked-agent: Huber threshold, image units for the window, standard deviations "
                        "for the filter (0: plain least squares; default: the estimator's)")
    p.add_argument("--true-part", choices=("positions", "velocities"),
                   help="tracked-agent: that part of the estimate replaced by the true state's (what the other part costs)")
    p.add_argument("--filter", action="store_true", help="tracked-agent, causal: the Kalman filter (`Filtering`), not the window")
    p.add_argument("--measurement-std", type=lambda s: None if s == "measured" else float(s), default=Filtering.measurement_std,
                   help="--filter: keypoint noise, image units, or 'measured': the model's measured frame error per coordinate")
    p.add_argument("--acceleration-std", type=float, default=Filtering.acceleration_std,
                   help="--filter: the dynamics' error as white acceleration noise, image units/s^2/sqrt(Hz)")
    p.add_argument("--bias-std", type=float, help="--filter: the acceleration bias state's random walk, "
                   "image units/s^2/sqrt(s) (default: no bias state)")
    p.add_argument("--frames", type=int, help="causal: frames of each sequence (default: all)")
    p.add_argument("--burn-in", type=int, default=48, help="causal: frames before the first scored estimate")
    p.add_argument("--json")
    args = p.parse_args()
    if args.robust is None:
        args.robust = (Filtering if args.filter else Tracking).robust
    model = load_model(args.checkpoint)
    if model.spec.name != "cartpole":
        raise SystemExit(f"{args.checkpoint} is a {model.spec.name!r} model: these checks know the cartpole only")
    w = state_to_keypoints(model, Path(args.data))
    check = {"response": response, "oracle-agent": oracle_agent, "true-physics": true_physics, "estimate": estimate,
             "tracked-agent": tracked_agent, "causal": causal, "agent-errors": agent_errors}[args.check]
    result = check(args, model, w)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
