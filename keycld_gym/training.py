"""Training a KeyCLD model from a collected data set, on a CPU, resumable.

Two phases, both inside one `keycld-gym train` run (CPU-practical; the authors' joint U-Net
training costs ~20 h on 2 cores):

1. keypoints: encoder + renderer on single frames, reconstruction MSE with the foreground
   (pixels that differ from the data set's median image) weighted up (without the weight the
   thin pole is ignored, DESIGN.md section 6), plus small terms against dead and doubled
   keypoints (`keypoint_liveness`) and for covering the foreground with the keypoints and
   their links (`coverage_loss`), optionally a heatmap-sharpness BCE. The encoder's softmax
   runs over the foreground only (see `keycld_gym.encoder`): that is what finds the pole.
2. dynamics: the frozen encoder turns every training sequence into keypoints; the keypoints
   are put in the order the constraints name (`keypoint_order`), the constraint constants
   start at their measured values, and the dynamics and reward head learn from multi-step
   rollouts against the encoded keypoints. Rollouts start at frames every `start_stride`
   physics steps of each sequence, and each of those start states is a free parameter
   fitted with the model (noisy differenced start velocities made a prototype's learned
   damping spurious); the rollout horizon grows over training. A structured Lagrangian
   (constant input matrix, linear potential) starts from a least-squares fit of its
   equations of motion (`keycld_gym.physics_fit`).

Everything needed for an exact resume (weights, optimizer state, start states, RNG states,
step) is written every `checkpoint_every_s` seconds to `OUT/train_state.*`; the model itself
to `OUT/model` (a checkpoint folder for `load_model`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from keycld_gym.checkpoint import load_model, load_state, save_checkpoint, save_state
from keycld_gym.collect import MANIFEST, sha256_file, write_json
from keycld_gym.dataset import WindowDataset
from keycld_gym.errors import CheckpointError
from keycld_gym.estimation import fit_trajectory, initial_guess, refine_trajectory
from keycld_gym.model import KeyCLDModel, ModelConfig, init_constraints_from, keypoint_order
from keycld_gym.physics_fit import apply_physics, fit_physics
from keycld_gym.encoder import image_grid, spatial_softmax
from keycld_gym.renderer import gaussian_maps, segment_distance2
from keycld_gym.start_bank import START_BANK, collect_start_bank, write_start_bank

PHASES = ("keypoints", "dynamics", "done")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Step counts are optimizer steps; learning rates are Adam's."""

    system: str
    data: str
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    keypoints_from: str | None = None  # reuse phase 1 of a trained checkpoint (ablations)
    # phase 1: keypoints
    keypoint_steps: int = 1500
    keypoint_batch: int = 32
    keypoint_lr: float = 1e-3
    foreground_weight: float = 20.0  # the threshold is the encoder's foreground_threshold
    heatmap_weight: float = 0.0
    spread_weight: float = 1.0
    min_spread: float = 0.05
    separation_weight: float = 1.0
    coverage_weight: float = 1.0
    coverage_cutoff: float = 0.3
    # phase 2: dynamics and reward
    dynamics_steps: int = 1500
    dynamics_batch: int = 64
    dynamics_lr: float = 1e-3  # the MLPs (potential, input matrix, reward head, neural ODE)
    # The few physical constants (mass matrix, damping, rail walls, constraint constants)
    # need to move by O(1) from their start; Adam moves a parameter by about its learning
    # rate per step, so at 1e-3 800 steps left the mass matrix far from the truth (learned
    # pole inertia 10x the cart-relative truth, measured; BENCHMARKS.md).
    physics_lr: float = 1e-2
    start_state_lr: float = 3e-3
    # Every start state is refit by shooting through the current model over this many
    # frames, at the start of the phase and every `refit_starts_every` steps (0: never).
    # Measured on the true cartpole's keypoints: with line-fit starts refined by Adam alone
    # the learned accelerations came out 10-15% weak (a line through the first frames
    # overestimates the start velocity along the acceleration, and the model adapts);
    # with the true start states they came within 1-3% of the truth.
    start_fit_frames: int = 33
    refit_starts_every: int = 100
    horizon_start: int = 4
    # Rollouts start every `start_stride` physics steps of a sequence, not only at its first
    # frame: with one start per sequence a 50-step horizon used only the first quarter of
    # 200-frame sequences.
    start_stride: int = 25
    horizon_ramp_steps: int = 750
    max_horizon: int | None = None  # physics steps; default: the whole sequence
    reward_weight: float = 1.0
    damping_prior: float = 1e-2
    grad_clip: float = 5.0  # element-wise, as in the authors' code
    val_fraction: float = 0.1
    checkpoint_every_s: float = 120.0
    log_every: int = 25
    start_bank_seed: int = 10_000  # reset seeds of the shipped start frames (not in the data)

    def __post_init__(self) -> None:
        if self.keypoint_steps < 0 or self.dynamics_steps < 0:
            raise ValueError("step counts must be non-negative")
        if self.keypoints_from is None and self.keypoint_steps == 0:
            raise ValueError("keypoint_steps=0 needs keypoints_from (a checkpoint whose encoder to reuse)")

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        return cls(**d)


