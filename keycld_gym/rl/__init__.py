"""Agents in imagination: agent files and observation pipelines, training, evaluation in the
real task, the real estimate's measured noise, pixel agents through the model's encoder, and the
model-based agents (energy control and planning in the model).

May import: the base modules, `keycld_gym.sim`, `keycld_gym.data`, `keycld_gym.model`,
`keycld_gym.envs`, and the recipes (`agents`).
"""
