"""Phase 2 of training: the dynamics and reward head learn from rollouts against encoded keypoints.

The frozen encoder turns every training sequence into keypoints; the keypoints are put in
the order the constraints name (`keypoint_order`), the constraint constants start at their
measured values, and the dynamics and reward head learn from multi-step rollouts. Rollouts
start at frames every `start_stride` physics steps of each sequence, and each of those start
states is a free parameter fitted with the model (noisy differenced start velocities made a
prototype's learned damping spurious), refit by shooting every `refit_starts_every` steps;
the rollout horizon grows over training. A structured Lagrangian starts from a
least-squares fit of its equations of motion (`keycld_gym.model.physics_fit`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from keycld_gym.data.dataset import WindowDataset
from keycld_gym.files import write_json
from keycld_gym.model.estimation import fit_trajectory, initial_guess, refine_trajectory
from keycld_gym.model.keycld import KeyCLDModel, init_constraints_from
from keycld_gym.model.physics_fit import apply_physics, fit_physics
from keycld_gym.sim.systems import WINDOWS
from keycld_gym.training.config import TrainConfig

_KEYPOINT_FLIP = (-1.0, 1.0)  # a keypoint's (x, y) in its mirror image, x = 0 the camera's centre line


def rollout_loss(errors: torch.Tensor, kind: str, robust_scale: float = 1.0) -> torch.Tensor:
    """The dynamics loss of per-rollout mean squared errors `(B,)`: their mean, or robust (`TrainConfig.rollout_loss`).

    Robust: each error e counts as s log(1 + e / s), s `robust_scale` times the batch's median.
    """
    if kind == "mse":
        return errors.mean()
    scale = robust_scale * errors.detach().median().clamp_min(1e-12)
    return (scale * torch.log1p(errors / scale)).mean()


def bootstrap_sample(sequences: int, bootstrap_seed: int | None) -> np.ndarray:
    """Indices `(S,)` of the sequences an ensemble member learns from: as many drawn with replacement by
    `bootstrap_seed` (`TrainConfig.bootstrap_seed`), or each once where it is None."""
    if bootstrap_seed is None:
        return np.arange(sequences)
    return np.random.default_rng(bootstrap_seed).integers(0, sequences, sequences)


class DynamicsPhase:
    """Steps of phase 2 on `train`'s sequences; the fitted start states are its own state."""

    name = "dynamics"

    def __init__(self, model: KeyCLDModel, config: TrainConfig, train: WindowDataset, rng: np.random.Generator,
                 out: Path, start_states: tuple[torch.Tensor, torch.Tensor] | None = None,
                 keypoints: torch.Tensor | None = None):
        self.model, self.config, self.train, self.rng, self.out = model, config, train, rng, Path(out)
        self.start_q: torch.Tensor | None = None  # (S, G, K, 2): sequence, start
        self.start_v: torch.Tensor | None = None
        # start states fitted by a run of the same data (an ensemble's first member), or of its
        # first sequences (the real-task loop's last round): refined from there by a few
        # Gauss-Newton steps instead of fitted cold (most of the set-up's time)
        self.warm_starts = start_states
        self.given_keypoints = keypoints  # the encoder's keypoints of the training sequences, if the caller has them
        self._optimizer: torch.optim.Optimizer | None = None
        self._kp: torch.Tensor | None = None
        self._actions_rewards: tuple[torch.Tensor, torch.Tensor] | None = None  # built once: `data` runs every step
        self.pool = self.sequence_pool()

    def sequence_pool(self) -> torch.Tensor:
        """Indices `(S,)` of the (mirrored) sequences rollouts are drawn from: each once, or a bootstrap sample.

        A bootstrap draws the recorded sequences with replacement (`TrainConfig.bootstrap_seed`);
        a drawn sequence brings its mirror image along.
        """
        n = self.train.num_sequences
        drawn = torch.from_numpy(bootstrap_sample(n, self.config.bootstrap_seed))
        return torch.cat([drawn, drawn + n]) if self.config.mirror_sequences else drawn

    @property
    def total_steps(self) -> int:
        """Optimizer steps of this phase."""
        return self.config.dynamics_steps

    def encode_sequences(self, frames: np.ndarray) -> torch.Tensor:
        """Keypoints `(S, T, K, 2)` of uint8 frames `(S, T, H, W, 3)` (the caller's, where it gave those of these frames)."""
        given = self.given_keypoints
        if given is not None:
            if tuple(given.shape[:2]) != tuple(frames.shape[:2]):
                raise ValueError(f"the given keypoints {tuple(given.shape)} are not of the {tuple(frames.shape[:2])} "
                                 "training frames")
            return given
        return self.model.encode_frames(frames)

    def mirrored(self, x: torch.Tensor, flip: tuple[float, ...]) -> torch.Tensor:
        """Sequences `(S, ...)` followed by their mirror images `x * flip` `(2S, ...)` if `TrainConfig.mirror_sequences`.

        The mirror image (the camera looks at the plane of motion, centred on its symmetry):
        keypoints' x negated (`flip` (-1, 1) on `(S, T, K, 2)`), actions negated (a push
        along x or a torque about the camera's axis turns round: (-1,)), rewards kept ((1,)).
        """
        if not self.config.mirror_sequences:
            return x
        return torch.cat([x, x * x.new_tensor(flip)])

    def data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoded keypoints `(S, T, K, 2)`, actions `(S, T, A)` and rewards `(S, T)` of the training sequences.

        S counts each sequence twice with `TrainConfig.mirror_sequences` (see `mirrored`).
        """
        if self._kp is None:
            self._kp = self.mirrored(self.encode_sequences(self.train.data["frames"]), _KEYPOINT_FLIP)
        if self._actions_rewards is None:
            self._actions_rewards = (self.mirrored(torch.from_numpy(self.train.data["actions"]).float(), (-1.0,)),
                                     self.mirrored(torch.from_numpy(self.train.data["rewards"]).float(), (1.0,)))
        return self._kp, *self._actions_rewards

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam with three rates: the networks, the physical constants, the start states (prepared first)."""
        c = self.config
        if self.start_q is None:
            self.prepare()
        self.start_q.requires_grad_(True)
        self.start_v.requires_grad_(True)
        self._optimizer = torch.optim.Adam([
            {"params": self.model.network_parameters(), "lr": c.dynamics_lr},
            {"params": self.model.physical_parameters(), "lr": c.physics_lr},
            {"params": [self.start_q, self.start_v], "lr": c.start_state_lr},
        ])
        return self._optimizer

    def prepare(self) -> None:
        """Order keypoints by the constraints, start the constraint constants, fit the start states.

        A continued model (`TrainConfig.continue_from`) keeps its order and constants.
        """
        kp = self.encode_sequences(self.train.data["frames"])
        if self.config.continue_from is None:
            order = self.model.keypoint_order(kp.flatten(0, 1))
            if order != list(range(len(order))):
                self.model.permute_keypoints(order)
                kp = kp[:, :, order]
        kp = self.mirrored(kp, _KEYPOINT_FLIP)
        self._kp = kp
        if self.config.continue_from is None:
            init_constraints_from(kp.flatten(0, 1), self.model)
            if self.model.projects and self.model.config.dynamics.structured:
                # the structured Lagrangian's constants from a least-squares fit of its equations of
                # motion: gradient steps from a small start took too long to reach them
                _, acts, _ = self.data()
                fit = fit_physics(self.model.dynamics, kp[self.pool], acts[self.pool], self.model.dt)
                apply_physics(self.model.dynamics, fit)
                write_json(self.out / "physics_fit.json", fit.to_dict())
        # a line fit over the first frames after each start to begin with; training refines them
        guesses = [self.model.project(*initial_guess(kp[:, s:], self.model.dt)) for s in self.start_frames().tolist()]
        self.start_q = torch.stack([g[0] for g in guesses], 1).detach().clone()  # (S, G, K, 2)
        self.start_v = torch.stack([g[1] for g in guesses], 1).detach().clone()
        warm = 0
        if self.warm_starts is not None:
            q, v = (s.detach().clone().float() for s in self.warm_starts)
            warm = q.shape[0]
            if q.shape[1:] != self.start_q.shape[1:] or warm > kp.shape[0] or (
                    warm < kp.shape[0] and self.config.mirror_sequences):
                raise ValueError(f"warm start states {tuple(q.shape)} do not fit {kp.shape[0]} sequences x "
                                 f"{len(self.start_frames())} starts")
            self.start_q[:warm], self.start_v[:warm] = q, v
        if self.start_fit_frames >= 2:
            if warm:
                self.refit_start_states(cold=False, sequences=slice(0, warm))
            if warm < kp.shape[0]:
                self.refit_start_states(cold=True, sequences=slice(warm, None))

    def refit_start_states(self, cold: bool = False, sequences: slice = slice(None)) -> None:
        """Fit the start states of `sequences` (all) by shooting through the current model over the frames after each.

        `cold`: from the line fits (L-BFGS, coarse to fine); else from the current start
        states, which are close: a few Gauss-Newton steps, no backward pass.
        """
        kp, acts, _ = self.data()
        kp, acts = kp[sequences], acts[sequences]
        t_len = kp.shape[1]
        with torch.no_grad():
            for g, s in enumerate(self.start_frames().tolist()):
                n = min(self.start_fit_frames, t_len - s)
                window, u = kp[:, s:s + n], acts[:, s:s + n - 1]
                if cold:
                    qs, vs = fit_trajectory(self.model, window, u)
                else:
                    qs, vs = refine_trajectory(self.model, window, u,
                                               (self.start_q[sequences, g], self.start_v[sequences, g]))
                self.start_q[sequences, g] = qs[:, 0]
                self.start_v[sequences, g] = vs[:, 0]
        if self._optimizer is not None:
            # the start states jumped: their Adam moments belong to the old values
            for p in (self.start_q, self.start_v):
                self._optimizer.state.pop(p, None)

    @property
    def start_fit_frames(self) -> int:
        """Frames each start state is fitted over."""
        c = self.config.start_fit_frames
        return self.model.spec.frames(WINDOWS.start_fit) if c is None else c

    def start_frames(self) -> torch.Tensor:
        """Frames `(G,)` of each sequence where rollouts start (their states are fitted)."""
        frames = self.train.data["frames"].shape[1]
        return torch.arange(0, frames - 1 - self.config.horizon_start + 1, max(1, self.config.start_stride))

    def horizon(self, step: int) -> int:
        """Rollout length at `step`: grows linearly to the whole sequence (or `max_horizon`)."""
        c = self.config
        full = self.train.data["frames"].shape[1] - 1
        if c.max_horizon is not None:
            full = min(full, c.max_horizon)
        frac = min(1.0, step / max(1, c.horizon_ramp_steps))
        return int(round(c.horizon_start + frac * (full - c.horizon_start)))

    def step(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """One optimizer step on a random batch of rollouts; returns the logged values."""
        c = self.config
        if c.refit_starts_every and self.start_fit_frames >= 2 and step and step % c.refit_starts_every == 0:
            self.refit_start_states()
        kp, acts, rews = self.data()
        h = self.horizon(step)
        starts = self.start_frames()
        usable = int((starts <= kp.shape[1] - 1 - h).sum())  # starts with h frames after them
        idx = self.pool[torch.from_numpy(self.rng.integers(0, len(self.pool), c.dynamics_batch))]
        j = torch.from_numpy(self.rng.integers(0, usable, c.dynamics_batch))
        frames = starts[j, None] + torch.arange(h + 1)  # (B, h + 1)
        q0, v0 = self.model.project(self.start_q[idx, j], self.start_v[idx, j])
        u = acts[idx[:, None], frames[:, :-1]]
        qs, vs = self.model.rollout(q0, v0, u)
        per_rollout = ((qs - kp[idx[:, None], frames]) ** 2).mean((1, 2, 3))
        dyn = rollout_loss(per_rollout, c.rollout_loss, c.robust_scale)
        r_pred = self.model.reward(qs[:, 1:].detach(), vs[:, 1:].detach(), u)
        rew = ((r_pred - rews[idx[:, None], frames[:, :-1]]) ** 2).mean()
        has_damping = self.model.config.dynamics.kind != "neural_ode"
        damping = self.model.dynamics.damping() if has_damping else qs.new_zeros(1)
        loss = dyn + c.reward_weight * rew + c.damping_prior * damping.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in optimizer.param_groups:
            # an ablation leaves some groups without gradients (the neural ODE has no physical constants)
            grads = [p for p in group["params"] if p.grad is not None]
            if grads:
                torch.nn.utils.clip_grad_value_(grads, c.grad_clip)
        optimizer.step()
        values = {"dynamics_mse": per_rollout.mean().item(), "dynamics_median": per_rollout.median().item(),
                  "reward_mse": rew.item(), "horizon": float(h)}
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite loss at dynamics step {step}: lower --dynamics-lr")
        if has_damping:
            values["damping_max"] = float(damping.detach().max())
        return values

    def extra_log(self, step: int) -> dict[str, float]:
        """Nothing beyond the step's own values."""
        return {}

    def state(self) -> dict:
        """What an exact resume needs beyond the model and optimizer: the fitted start states."""
        return {"start_q": self.start_q, "start_v": self.start_v}

    def load_state(self, state: dict) -> None:
        """Inverse of `state`."""
        self.start_q, self.start_v = state["start_q"], state["start_v"]
