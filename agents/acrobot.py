"""Acrobot swing-up recipes (action repeat 4). No bundled model yet: train one first."""

from . import cartpole

# cartpole's SB3 recipes until the acrobot has a model to tune on; no energy controller yet
# (cartpole's settings shape a pole's energy about a cart, which the acrobot has not)
RECIPES = [r.replace(system="acrobot") for r in cartpole.RECIPES if r.algo != "energy"]
