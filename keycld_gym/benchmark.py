"""The main job, `keycld-gym benchmark`: train in imagination, evaluate in the real task, report.

On a world model (default: the bundled one) a keypoint agent of the system's bundled recipe
(`agents/`: SAC for cartpole and the pendulum, PPO on 256 batched envs for the acrobot) is
trained only in the imagined env within a wall-time budget, then evaluated on real
episodes of the standard dm_control task. The report folder holds `benchmark.json`,
`learning_curve.png` (imagined and real return against training steps) and
`side_by_side.gif` (the same policy in imagination and in the real task, from the same reset
seed); a table goes to stdout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from keycld_gym.agents import AgentRecipe, bundled_recipe
from keycld_gym.analysis.video import annotate, side_by_side_frames, write_video
from keycld_gym.envs.imagined_env import KeyCLDEnv
from keycld_gym.envs.real_keypoints import RealKeypointEnv
from keycld_gym.files import write_json
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.rl.agent import AGENT_CONFIG, bundled_agent_path, load_agent
from keycld_gym.rl.agent_evaluation import cut_short, evaluate_agent, random_returns
from keycld_gym.rl.agent_training import AgentTrainConfig, curve_interval, train_agent
from keycld_gym.rl.energy_control import ENERGY_RECORD
from keycld_gym.rl.planning import PLANNING_RECORD
from keycld_gym.sim.systems import get_system

EVAL_SEED = 100_000  # real episodes of the final evaluation: seeds never used in training


def learning_curve_plot(curve: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Imagined and real return against training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    steps = [p["steps"] for p in curve]
    ax.plot(steps, [p["imagined_return"] for p in curve], "-o", ms=3, label="imagined return")
    real = [(p["steps"], p["real_return"]) for p in curve if p.get("real_return") is not None]
    if real:
        ax.plot(*zip(*real), "s--", ms=5, label="real return")
    ax.set_xlabel("agent steps in imagination")
    ax.set_ylabel("episode return")
    ax.set_ylim(0, 1000)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def side_by_side(agent: Any, checkpoint: str | Path, seed: int, path: Path, scale: int = 3, max_steps: int | None = None) -> Path:
    """A GIF of one episode of `agent` in imagination (left) and in the real task (right), both reset with `seed`.

    Each panel is labelled and shows the time and its running return; keypoints are drawn
    (the imagined state on the left, the real side's estimate on the right).
    """
    recipe = agent.recipe
    if recipe.obs_type != "keypoints":
        raise ValueError(f"the side-by-side video shows keypoint agents, this one acts on {recipe.obs_type!r}")
    model = load_model(checkpoint)
    imagined = KeyCLDEnv(recipe.system, checkpoint, obs_type="keypoints")
    real = RealKeypointEnv(recipe.system, model)
    panels: dict[str, list[np.ndarray]] = {"imagination": [], "real task": []}
    for name, env in (("imagination", imagined), ("real task", real)):
        obs, _ = env.reset(seed=seed)
        done, steps, ret = False, 0, 0.0
        while not done and (max_steps is None or steps < max_steps):
            if env is imagined:
                frame, q = env.sim.pixels(slice(0, 1))[0], env.sim.q[0].cpu().numpy()
            else:
                frame, q = env.last_frame, env.last_state[0].numpy()
            caption = f"t = {steps * model.spec.agent_dt:.2f} s   return {ret:.1f}"
            panels[name].append(annotate(frame, q, scale, f"{name} (seed {seed})", caption))
            obs, reward, term, trunc, _ = env.step(agent.act(obs[None])[0])
            done, steps, ret = term or trunc, steps + 1, ret + float(reward)
        env.close()
    n = min(len(v) for v in panels.values())
    video = np.stack([side_by_side_frames([panels["imagination"][i], panels["real task"][i]]) for i in range(n)])
    return write_video(path, video, fps=1 / model.spec.agent_dt)


def benchmark_recipe(system: str) -> AgentRecipe:
    """The recipe the benchmark trains: that of the system's bundled keypoint agent (`agents/`)."""
    recipe = bundled_recipe(get_system(system).name, "keypoints")
    if recipe is None:
        raise ValueError(f"no bundled keypoint agent recipe for {system!r}: name one in agents/{system}.py BUNDLED")
    return recipe


def run_benchmark(
    system: str = "cartpole", out: str | Path = "benchmark", *, budget_min: float | None = None, seed: int = 0,
    episodes: int = 10, eval_seed: int = EVAL_SEED, checkpoint: str | Path | None = None, total_steps: int | None = None,
    real_curve_points: int = 3, workers: int = 2, video: bool = True, video_steps: int | None = None, progress: bool = True,
    command: str | None = None, max_steps: int | None = None, ray: str | None = None,
) -> dict[str, Any]:
    """Train a keypoint agent (the bundled one's recipe) in imagination within `budget_min` minutes (default: the recipe's), evaluate it for real, write the report.

    `max_steps` cuts the evaluation's episodes (a quick check; see `evaluate_agent`).
    """
    t0 = time.time()
    recipe = benchmark_recipe(system)
    if budget_min is None:
        budget_min = recipe.benchmark_budget_min
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = checkpoint_folder(checkpoint, system)
    steps = total_steps or recipe.total_steps
    config = AgentTrainConfig(
        system=system, obs_type="keypoints", algo=recipe.algo, seed=seed, checkpoint=str(model_path),
        total_steps=total_steps, budget_s=budget_min * 60, eval_every=curve_interval(steps), eval_episodes=16,
        real_eval_episodes=1,
    )
    # the real return at about `real_curve_points` points of the learning curve
    expected_points = steps // config.eval_every + 1
    config.real_eval_every = max(1, expected_points // real_curve_points) if real_curve_points > 0 else 0
    train = out / "train"
    state = train_agent(config, train, resume=(train / "state.json").exists(), progress=progress, command=command)
    agent = load_agent(train / "agent")
    result = evaluate_agent(agent, episodes=episodes, seed=eval_seed, checkpoint=model_path, workers=workers,
                            max_steps=max_steps, ray=ray)
    rand = random_returns(system, episodes, eval_seed, max_steps)
    bundled = {}  # the bundled agents' recorded evaluations, by observation type
    for obs_type in ("keypoints", "pixels"):
        folder = bundled_agent_path(system, obs_type)
        if (folder / AGENT_CONFIG).exists():
            bundled[obs_type] = load_agent(folder).info.get("evaluation")
    energy = model_path / ENERGY_RECORD  # the model's own energy controller, no RL (recorded)
    planning = model_path / PLANNING_RECORD  # planning in the model, guided by the bundled agent (recorded)
    report: dict[str, Any] = {
        "system": system, "budget_min": budget_min, "seed": seed, "command": command,
        "trained": {"steps": state["steps"], "train_wall_s": state["wall_s"]},
        "agent": result, "random": {"real_returns": [round(r, 2) for r in rand], "real_return_mean": float(np.mean(rand))},
        "bundled_agent": bundled.get("keypoints"), "bundled_pixel_agent": bundled.get("pixels"), "curve": state["curve"],
        "energy_control": json.loads(energy.read_text()) if energy.exists() else None,
        "planning": json.loads(planning.read_text()) if planning.exists() else None,
    }
    learning_curve_plot(state["curve"], out / "learning_curve.png",
                        f"{system}: {recipe.algo.upper()} on keypoints, trained in imagination only (model: {result['model_real_frames']} real frames)")
    if video:
        side_by_side(agent, model_path, eval_seed, out / "side_by_side.gif", max_steps=video_steps)
    report["wall_s"] = round(time.time() - t0, 1)
    write_json(out / "benchmark.json", report)
    print(format_table(report))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The benchmark's table as text."""
    a = report["agent"]
    rows = [("policy", "imagined return", "real return", "gap", "real frames (model / policy)")]

    def frames(e: dict[str, Any]) -> str:  # each evaluation's own model data (a bundled agent's is its own)
        return f"{e['model_real_frames']} ({e['model_data_regime']}) / {e.get('policy_real_frames', 0)}"

    rows.append(("random", "-", f"{report['random']['real_return_mean']:.0f}", "-", "-"))
    rows.append((f"this run ({report['trained']['steps']} steps)", f"{a['imagined_return_mean']:.0f} ± {a['imagined_return_std']:.0f}",
                 f"{a['real_return_mean']:.0f} ± {a['real_return_std']:.0f}", f"{100 * a['gap']:+.0f}%", frames(a)))
    for key, name in (("bundled_agent", "bundled agent (recorded)"), ("bundled_pixel_agent", "bundled pixel agent (recorded)"),
                      ("energy_control", "energy control, no RL (recorded)"),
                      ("planning", "planning, bundled agent's value (recorded)")):
        b = report.get(key)
        if b:
            rows.append((name, f"{b['imagined_return_mean']:.0f} ± {b['imagined_return_std']:.0f}",
                         f"{b['real_return_mean']:.0f} ± {b['real_return_std']:.0f}", f"{100 * b['gap']:+.0f}%", frames(b)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{a['episodes']} real episodes (seeds {a['seed']}+{cut_short(a)}), {report['system']}; training {report['trained']['train_wall_s'] / 60:.1f} min, "
                 f"whole benchmark {report.get('wall_s', 0) / 60:.1f} min")
    return "\n".join(lines)
