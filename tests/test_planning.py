"""Model-predictive control in the learned model: it plans better than its guide acts, and says what it cannot take."""

import json

import numpy as np
import pytest
import torch

from keycld_gym.agents import get_recipe
from keycld_gym.cli import main
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.rl.agent import imagined_vec_env, load_agent
from keycld_gym.rl.agent_evaluation import episode_returns
from keycld_gym.rl.planning import (
    Guide,
    ModelPredictiveControl,
    PlanningAgent,
    planning_agent,
)

PLAN = get_recipe("acrobot", "keypoints", "mppi")


def test_guides_read_ppo_and_sac_agents():
    for system in ("acrobot", "pendulum"):  # PPO and SAC ship
        agent = load_agent("bundled", system, "keypoints")
        guide = Guide(agent)
        k = load_model(checkpoint_folder(None, system)).spec.num_keypoints
        obs = torch.zeros(3, 4 * k)
        assert guide.value(obs).shape == (3,) and torch.isfinite(guide.value(obs)).all()
        action = guide.action(obs)
        assert action.shape == (3, 1) and (action.abs() <= 1).all()
        np.testing.assert_allclose(action.numpy(), agent.act(obs.numpy()), atol=1e-6)  # the agent's own action
        assert guide.gamma == agent.recipe.hyperparams.get("gamma", 0.99)


def test_the_planner_gathers_more_imagined_reward_than_its_guide_alone():
    """Same model, same starts, same observation noise: the plans beat the policy they start from.

    The starts lie anywhere in the model's training data (arms swung up among them), where a
    few seconds decide the reward.
    """
    agent = planning_agent("acrobot")
    planner = ModelPredictiveControl(agent.planner.model, agent.guide, horizon=8, samples=64, iterations=1, elites=8)
    guide = load_agent("bundled", "acrobot", "keypoints")
    steps, episodes, seed = 30, 8, 7
    anywhere = PLAN.replace(exploring_starts=1.0)
    returns = {}
    for name, act in (("plan", planner), ("guide", guide.act)):
        venv = imagined_vec_env(anywhere, episodes, None, seed=seed, training=True)
        returns[name] = float(np.mean(episode_returns(act, venv, episodes, seed, max_steps=steps)))
    assert returns["plan"] > returns["guide"] + 1.0, returns


def test_the_planner_acts_within_bounds_and_carries_its_plan():
    model = load_model(checkpoint_folder(None, "acrobot"))
    obs = imagined_vec_env(PLAN, 2, None, seed=0, noise=False).reset()
    for gains in ((1.0,), (0.8, 1.2)):  # the model as it is; the worst of two action gains
        planner = ModelPredictiveControl(model, None, horizon=4, samples=16, iterations=2, elites=4, gains=gains, seed=1)
        actions = planner(obs)
        assert actions.shape == (2, 1) and actions.dtype == np.float32 and (np.abs(actions) <= 1).all()
        assert planner.mean.shape == (2, 4, 1) and planner.gamma == 0.99  # no guide: its own discount
    planner.reset()
    assert planner.mean is None


def test_the_planner_plans_with_an_ensemble_and_pays_for_its_disagreement():
    """'member': each candidate follows a member of its own; the penalty lowers the scores where members disagree."""
    from keycld_gym.model.ensemble import DynamicsEnsemble, member_state

    model = load_model(checkpoint_folder(None, "acrobot"))
    other = member_state(model)
    other = {n: t * (1.2 if "potential" in n else 1.0) for n, t in other.items()}  # a member with stronger gravity
    model.ensemble = DynamicsEnsemble(model, [other])
    obs = imagined_vec_env(PLAN, 2, None, seed=0, noise=False).reset()
    q = torch.from_numpy(obs[:, :4]).reshape(2, 2, 2).repeat_interleave(8, 0)
    v = torch.from_numpy(obs[:, 4:]).reshape(2, 2, 2).repeat_interleave(8, 0)
    u = torch.rand(16, 4, 1) * 2 - 1
    scores = {}
    for penalty in (0.0, 10.0):
        planner = ModelPredictiveControl(model, None, horizon=4, samples=8, elites=2, ensemble_mode="member",
                                         uncertainty_penalty=penalty)
        torch.manual_seed(0)
        scores[penalty] = planner._rollout(q, v, u)[0]
        assert planner._sim(16).member.unique().numel() == 2  # both members followed
    assert (scores[10.0] < scores[0.0]).all()
    assert planner(obs).shape == (2, 1)
    with pytest.raises(ValueError, match="only with ensemble_mode 'member'"):
        ModelPredictiveControl(model, None, uncertainty_penalty=1.0)
    bare = load_model(checkpoint_folder(None, "acrobot"))
    bare.ensemble = None  # the model alone, without the bundled members
    with pytest.raises(ValueError, match="needs a model with an ensemble"):
        ModelPredictiveControl(bare, None, ensemble_mode="member")


