"""Acrobot swing-up recipes (action repeat 4: 250 agent steps of 0.04 s per episode).

The reward (the tip within a metre of a target above the shoulder) is nearly zero until the
arm is swung up, so the pendulum's lessons carry over: half the training episodes start
anywhere in the model's training data (the energy-pumping explorer's data holds arms swung
over the top) and training episodes are cut at 125 agent steps (5 s; SAC and PPO bootstrap
through the cut), so that more episodes start from such states.
"""

from . import cartpole, pendulum
from .recipe import AgentRecipe

SAC_KEYPOINTS = pendulum.SAC_KEYPOINTS.replace(system="acrobot", total_steps=150_000)
PPO_KEYPOINTS = cartpole.PPO_KEYPOINTS.replace(
    system="acrobot", total_steps=3_000_000, exploring_starts=0.5, training_episode_steps=125, torch_threads=1,
)
PPO_PIXELS = cartpole.PPO_PIXELS.replace(
    system="acrobot", hyperparams={**cartpole.PPO_PIXELS.hyperparams, "n_steps": 250},
)
SAC_PIXELS = cartpole.SAC_PIXELS.replace(system="acrobot", total_steps=200_000)

# No RL: the model's energy pumped through the elbow toward the upright energy (the power an
# action puts in is the elbow's rate times the learned input, faded by tanh), and an LQR
# balance from the model's linearisation near the top (keycld_gym/energy_control.py).
ENERGY = AgentRecipe(
    system="acrobot", obs_type="keypoints", algo="energy", policy="EnergyShaping", total_steps=1, num_envs=1,
    hyperparams=dict(gain=50.0, switch=0.05, state_cost=(1.0, 0.1), action_cost=1.0, power_scale=0.1),
)

RECIPES = [SAC_KEYPOINTS, PPO_KEYPOINTS, PPO_PIXELS, SAC_PIXELS, ENERGY]
