"""Data sets of real frames: collection, reading (manifests, shards, windows), start windows.

May import: the base modules (`errors`, `files`, `parallel`, `version`) and `keycld_gym.sim`.
"""
