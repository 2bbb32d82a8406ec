"""Agents trained in imagination: agent files and observation pipelines, training, evaluation
in the real task, the real estimate's measured noise, pixel agents through the model's encoder.

May import: the base modules, `keycld_gym.sim`, `keycld_gym.data`, `keycld_gym.model`,
`keycld_gym.envs`, and the recipes (`agents`).
"""
