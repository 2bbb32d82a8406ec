"""The settings of one training run (`keycld-gym train`), stored beside it for an exact resume."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from keycld_gym.model.keycld import ModelConfig

ROLLOUT_LOSSES = ("mse", "robust")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Step counts are optimizer steps; learning rates are Adam's."""

    system: str
    data: str
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    keypoints_from: str | None = None  # reuse phase 1 of a trained checkpoint (ablations)
    # Continue the dynamics of this trained model (member `continue_member` of its ensemble;
    # 0: the model's own) instead of starting them afresh: the real-task loop's refinement
    # (`keycld_gym.training.improve`). Constraints, Lagrangian and reward head start where they
    # are: no least-squares start, no reordering of the keypoints. `keypoints_from` names the
    # same model (its encoder reads the frames the dynamics were fitted to).
    continue_from: str | None = None
    continue_member: int = 0
    # phase 1: keypoints
    keypoint_steps: int = 1500
    keypoint_batch: int = 32
    keypoint_lr: float = 1e-3
    # The keypoint phase's learning rate at its last step, as a fraction of `keypoint_lr`
    # (cosine decay from the first step; 1: constant). On cartpole, to 0.05 over 3,000 and
    # 4,500 steps, no gain within the phase's run-to-run spread; no recipe uses it (BENCHMARKS.md).
    keypoint_lr_final: float = 1.0
    foreground_weight: float = 20.0  # the threshold is the encoder's foreground_threshold
    heatmap_weight: float = 0.0
    spread_weight: float = 1.0
    min_spread: float = 0.05
    separation_weight: float = 1.0
    coverage_weight: float = 1.0
    coverage_cutoff: float = 0.3
    # Weight of the constraints' own consistency over a batch of frames (the variance of each
    # constrained height or link length; `losses.constraint_consistency`). Nothing else tells
    # an acrobot keypoint to sit on the elbow: both links share one colour, and a keypoint on
    # the shoulder with a zero-length pivot link satisfies its own constraint.
    constraint_weight: float = 0.0
    # Against keypoints on a learned pivot (`losses.pivot_closeness`). No recipe uses it: it
    # pushes the acrobot's tip off the shoulder also where a folded arm puts it (BENCHMARKS.md).
    pivot_separation_weight: float = 0.0
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
    start_fit_frames: int | None = None  # None: `WINDOWS.start_fit` seconds at the physics rate
    refit_starts_every: int = 100
    horizon_start: int = 4
    # Rollouts start every `start_stride` physics steps of a sequence, not only at its first
    # frame: with one start per sequence a 50-step horizon used only the first quarter of
    # 200-frame sequences.
    start_stride: int = 25
    horizon_ramp_steps: int = 750
    max_horizon: int | None = None  # physics steps; default: the whole sequence
    # "robust": each rollout's squared error enters as s log(1 + e / s), s the batch's median
    # (about e for a typical rollout, about s log(e / s) for an outlier). Plain MSE ("mse") on
    # cartpole's task data gave 69% of the loss to the 5% of rollouts where the cart meets a
    # rail stop, and the few physical constants bent to those contacts (BENCHMARKS.md).
    rollout_loss: str = "mse"
    # "robust" only: s is this many batch medians. Larger keeps typical rollouts nearer their
    # plain squared error (weight 1 / (1 + e / s)) and still cuts the rare far outliers.
    robust_scale: float = 1.0
    # Dynamics phase: also learn from every training sequence's mirror image (keypoints' x and
    # actions negated): the real systems are mirror symmetric, their data need not be. On
    # cartpole's task data it did not help (held-out VPT 10.0 against 9.5, the pole's push
    # near the top 0.79 of the truth against 0.93; BENCHMARKS.md), so no recipe uses it.
    mirror_sequences: bool = False
    # Dynamics phase: learn from a bootstrap sample of the training sequences (as many, drawn
    # with replacement by this seed; None: each sequence once). An ensemble's members differ
    # in it and in `seed`, so that their disagreement reflects what the data leave open.
    bootstrap_seed: int | None = None
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
        if self.continue_from is not None and (self.keypoints_from != self.continue_from or self.keypoint_steps):
            raise ValueError("continue_from needs keypoints_from set to the same model and keypoint_steps=0: the "
                             "continued dynamics were fitted to that model's keypoints")
        if self.continue_member < 0:
            raise ValueError(f"continue_member must be a member index (0: the model's own), got {self.continue_member}")
        if self.rollout_loss not in ROLLOUT_LOSSES:
            raise ValueError(f"rollout_loss must be one of {ROLLOUT_LOSSES}, got {self.rollout_loss!r}")
        if not self.robust_scale > 0:
            raise ValueError(f"robust_scale must be a positive number of batch medians, got {self.robust_scale!r}")

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of `to_dict`."""
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d["model"])
        return cls(**d)
