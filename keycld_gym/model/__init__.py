"""The KeyCLD model: encoder, renderer, constraints, Lagrangian dynamics, integrators, the
assembled model, start-state estimation, the least-squares physics fit, and model files (the
checkpoint, and the start bank and measured noise beside it).

May import: the base modules (`errors`, `files`, `parallel`, `version`) and `keycld_gym.sim`.
"""