def foreground_weights(frames: torch.Tensor, median: torch.Tensor, weight: float, threshold: float) -> torch.Tensor:
    """Per-pixel loss weights `(B, H, W, 1)`: 1, plus `weight` where a frame differs from the median image."""
    diff = (frames - median).abs().amax(-1, keepdim=True)
    return 1.0 + weight * (diff > threshold).float()


def heatmap_sharpness_loss(heatmaps: torch.Tensor, keypoints: torch.Tensor, sigma: float) -> torch.Tensor:
    """BCE between max-normalised heatmaps `(B, K, h, w)` and stop-gradient blobs at keypoints `(B, K, 2)`."""
    probs = torch.softmax(heatmaps.flatten(-2), -1).reshape(heatmaps.shape)
    probs = probs / probs.amax((-2, -1), keepdim=True)
    target = gaussian_maps(keypoints.detach(), *heatmaps.shape[-2:], sigma)
    return torch.nn.functional.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), target)


def coverage_loss(q: torch.Tensor, foreground: torch.Tensor, links: list[tuple[int, int]], cutoff: float) -> torch.Tensor:
    """How badly the keypoints and their links cover the foreground, a stick-figure Chamfer distance.

    q: keypoints `(B, K, 2)`; foreground: masks `(B, h, w)` in {0, 1} (pixels that differ from
    the median image); links: keypoint pairs joined by a rigid link. Two terms, squared
    image-unit distances truncated at `cutoff`**2 (shadows and reflections are foreground
    too): each foreground pixel to the nearest keypoint or link segment, and each keypoint to
    the nearest foreground pixel. Unlike the reconstruction's gradient, which reaches a
    keypoint only once the decoder has learned to draw with it, this pulls a link's free end
    along the thin part it should cover (the cartpole pole) from the first step.
    """
    h, w = foreground.shape[-2:]
    grid = image_grid(h, w, q.device).to(q.dtype).reshape(1, h * w, 2)  # (1, P, 2)
    fg = foreground.reshape(len(q), h * w).to(q.dtype)
    d2 = ((grid[:, :, None] - q[:, None]) ** 2).sum(-1)  # (B, P, K)
    dists = [d2]
    for a, b in links:
        dists.append(segment_distance2(grid, q[:, None, a], q[:, None, b])[..., None])
    cap = cutoff**2
    nearest_part = torch.cat(dists, -1).amin(-1).clamp(max=cap)  # (B, P)
    cover = (fg * nearest_part).sum(1) / fg.sum(1).clamp(min=1)
    # not truncated: a keypoint far from all foreground (a dead one) is pulled onto it
    on_fg = torch.where(fg[:, :, None] > 0, d2, torch.full_like(d2, 100.0)).amin(1)  # (B, K)
    return (cover + on_fg.mean(1)).mean()


