"""Training a KeyCLD model: the run loop, its keypoint and dynamics phases, losses, resumable
training state, logs, and the reward and renderer refits of a trained model.

May import: the base modules, `keycld_gym.sim`, `keycld_gym.data`, `keycld_gym.model`.
"""
