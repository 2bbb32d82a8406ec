"""RL Zoo hyper-parameters for PPO on the KeyCLD ids, from the recipes beside this file.

    python -m rl_zoo3.train --algo ppo --env KeyCLD-Cartpole-keypoints-v0 --gym-packages keycld_gym \\
        --conf-file keycld_gym.agents.rl_zoo_ppo
"""

from . import rl_zoo_hyperparams

hyperparams = rl_zoo_hyperparams("ppo")
