"""What a trained model and its agents are worth: the model's held-out evaluation (VPT, keypoint
error), diagnostics against the true physics, and prediction videos.

May import: the base modules, `keycld_gym.sim`, `keycld_gym.data`, `keycld_gym.model`,
`keycld_gym.envs`, the recipes (`agents`) and `keycld_gym.rl`.
"""