def test_the_planner_says_what_it_cannot_take():
    model = load_model(checkpoint_folder(None, "acrobot"))
    planner = ModelPredictiveControl(model, None, horizon=2, samples=4, elites=2)
    with pytest.raises(ValueError, match=r"keypoint observations \(N, 8\)"):
        planner(np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        planner(np.full((1, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="elites"):
        ModelPredictiveControl(model, None, samples=4, elites=8)
    with pytest.raises(ValueError, match="min_noise"):
        ModelPredictiveControl(model, None, noise=0.1, min_noise=0.2)
    with pytest.raises(ValueError, match="positive action gains"):
        ModelPredictiveControl(model, None, gains=(1.0, 0.0))
    with pytest.raises(ValueError, match="keypoint"):
        PLAN.replace(obs_type="pixels")
    with pytest.raises(ValueError, match="mppi recipe"):
        PlanningAgent(model, get_recipe("acrobot", "keypoints", "ppo"), None)
    with pytest.raises(ValueError, match="trained for 'pendulum'"):
        PlanningAgent(model, PLAN, load_agent("bundled", "pendulum", "keypoints"))


def test_evaluate_agent_plans_in_the_real_task(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["evaluate-agent", "--agent", "plan", "--system", "acrobot", "--episodes", "1", "--max-steps", "2",
                 "--workers", "1", "--threads", "1", "--no-imagined", "--json", str(out),
                 "--set", "horizon=3", "--set", "samples=8", "--set", "elites=4", "--set", "gains=[0.9, 1.1]"]) == 0
    assert "acrobot keypoints mppi agent plan: real return" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["algo"] == "mppi" and record["policy_real_frames"] == 0 and len(record["real_returns"]) == 1
    # a misspelt setting, a setting for a trained agent, a pair without '=': each said so
    for agent, pair, said in (("plan", "horizn=3", "unknown mppi settings ['horizn']"),
                              ("bundled", "horizon=3", "--set changes the settings of --agent energy or plan"),
                              ("plan", "horizon", "--set takes KEY=VALUE")):
        assert main(["evaluate-agent", "--agent", agent, "--system", "acrobot", "--set", pair]) == 2
        assert said in capsys.readouterr().err
    assert main(["evaluate-agent", "--agent", "plan", "--system", "acrobot", "--guide", str(tmp_path / "no-agent")]) == 2
    assert "no-agent" in capsys.readouterr().err


def test_the_benchmark_table_lists_the_models_recorded_controllers():
    from keycld_gym.benchmark import format_table
    from keycld_gym.rl.energy_control import ENERGY_RECORD

    # the bundled model's recorded real evaluation of its energy controller; a recorded planner has the same form
    record = json.loads((checkpoint_folder(None, "acrobot") / ENERGY_RECORD).read_text())
    assert len(record["real_returns"]) == 10 and record["seed"] == 100_000
    planner = {**record, "algo": "mppi", "real_return_mean": record["real_return_mean"] + 100.0}
    report = {"system": "acrobot", "agent": record, "random": {"real_return_mean": 0.0}, "energy_control": record,
              "planning": planner, "trained": {"steps": 8, "train_wall_s": 1.0}}
    table = format_table(report).splitlines()
    for name, r in (("energy control", record), ("planning", planner)):
        row = next(line for line in table if line.startswith(name))
        assert f"{r['real_return_mean']:.0f} ± {r['real_return_std']:.0f}" in row
