"""Refitting a model's physical constants over long windows: `keycld-gym fit-constants`.

The dynamics phase fits the constants on rollouts of about a second, each from a start state
that is itself a free parameter. Errors that show only over seconds pass unseen there: the
bundled pendulum swung 0.5% slow and lost 3% more amplitude per period than the real one, and
its held-out predictions ended after a median 1.9 s, where the true constants behind the
same encoder and start estimate held 9.5 s (`keycld_gym.analysis.prediction_budget`).

Here only the Lagrangian's few constants are fitted (mass matrix, gravity, input, damping,
rail walls; not the constraint constants, which the keypoints measure, nor any network), on
the training sequences of the dynamics data, each predicted open loop from the state that
its first frames give (`WINDOWS.evaluation_start`, estimated by shooting as the evaluation
does), so that what is fitted is what a prediction is scored on:

    minimise over theta  sum over windows, frames t < T_w, keypoints  rho(|q_theta(t) - y(t)|)

by Gauss-Newton: the Jacobian of every window's predicted keypoints with respect to the P
constants by finite differences, all P + 1 constant sets stepped as one batch (the
ensemble's stacked step, `keycld_gym.model.ensemble`), so an iteration costs about one
rollout of P + 1 times the windows and no backward pass. rho is Huber's loss (reweighted
least squares); T_w, the frames a window counts, ends where its prediction first strays
`limit` from the keypoints, renewed every iteration: beyond it a chaotic system's error says
nothing about the constants, and the counted span grows as the fit improves. A step that
does not lower the cost is halved; the start states are re-estimated with the new constants
at every iteration (cold, as the evaluation estimates them: refined from the last ones, the
acrobot's went astray). The directions the data leave void (the Lagrangian's free scale, an
unused actuator component) are dropped by the pseudo-inverse.

The model's ensemble members, if it has them, are refitted alike, each on its own bootstrap
sample of the sequences (the one its dynamics phase drew), so that they keep disagreeing
where the data leave the constants open.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from keycld_gym.data.collect import MANIFEST
from keycld_gym.data.dataset import split_sequences
from keycld_gym.files import sha256_file
from keycld_gym.model.ensemble import DynamicsEnsemble, member_names, member_state
from keycld_gym.model.estimation import fit_trajectory
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.sim.systems import WINDOWS
from keycld_gym.training.dynamics_phase import bootstrap_sample

# The Lagrangian's free scale (the least-squares start fixes M_K[0, 0] = 1 the same way)
_FIXED = {("dynamics.mass_raw_diag", 0)}


def constant_entries(model: KeyCLDModel) -> list[tuple[str, int]]:
    """(parameter name, flat index) of every constant the fit moves: the dynamics' physical constants
    less the constraint constants and the Lagrangian's scale."""
    constraint_ids = {id(p) for p in model.dynamics.constraints.parameters()}
    physical = {id(p) for p in model.dynamics.physical_parameters() if id(p) not in constraint_ids}
    return [(name, i) for name, p in model.named_parameters() if id(p) in physical
            for i in range(p.numel()) if (name, i) not in _FIXED]


def training_sequences(data: list[str | Path], system: str, val_fraction: float) -> tuple[dict[str, np.ndarray], ...]:
    """Frames `(S, T, H, W, 3)` and physics-rate actions `(S, T, A)` of the training and of the validation
    sequences of the data sets (equal lengths; either may hold none)."""
    parts = [split_sequences(d, system, val_fraction) for d in data]
    out = []
    for split in (0, 1):
        sets = [p[split] for p in parts if len(p[split]["frames"])]
        if len({s["frames"].shape[1] for s in sets}) > 1:
            raise ValueError(f"fit-constants needs sequences of one length; {[str(d) for d in data]} hold "
                             f"{sorted({s['frames'].shape[1] for s in sets})} frames: pass the dynamics data set alone")
        out.append({k: np.concatenate([s[k] for s in sets]) if sets else np.empty((0,)) for k in ("frames", "actions")})
    return tuple(out)


