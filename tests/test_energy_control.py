"""Energy-based control: the law on the true pendulum's energies, then on a (tiny) learned model end to end."""

import mujoco
import numpy as np
import pytest

from keycld_gym.agents import get_recipe
from keycld_gym.cli import main
from keycld_gym.model.checkpoint import load_model
from keycld_gym.rl.agent_evaluation import evaluate_agent
from keycld_gym.rl.energy_control import (
    EnergyAgent,
    EnergyPlant,
    EnergyShaping,
    linearise,
    lqr_gain,
    model_plant,
)
from keycld_gym.sim.angles import wrap_angle
from keycld_gym.sim.real_env import RealEnv


def test_linearise_and_lqr_on_a_double_integrator():
    dt = 0.1
    a_true, b_true = np.array([[1, dt], [0, 1]]), np.array([[0.5 * dt**2], [dt]])
    a, b = linearise(lambda x, u: x @ a_true.T + u @ b_true.T, np.array([0.3, -0.2]), np.zeros(1))
    np.testing.assert_allclose(a, a_true, atol=1e-8)
    np.testing.assert_allclose(b, b_true, atol=1e-8)
    k = lqr_gain(a, b, np.eye(2), np.eye(1))
    assert np.abs(np.linalg.eigvals(a - b @ k)).max() < 1  # the closed loop is stable


def true_pendulum_plant(env: RealEnv) -> EnergyPlant:
    """The true pendulum as a plant on x = (hinge angle, rate): MuJoCo's own energies, its own step."""
    physics = env.physics
    physics.model.opt.enableflags |= mujoco.mjtEnableBit.mjENBL_ENERGY
    gear = float(physics.model.actuator_gear[0, 0])

    def energies(x):  # (N, 2): potential, kinetic
        out = []
        for theta, rate in x:
            env.set_state([theta], [rate])  # runs mj_forward, which fills data.energy
            out.append(physics.data.energy.copy())
        return np.array(out)

    def step(x, u):
        out = []
        for (theta, rate), ui in zip(x, u):
            env.set_state([theta], [rate])
            for _ in range(env.action_repeat):
                physics.set_control(ui)
                physics.step()
            out.append([physics.data.qpos[0], physics.data.qvel[0]])
        return np.array(out)

    grid = np.stack([np.linspace(-np.pi, np.pi, 73), np.zeros(73)], 1)
    v = energies(grid)[:, 0]
    return EnergyPlant(
        energy=lambda x: energies(x).sum(1), potential=lambda x: energies(x)[:, 0],
        power=lambda x: gear * x[:, 1:2], step=step, upright=grid[v.argmax()],
        potential_range=(float(v.min()), float(v.max())),
        deviation=lambda x: np.stack([wrap_angle(x[:, 0] - grid[v.argmax(), 0]), x[:, 1]], 1),
    )


def test_the_law_swings_the_true_pendulum_up_on_its_true_energies():
    """The control law apart from any model: MuJoCo's energies, the task's reward."""
    plant_env, task = RealEnv("pendulum", "state"), RealEnv("pendulum", "state")
    plant = true_pendulum_plant(plant_env)
    assert abs(plant.upright[0]) < 0.1  # dm_control's pendulum stands upright at angle 0
    law = EnergyShaping(plant, **get_recipe("pendulum", "keypoints", "energy").hyperparams)
    assert law.closed_loop_radius < 1
    returns = []
    for seed in (0, 1):
        _, info = task.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            x = np.array([[info["qpos"][0], info["qvel"][0]]])
            _, reward, term, trunc, info = task.step(law(x)[0])
            total, done = total + reward, term or trunc
        returns.append(total)
    assert min(returns) > 600, returns  # random actions: about 0


ENERGY_CARTPOLE = get_recipe("cartpole", "keypoints", "energy")


def test_model_plant_reads_the_learned_energies(tiny_model_dir):
    model = load_model(tiny_model_dir)
    plant = model_plant(model)
    k = model.spec.num_keypoints
    assert plant.upright.shape == (4 * k,)
    low, high = plant.potential_range
    assert low < high and np.isclose(plant.potential(plant.upright[None])[0], high, atol=1e-6 * max(1, abs(high)))
    x = np.repeat(plant.upright[None], 3, 0)
    x[:, 2 * k:] = np.random.default_rng(0).normal(0, 0.1, (3, 2 * k))
    assert (plant.energy(x) >= plant.potential(x) - 1e-9).all()  # kinetic energy is never negative
    assert plant.power(x).shape == (3, 1) and plant.step(x, np.zeros((3, 1))).shape == x.shape


def test_energy_agent_runs_on_a_tiny_model_end_to_end(noisy_model_dir):
    """The recipe's real estimator (cartpole: the filter, on the model's measured frame error) included."""
    agent = EnergyAgent(load_model(noisy_model_dir), ENERGY_CARTPOLE)
    result = evaluate_agent(agent, episodes=1, checkpoint=noisy_model_dir, workers=1, max_steps=16)
    assert result["algo"] == "energy" and len(result["real_returns"]) == 1 and len(result["imagined_returns"]) == 1
    assert np.isfinite(result["real_return_mean"]) and result["policy_real_frames"] == 0
    assert result["real_estimator"]["kind"] == ENERGY_CARTPOLE.real_estimator.__class__.__name__


def test_energy_agent_refuses_what_it_cannot_control(tiny_model_dir, capsys):
    with pytest.raises(ValueError, match="energy recipe"):
        EnergyAgent(load_model(tiny_model_dir), get_recipe("cartpole", "keypoints", "sac"))
    with pytest.raises(ValueError, match="keypoint"):
        ENERGY_CARTPOLE.replace(obs_type="pixels")
    with pytest.raises(ValueError, match="power_scale must be 0"):
        EnergyAgent(load_model(tiny_model_dir), ENERGY_CARTPOLE.replace(hyperparams={"power_scale": -1.0}))
    # the controller is the model's: a missing model is said so
    assert main(["evaluate-agent", "--agent", "energy", "--system", "acrobot", "--checkpoint", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_the_benchmark_table_lists_the_models_recorded_energy_controller():
    import json

    from keycld_gym.benchmark import format_table
    from keycld_gym.model.checkpoint import checkpoint_folder
    from keycld_gym.rl.energy_control import ENERGY_RECORD

    record = json.loads((checkpoint_folder(None, "pendulum") / ENERGY_RECORD).read_text())
    assert record["algo"] == "energy" and len(record["real_returns"]) == 10
    report = {"system": "pendulum", "agent": record, "random": {"real_return_mean": 0.0}, "energy_control": record,
              "trained": {"steps": 8, "train_wall_s": 1.0}}
    row = next(line for line in format_table(report).splitlines() if line.startswith("energy control"))
    assert f"{record['real_return_mean']:.0f}" in row
