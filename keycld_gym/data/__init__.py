"""Data sets of real frames: collection, reading (manifests, shards, windows), start-frame banks.

May import: the base modules (`errors`, `files`, `version`) and `keycld_gym.sim`.
"""
