"""The real systems: specs, cameras, the real dm_control tasks, and exploration for data.

May import: `keycld_gym.errors`, `keycld_gym.files`, `keycld_gym.version` (nothing else of the package).
"""
