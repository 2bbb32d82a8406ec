"""Gymnasium envs: the batched imagination, the imagined envs (single and vector), the real
task with keypoint observations, the real-env factory, env registration, the SB3 adapter.

May import: the base modules, `keycld_gym.sim`, `keycld_gym.data`, `keycld_gym.model`.
"""
