"""Acrobot swing-up recipes (action repeat 4). No bundled model yet: train one first."""

from . import cartpole

RECIPES = [r.replace(system="acrobot") for r in cartpole.RECIPES]
