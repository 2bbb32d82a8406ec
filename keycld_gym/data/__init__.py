"""Data sets of real frames: collection, reading (manifests, shards, windows), start windows.

May import: the base modules (`errors`, `files`, `version`) and `keycld_gym.sim`.
"""
