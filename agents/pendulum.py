"""Pendulum swing-up recipes (the action repeat is the spec's: 2). No bundled model yet: train one first."""

from agents import cartpole

RECIPES = [r.replace(system="pendulum") for r in cartpole.RECIPES]