def keypoint_liveness(q: torch.Tensor, min_spread: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalties against dead and doubled keypoints, for keypoints `(B, K, 2)` of a batch of frames.

    spread: how far each keypoint's spread over the batch falls short of `min_spread` (a
    keypoint that sits still on the background explains nothing and gets almost no gradient);
    closeness: Gaussian overlap of keypoint pairs (two keypoints on the cart leave the pole
    unexplained). Both are zero for keypoints that track distinct moving parts.
    """
    spread = torch.relu(min_spread - q.std(0).norm(dim=-1)).sum()
    k = q.shape[1]
    if k < 2:
        return spread, q.new_zeros(())
    d2 = ((q[:, :, None] - q[:, None]) ** 2).sum(-1)  # (B, K, K)
    pairs = torch.triu(torch.ones(k, k, dtype=torch.bool, device=q.device), 1)
    return spread, torch.exp(-d2[:, pairs] / (2 * sigma**2)).mean()


class Trainer:
    """Runs (and resumes) the two training phases of `TrainConfig` into the folder `out`."""

    def __init__(self, config: TrainConfig, out: str | Path, *, command: str | None = None, progress: bool = True):
        self.config, self.out, self.command, self.progress = config, Path(out), command, progress
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config_file()
        torch.manual_seed(config.seed)
        self.train = WindowDataset(config.data, 1, split="train", val_fraction=config.val_fraction, system=config.system)
        self.val = WindowDataset(config.data, 1, split="val", val_fraction=config.val_fraction, system=config.system)
        if self.train.num_sequences == 0:
            raise ValueError(f"{config.data} has no training sequences")
        self.manifest = self.train.manifest
        action_dim = self.train.data["actions"].shape[-1]
        self.model = KeyCLDModel(config.system, config.model, action_dim=action_dim)
        if config.keypoints_from:
            src = load_model(config.keypoints_from)
            # where the reused encoder and renderer came from: their data count as the model's too
            self._keypoints_source = {"checkpoint": str(config.keypoints_from), "data": src.checkpoint_config.get("data"),
                                      "training": {k: v for k, v in src.checkpoint_config.get("training", {}).items()
                                                   if k != "config"}}
            if src.checkpoint_config.get("keypoints_from"):
                # that model reused its encoder and renderer in turn: they (and their data) come from further up
                self._keypoints_source = {**src.checkpoint_config["keypoints_from"], "via": str(config.keypoints_from)}
            self.model.encoder.load_state_dict(src.encoder.state_dict())
            self.model.renderer.load_state_dict(src.renderer.state_dict())
            self.model.background.copy_(src.background)
        else:
            self._keypoints_source = None
            self.model.background.copy_(self._median_image())
        self.rng = np.random.default_rng(config.seed)
        self.phase, self.step, self.elapsed = ("keypoints" if config.keypoint_steps else "dynamics"), 0, 0.0
        self.start_q: torch.Tensor | None = None
        self.start_v: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._tb = None

    # -- bookkeeping ----------------------------------------------------------------------
    def _check_config_file(self) -> None:
        path = self.out / "train_config.json"
        mine = json.loads(json.dumps(self.config.to_dict()))
        if path.exists():
            theirs = json.loads(path.read_text())
            # settings added since that run was started count as equal when at their default
            defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig(self.config.system, self.config.data))))
            for k, v in defaults.items():
                if k not in theirs and mine.get(k) == v:
                    theirs[k] = v
            if theirs != mine:
                differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise CheckpointError(
                    f"{self.out} holds a run with other settings (differ in: {', '.join(differ)}): resume it with "
                    f"the same arguments, or train into a new --out folder"
                )
        else:
            write_json(path, mine)

    @property
    def state_path(self) -> Path:
        return self.out / "train_state"

    def _log(self, values: dict[str, float]) -> None:
        path = self.out / f"log_{self.phase}.csv"
        row = {"phase": self.phase, "step": self.step, "elapsed_s": round(self.elapsed, 1), **values}
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"))
        offset = 0 if self.phase == "keypoints" else self.config.keypoint_steps
        for k, v in values.items():
            self._tb.add_scalar(f"{self.phase}/{k}", v, offset + self.step)

    def save(self) -> None:
        """Write the training state (exact resume) and the model checkpoint."""
        state = {
            "phase": self.phase, "step": self.step, "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "start_q": self.start_q, "start_v": self.start_v,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
        }
        save_state(self.state_path, state)
        folder = save_checkpoint(self.out / "model", self.model, self.meta())
        if self.phase == "done" and not (folder / START_BANK).exists():
            write_start_bank(folder, collect_start_bank(self.config.system, seed=self.config.start_bank_seed))

    def resume(self) -> bool:
        """Load the last saved state if there is one; returns whether it did."""
        if not self.state_path.with_suffix(".json").exists():
            return False
        state = load_state(self.state_path)
        self.model.load_state_dict(state["model"])
        self.phase, self.step, self.elapsed = state["phase"], int(state["step"]), float(state["elapsed"])
        self.start_q, self.start_v = state["start_q"], state["start_v"]
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self._make_optimizer()
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        return True

    def meta(self) -> dict[str, Any]:
        """What the checkpoint records about its data and training."""
        m = self.manifest
        return {
            "data": {
                "path": str(self.config.data),
                "manifest_sha256": sha256_file(Path(self.config.data) / MANIFEST),
                "regime": m["regime"], "regime_description": m.get("regime_description"),
                "sequences": m["sequences"], "frames": m["frames"],
                "frames_per_sequence": m["frames_per_sequence"], "seed": m["seed"],
                "train_sequences": self.train.num_sequences,
                "train_frames": int(np.prod(self.train.data["frames"].shape[:2])),
                "val_fraction": self.config.val_fraction,
            },
            "keypoints_from": self._keypoints_source,
            "training": {
                "command": self.command, "seed": self.config.seed, "config": self.config.to_dict(),
                "phase": self.phase, "step": self.step, "wall_time_s": round(self.elapsed, 1),
                "torch_threads": torch.get_num_threads(),
            },
        }

    # -- phases ---------------------------------------------------------------------------
    def _make_optimizer(self) -> None:
        c = self.config
        if self.phase == "keypoints":
            params = list(self.model.encoder.parameters()) + list(self.model.renderer.parameters())
            self.optimizer = torch.optim.Adam(params, lr=c.keypoint_lr)
        elif self.phase == "dynamics":
            if self.start_q is None:
                self._prepare_dynamics()
            nets = ("potential_net.", "input_net.", "ode.")  # the rest (input_const too) are physical constants
            named = list(self.model.dynamics.named_parameters())
            networks = [p for n, p in named if n.startswith(nets)] + list(self.model.reward_net.parameters())
            physics = [p for n, p in named if not n.startswith(nets)]
            physics += [p for p in self.model.constraints.parameters() if all(p is not q for q in physics)]
            self.start_q.requires_grad_(True)
            self.start_v.requires_grad_(True)
            self.optimizer = torch.optim.Adam([
                {"params": networks, "lr": c.dynamics_lr},
                {"params": physics, "lr": c.physics_lr},
                {"params": [self.start_q, self.start_v], "lr": c.start_state_lr},
            ])
        else:
            self.optimizer = None

    def run(self, resume: bool = False, stop_after: int | None = None) -> KeyCLDModel:
        """Train to the end (resuming from the last state when asked); returns the model.

        `stop_after` stops (after saving) once this call has taken that many steps, as an
        interruption would; `run(resume=True)` then continues exactly.
        """
        if resume:
            self.resume()
        elif self.state_path.with_suffix(".json").exists():
            raise CheckpointError(f"{self.out} already holds a training run: pass --resume to continue it, or pick a new --out")
        if self.optimizer is None and self.phase != "done":
            self._make_optimizer()
        last_save = tick = time.monotonic()
        taken = 0
        while self.phase != "done":
            total = self.config.keypoint_steps if self.phase == "keypoints" else self.config.dynamics_steps
            bar = tqdm(total=total, initial=self.step, desc=f"train {self.config.system}/{self.phase}",
                       disable=not self.progress, dynamic_ncols=True)
            while self.step < total:
                values = self._keypoint_step() if self.phase == "keypoints" else self._dynamics_step()
                self.step += 1
                now = time.monotonic()  # wall time of everything: steps, logs, saves, set-up
                self.elapsed, tick = self.elapsed + now - tick, now
                bar.update(1)
                taken += 1
                if self.step % self.config.log_every == 0 or self.step == total:
                    if self.phase == "keypoints" and self.step % (10 * self.config.log_every) == 0:
                        values["val_recon"] = self._val_reconstruction()
                    self._log(values)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(values.items())[:3]})
                if time.monotonic() - last_save > self.config.checkpoint_every_s:
                    self.save()
                    last_save = time.monotonic()
                if stop_after is not None and taken >= stop_after:
                    bar.close()
                    self.save()
                    return self.model
            bar.close()
            self.phase = PHASES[PHASES.index(self.phase) + 1]
            self.step = 0
            self._make_optimizer()
            self.save()
            last_save = time.monotonic()
        if self._tb is not None:
            self._tb.close()
        return self.model

    # phase 1 ------------------------------------------------------------------------------
    def _median_image(self) -> torch.Tensor:
        if not hasattr(self, "_median"):
            frames = self.train.data["frames"]
            flat = frames.reshape(-1, *frames.shape[2:])
            pick = np.random.default_rng(self.config.seed).choice(len(flat), min(2000, len(flat)), replace=False)
            self._median = torch.from_numpy(flat[np.sort(pick)]).float().div(255).median(0).values
        return self._median

    def _frames(self, data: dict, n: int, rng: np.random.Generator) -> torch.Tensor:
        s, t = data["frames"].shape[:2]
        seq, idx = rng.integers(0, s, n), rng.integers(0, t, n)
        return torch.from_numpy(data["frames"][seq, idx])

    def reconstruction_loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Foreground-weighted MSE (+ heatmap term) of uint8 frames `(B, H, W, 3)`."""
        c = self.config
        heat = self.model.heatmaps(frames)
        q = spatial_softmax(heat)
        target = frames.float() / 255.0
        recon = self.model.render(q)
        w = foreground_weights(target, self.model.background, c.foreground_weight, c.model.encoder.foreground_threshold)
        loss = (w * (recon - target) ** 2).mean()
        values = {"recon_weighted": loss.item(), "mse": ((recon - target) ** 2).mean().item()}
        if c.coverage_weight > 0:
            fg = (w[..., 0] > 1).float()[:, None]  # (B, 1, H, W)
            fg_half = torch.nn.functional.max_pool2d(fg, 2)[:, 0]
            cov = coverage_loss(q, fg_half, self.model.renderer.links.tolist(), c.coverage_cutoff)
            loss = loss + c.coverage_weight * cov
            values["coverage"] = cov.item()
        if c.spread_weight > 0 or c.separation_weight > 0:
            spread, close = keypoint_liveness(q, c.min_spread, self.model.renderer.config.sigma)
            loss = loss + c.spread_weight * spread + c.separation_weight * close
            values["dead_spread"], values["closeness"] = spread.item(), close.item()
        if c.heatmap_weight > 0:
            h = heatmap_sharpness_loss(heat, q, self.model.renderer.config.sigma)
            loss = loss + c.heatmap_weight * h
            values["heatmap_bce"] = h.item()
        return loss, values

    def _keypoint_step(self) -> dict[str, float]:
        frames = self._frames(self.train.data, self.config.keypoint_batch, self.rng)
        loss, values = self.reconstruction_loss(frames)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.optimizer.param_groups[0]["params"], self.config.grad_clip)
        self.optimizer.step()
        return values

    @torch.no_grad()
    def _val_reconstruction(self) -> float:
        data = self.val.data if self.val.num_sequences else self.train.data
        frames = self._frames(data, 128, np.random.default_rng(12345))
        target = frames.float() / 255.0
        return float(((self.model.render(self.model.encode(frames)) - target) ** 2).mean())

    # phase 2 ------------------------------------------------------------------------------
    def encode_sequences(self, frames: np.ndarray) -> torch.Tensor:
        """Keypoints `(S, T, K, 2)` of uint8 frames `(S, T, H, W, 3)`."""
        return self.model.encode_frames(frames)

    def _prepare_dynamics(self) -> None:
        """Order keypoints by the constraints, start constraint constants and start states."""
        kp = self.encode_sequences(self.train.data["frames"])
        order = keypoint_order(kp.flatten(0, 1), self.model.spec)
        if order != list(range(len(order))):
            self.model.permute_keypoints(order)
            kp = kp[:, :, order]
        init_constraints_from(kp.flatten(0, 1), self.model)
        self._kp = kp
        if self.model.projects and self.model.config.dynamics.structured:
            # the structured Lagrangian's constants from a least-squares fit of its equations of
            # motion: gradient steps from a small start took too long to reach them
            _, acts, _ = self._dynamics_data()
            fit = fit_physics(self.model.dynamics, kp, acts, self.model.dt)
            apply_physics(self.model.dynamics, fit)
            write_json(self.out / "physics_fit.json", fit.to_dict())
        # a line fit over the first frames after each start to begin with; training refines them
        guesses = [self.model.project(*initial_guess(kp[:, s:], self.model.dt)) for s in self.start_frames().tolist()]
        self.start_q = torch.stack([g[0] for g in guesses], 1).detach().clone()  # (S, G, K, 2)
        self.start_v = torch.stack([g[1] for g in guesses], 1).detach().clone()
        if self.config.start_fit_frames >= 2:
            self.refit_start_states(cold=True)

    def refit_start_states(self, cold: bool = False) -> None:
        """Fit every start state by shooting through the current model over the frames after it.

        `cold`: from the line fits (L-BFGS, coarse to fine); else from the current start
        states, which are close: a few Gauss-Newton steps, no backward pass.
        """
        kp, acts, _ = self._dynamics_data()
        t_len = kp.shape[1]
        with torch.no_grad():
            for g, s in enumerate(self.start_frames().tolist()):
                n = min(self.config.start_fit_frames, t_len - s)
                window, u = kp[:, s:s + n], acts[:, s:s + n - 1]
                if cold:
                    qs, vs = fit_trajectory(self.model, window, u)
                else:
                    qs, vs = refine_trajectory(self.model, window, u, (self.start_q[:, g], self.start_v[:, g]))
                self.start_q[:, g] = qs[:, 0]
                self.start_v[:, g] = vs[:, 0]
        if self.optimizer is not None:
            # the start states jumped: their Adam moments belong to the old values
            for p in (self.start_q, self.start_v):
                self.optimizer.state.pop(p, None)

    def start_frames(self) -> torch.Tensor:
        """Frames `(G,)` of each sequence where rollouts start (their states are fitted)."""
        frames = self.train.data["frames"].shape[1]
        return torch.arange(0, frames - 1 - self.config.horizon_start + 1, max(1, self.config.start_stride))

    def _dynamics_data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not hasattr(self, "_kp"):
            self._kp = self.encode_sequences(self.train.data["frames"])
        acts = torch.from_numpy(self.train.data["actions"]).float()
        rews = torch.from_numpy(self.train.data["rewards"]).float()
        return self._kp, acts, rews

    def horizon(self) -> int:
        """Rollout length at the current step: grows linearly to the whole sequence."""
        c = self.config
        full = self.train.data["frames"].shape[1] - 1
        if c.max_horizon is not None:
            full = min(full, c.max_horizon)
        frac = min(1.0, self.step / max(1, c.horizon_ramp_steps))
        return int(round(c.horizon_start + frac * (full - c.horizon_start)))

    def _dynamics_step(self) -> dict[str, float]:
        c = self.config
        if c.refit_starts_every and c.start_fit_frames >= 2 and self.step and self.step % c.refit_starts_every == 0:
            self.refit_start_states()
        kp, acts, rews = self._dynamics_data()
        h = self.horizon()
        starts = self.start_frames()
        usable = int((starts <= kp.shape[1] - 1 - h).sum())  # starts with h frames after them
        idx = torch.from_numpy(self.rng.integers(0, kp.shape[0], c.dynamics_batch))
        j = torch.from_numpy(self.rng.integers(0, usable, c.dynamics_batch))
        frames = starts[j, None] + torch.arange(h + 1)  # (B, h + 1)
        q0, v0 = self.model.project(self.start_q[idx, j], self.start_v[idx, j])
        u = acts[idx[:, None], frames[:, :-1]]
        qs, vs = self.model.rollout(q0, v0, u)
        dyn = ((qs - kp[idx[:, None], frames]) ** 2).mean()
        r_pred = self.model.reward(qs[:, 1:].detach(), vs[:, 1:].detach(), u)
        rew = ((r_pred - rews[idx[:, None], frames[:, :-1]]) ** 2).mean()
        has_damping = self.model.config.dynamics.kind != "neural_ode"
        damping = self.model.dynamics.damping() if has_damping else qs.new_zeros(1)
        loss = dyn + c.reward_weight * rew + c.damping_prior * damping.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            # an ablation leaves some groups without gradients (the neural ODE has no physical constants)
            grads = [p for p in group["params"] if p.grad is not None]
            if grads:
                torch.nn.utils.clip_grad_value_(grads, c.grad_clip)
        self.optimizer.step()
        values = {"dynamics_mse": dyn.item(), "reward_mse": rew.item(), "horizon": float(h)}
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite loss at {self.phase} step {self.step}: lower --dynamics-lr")
        if has_damping:
            values["damping_max"] = float(damping.detach().max())
        return values
