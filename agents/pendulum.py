"""Pendulum swing-up recipes (action repeat 4). No bundled model yet: train one first."""

from agents import cartpole

RECIPES = [r.replace(system="pendulum") for r in cartpole.RECIPES]
