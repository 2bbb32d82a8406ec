"""An ensemble of dynamics behind one encoder: K members that disagree where the data are thin.

A member is the part of a KeyCLD model that the dynamics phase learns: the constraint
constants and the Lagrangian (mass matrix, potential, input matrix, damping, walls). The
encoder, renderer, reward head and start-state estimation are the model's own and shared.
Member 0 is the model itself; members 1..K-1 were trained like it with another seed on a
bootstrap sample of its training sequences (`keycld_gym.training.ensemble`). The structured
Lagrangian has a few dozen constants, so K members step as one batch: their constants
stacked as a leading dimension `(K, 1, ...)` that broadcasts against the states `(K, N, ...)`
in one call of the model's own step (a member with MLPs, which take no batch of weights,
steps under `torch.func.vmap` instead).

Files: the members 1..K-1 lie beside the model's weights in `ensemble.safetensors` (tensor
`"{i}/{name}"` for member i), with their provenance and checksum in `config.json`'s
`"ensemble"`; `load_model` loads them as `model.ensemble`.

Disagreement: the spread of the members' predicted keypoints after the same step from the
same state, `sqrt(mean over keypoints of the members' variance of x and y summed)`, in pixels
of the system's frame (image units times half the frame's height).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.func import vmap

from keycld_gym.model.keycld import KeyCLDModel

ENSEMBLE_WEIGHTS = "ensemble.safetensors"
MEMBER_MODULES = ("constraints.", "dynamics.")  # what a member owns; the rest of the model is shared


def member_names(model: KeyCLDModel) -> list[str]:
    """Names of the model's parameters that a member owns (each tied parameter once)."""
    return [n for n, _ in model.named_parameters() if n.startswith(MEMBER_MODULES)]


def member_state(model: KeyCLDModel) -> dict[str, torch.Tensor]:
    """A model's member parameters, detached copies."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in member_names(model)}


class DynamicsEnsemble:
    """K dynamics members of one model (member 0: the model's own), stepped together.

    Not a `torch.nn.Module`: it lives on the model as a plain attribute (`model.ensemble`),
    so the model's own state dict and checkpoint stay what they were.
    """

    def __init__(self, model: KeyCLDModel, members: list[dict[str, torch.Tensor]]):
        names = member_names(model)
        for i, m in enumerate(members, 1):
            if sorted(m) != sorted(names):
                missing, extra = sorted(set(names) - set(m)), sorted(set(m) - set(names))
                raise ValueError(f"ensemble member {i} does not fit the model: missing {missing}, unexpected {extra}")
        self.model, self.names = model, names
        own = member_state(model)
        self.params = {n: torch.stack([own[n]] + [m[n].to(own[n]) for m in members]) for n in names}  # (M, ...)
        modules = dict(model.named_modules())
        self._slots = {n: (modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names}
        # the dynamics' physical constants broadcast over leading batch dimensions; an MLP's
        # layers do not take a batch of weights, so members with one step under vmap
        nets = {id(p) for p in model.dynamics.network_parameters()}
        self._stacked = not any(id(p) in nets for n, p in model.named_parameters() if n in self._slots)
        self.force_vmap = False  # the reference path, for tests and measurements
        # the members' constants as one leading batch `(M, 1, ...)` beside the states' `(M, N, ...)`
        self._batched = {n: p.unsqueeze(1) for n, p in self.params.items()}

    @property
    def size(self) -> int:
        """Number of members K (the model's own included)."""
        return len(next(iter(self.params.values())))

    def members(self) -> list[dict[str, torch.Tensor]]:
        """Members 1..K-1's parameters (what `ensemble.safetensors` stores)."""
        return [{n: p[i] for n, p in self.params.items()} for i in range(1, self.size)]

    @torch.no_grad()
    def step(self, q: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's step from its own state: q, v `(M, N, K, 2)`, actions `(N, A)` -> `(M, N, K, 2)` x2."""
        if self.stacked:  # one call of the model's own step for all of them
            with self._swapped(self._batched):
                return self.model.step(q, v, u)

        def one(params: dict[str, torch.Tensor], q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with self._swapped(params):
                return self.model.step(q, v, u)
        return vmap(one)(self.params, q, v)

    @property
    def stacked(self) -> bool:
        """Whether the members step as one batch (no MLP among their parts), else under `vmap`."""
        return self._stacked and not self.force_vmap

    @contextmanager
    def _swapped(self, params: dict[str, torch.Tensor]) -> Iterator[None]:
        # the given tensors in place of the model's parameters for one call; a parameter the
        # dynamics share with the model (its constraint set) is one slot, swapped once
        saved = []
        try:
            for name, tensor in params.items():
                module, attr = self._slots[name]
                saved.append((module, attr, module._parameters[attr]))
                module._parameters[attr] = tensor
            yield
        finally:
            for module, attr, original in reversed(saved):
                module._parameters[attr] = original

    def disagreement(self, q: torch.Tensor) -> torch.Tensor:
        """Members' spread `(...)` in pixels of their keypoints q `(M, ..., K, 2)` (see the module docstring)."""
        spread = q.var(0, unbiased=False).sum(-1).mean(-1).sqrt()
        return spread * (self.model.spec.image_shape[0] / 2)