class LongWindows:
    """The long-window prediction problem of one model on encoded sequences (module docstring)."""

    def __init__(self, model: KeyCLDModel, keypoints: torch.Tensor, actions: torch.Tensor, start_frames: int,
                 limit: float, robust: float):
        self.model, self.limit, self.robust = model, limit, robust
        self.kp, self.actions = keypoints.double(), actions.double()  # (S, T, K, 2), (S, T, A)
        self.n0 = start_frames
        self.target = self.kp[:, start_frames:]  # (S, H, K, 2): the frames after the start window's last
        self.entries = constant_entries(model)
        self.q0: torch.Tensor | None = None
        self.v0: torch.Tensor | None = None

    # -- the constants as one vector ------------------------------------------------------
    def theta(self) -> torch.Tensor:
        """The fitted constants `(P,)` as they are in the model."""
        params = dict(self.model.named_parameters())
        return torch.stack([params[n].detach().flatten()[i] for n, i in self.entries])

    def set_theta(self, theta: torch.Tensor) -> None:
        """Put constants `(P,)` into the model."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for (n, i), x in zip(self.entries, theta):
                params[n].view(-1)[i] = x

    def variants(self, thetas: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Member parameter sets (`member_state` form) of the model with constants `(V, P)` in place."""
        own = member_state(self.model)
        out = []
        for theta in thetas:
            m = {n: t.clone() for n, t in own.items()}
            for (n, i), x in zip(self.entries, theta):
                m[n].view(-1)[i] = x
            out.append(m)
        return out

    # -- prediction -----------------------------------------------------------------------
    def estimate_starts(self) -> None:
        """Each window's state at the start window's last frame with the current constants, fitted as the evaluation fits it."""
        qs, vs = fit_trajectory(self.model, self.kp[:, :self.n0], self.actions[:, :self.n0 - 1])
        self.q0, self.v0 = qs[:, -1].detach(), vs[:, -1].detach()

    @torch.no_grad()
    def predict(self, thetas: torch.Tensor) -> torch.Tensor:
        """Keypoints `(V, S, H, K, 2)` predicted from the held starts under constants `(V, P)`, stepped as one batch."""
        theta0 = self.theta()
        self.set_theta(thetas[0])
        try:
            ensemble = DynamicsEnsemble(self.model, self.variants(thetas[1:]))
            v_count = len(thetas)
            q = self.q0.expand(v_count, *self.q0.shape).clone()
            v = self.v0.expand(v_count, *self.v0.shape).clone()
            out = []
            for t in range(self.target.shape[1]):
                q, v = ensemble.step(q, v, self.actions[:, self.n0 - 1 + t])
                out.append(q)
        finally:
            self.set_theta(theta0)
        return torch.stack(out, 2)

    def counted(self, pred: torch.Tensor) -> torch.Tensor:
        """Mask `(S, H)` of the frames each window counts: those before its prediction `(S, H, K, 2)` first strays `limit`."""
        err = (pred - self.target).norm(dim=-1).amax(-1)  # (S, H): the worst keypoint
        return (err > self.limit).long().cumsum(1) == 0

    def cost(self, pred: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Huber cost over the counted frames of predictions `(..., S, H, K, 2)`, and the IRLS weights `(..., S, H, K)`."""
        err = (pred - self.target).norm(dim=-1) * mask[..., None]
        r = self.robust
        huber = torch.where(err <= r, err**2, 2 * r * err - r**2)
        return huber.flatten(-3).sum(-1), (r / err.clamp_min(r)) * mask[..., None]


def fit_model_constants(model: KeyCLDModel, keypoints: torch.Tensor, actions: torch.Tensor, *, iterations: int,
                        start_frames: int, limit: float, robust: float, eps: float, rtol: float,
                        progress: bool = True, desc: str = "fit-constants") -> dict[str, Any]:
    """Gauss-Newton on the model's constants (in place) over windows `(S, T, K, 2)` under actions `(S, T, A)`; the record."""
    problem = LongWindows(model, keypoints, actions, start_frames, limit, robust)
    theta = problem.theta().double()
    scale = theta.abs().clamp_min(0.1)  # steps and the pseudo-inverse in units of each constant's size
    p = len(theta)
    history = []
    dtype = next(model.parameters()).dtype
    model.double()
    try:
        for it in tqdm(range(iterations + 1), desc=desc, disable=not progress):
            problem.estimate_starts()
            pred = problem.predict(theta[None])[0]
            mask = problem.counted(pred)
            cost, weight = problem.cost(pred, mask)
            history.append({"iteration": it, "cost": float(cost), "counted_s": float(mask.sum(1).double().median())
                            * model.dt, "counted_frames": int(mask.sum())})
            if it == iterations:
                break
            probes = theta + torch.cat([torch.zeros(1, p), torch.diag(eps * scale)]).double()
            preds = problem.predict(probes)  # (P + 1, S, H, K, 2)
            root = weight.sqrt().repeat_interleave(2, -1)  # (S, H, 2K)
            r0 = ((preds[0] - problem.target).flatten(-2) * mask[..., None] * root).flatten()
            jac = ((preds[1:] - preds[:1]).flatten(-2) / eps * mask[..., None] * root).flatten(1)  # (P, N)
            step = torch.linalg.pinv(jac.T, rtol=rtol) @ r0  # in units of `scale`
            candidate, accepted = theta, False
            for _ in range(6):
                trial = theta - step * scale
                trial_cost, _ = problem.cost(problem.predict(trial[None])[0], mask)
                if trial_cost < cost:
                    candidate, accepted = trial, True
                    break
                step = 0.5 * step
            history[-1]["accepted"] = accepted
            if not accepted:
                break
            theta = candidate
            problem.set_theta(theta)
    finally:
        model.to(dtype)
    return {"constants": [f"{n}[{i}]" for n, i in problem.entries], "before": history[0], "after": history[-1],
            "history": history, "theta": theta.tolist()}


def fit_constants(model: KeyCLDModel, data: list[str | Path], *, steps: int = 5, seed: int = 0, progress: bool = True,
                  max_sequences: int | None = None, limit: float = 0.1, robust: float = 0.01, eps: float = 1e-4,
                  rtol: float = 1e-6, val_fraction: float | None = None) -> dict[str, Any]:
    """Refit the model's constants (and each ensemble member's, on its bootstrap sample; in place) over the
    training sequences of `data`.

    steps: Gauss-Newton iterations; limit: keypoint error (image units) past which a window's
    frames stop counting; robust: the Huber loss's knee (image units); eps: the finite
    difference, relative to each constant's size (at least 0.1). The model's own validation
    split stays out, and its long-window cost is reported before and after. With
    `max_sequences` the members' bootstrap samples are drawn from the sequences kept.
    """
    t0 = time.time()
    if steps < 1:
        raise ValueError(f"fit-constants needs at least one iteration, got {steps}")
    if model.dynamics.constraints is None:
        raise ValueError("fit-constants needs a constrained model: a neural ODE has no physical constants to refit")
    if val_fraction is None:
        val_fraction = float(model.checkpoint_config.get("data", {}).get("val_fraction", 0.1))
    rng = np.random.default_rng(seed)
    start_frames = model.spec.frames(WINDOWS.evaluation_start)
    split_data = {}
    for split, d in zip(("train", "val"), training_sequences(data, model.spec.name, val_fraction)):
        if split == "train" and max_sequences is not None and len(d["frames"]) > max_sequences:
            keep = np.sort(rng.choice(len(d["frames"]), max_sequences, replace=False))
            d = {k: v[keep] for k, v in d.items()}
        split_data[split] = (model.encode_frames(d["frames"]) if len(d["frames"]) else None,
                             torch.from_numpy(np.asarray(d["actions"], np.float32)))
    kp, act = split_data["train"]
    if kp is None:
        raise ValueError(f"no training sequences in {[str(d) for d in data]}")
    if kp.shape[1] < start_frames + 2:
        raise ValueError(f"sequences of {kp.shape[1]} frames are too short: fit-constants needs more than the "
                         f"{start_frames}-frame start window")
    settings = dict(start_frames=start_frames, limit=limit, robust=robust, eps=eps, rtol=rtol)

    def held_out() -> dict[str, Any] | None:
        kp_val, act_val = split_data["val"]
        if kp_val is None:
            return None
        return fit_model_constants(model, kp_val, act_val, iterations=0, progress=False, **settings)["after"]

    val_before = held_out()
    own = fit_model_constants(model, kp, act, iterations=steps, progress=progress, **settings)
    members = []
    ensemble = model.ensemble
    if ensemble is not None:
        seeds = model.checkpoint_config.get("ensemble", {}).get("seeds") or [None] * (ensemble.size - 1)
        own_state, fitted = member_state(model), []
        params = dict(model.named_parameters())
        for i, (member, boot) in enumerate(zip(ensemble.members(), seeds), 1):
            with torch.no_grad():
                for n in member_names(model):
                    params[n].copy_(member[n])
            pool = bootstrap_sample(len(kp), boot)  # the sample its dynamics phase drew
            members.append(fit_model_constants(model, kp[pool], act[pool], iterations=steps, progress=progress,
                                               desc=f"fit-constants member {i}", **settings))
            fitted.append(member_state(model))
        with torch.no_grad():
            for n in member_names(model):
                params[n].copy_(own_state[n])
        model.ensemble = DynamicsEnsemble(model, fitted)
    return {
        "model": own, "members": [{"before": m["before"], "after": m["after"]} for m in members],
        "validation": {"before": val_before, "after": held_out()},
        "train_sequences": int(kp.shape[0]), "frames_per_sequence": int(kp.shape[1]),
        "data": [{"path": str(d), "manifest_sha256": sha256_file(Path(d) / MANIFEST)} for d in data],
        "steps": steps, "seed": seed, **settings, "wall_time_s": round(time.time() - t0, 1),
    }
