"""One model recipe per system: the data and training settings that made its bundled model.

`keycld-gym train --system X` starts from the recipe's settings (flags override them), and
`keycld-gym pipeline --system X` runs the whole recipe from nothing: collection, the keypoint
phase, the dynamics phase, the reward head, the renderer's read-back, the measured
observation noise and the held-out evaluation.

The data sizes are in frames of the task's own reset (the `task` regime). Frame counts and
horizons here are per system on purpose: the physics step differs (cartpole and acrobot
0.01 s, pendulum 0.02 s), so each is stated where its system is.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from keycld_gym.data.collect import CollectConfig
from keycld_gym.model.dynamics import DynamicsConfig
from keycld_gym.model.encoder import EncoderConfig
from keycld_gym.model.keycld import ModelConfig
from keycld_gym.model.renderer import RendererConfig
from keycld_gym.model.tracking import parse_estimator
from keycld_gym.sim.systems import get_system
from keycld_gym.training.config import TrainConfig
from keycld_gym.training.constants_fit import fit_constants

# what a recipe may set of the constants refit (the rest is the pipeline's: model, data, steps)
_CONSTANTS_FIT_SETTINGS = set(inspect.signature(fit_constants).parameters) - {"model", "data", "steps", "seed", "progress"}


@dataclass(frozen=True)
class DataPlan:
    """One collection of real sequences: from the task's own reset, or (regime "states") from set states."""

    name: str  # the data set's folder name in a pipeline run
    episodes: int
    frames: int  # per sequence, at the physics rate
    seed: int
    regime: str = "task"

    def config(self, system: str) -> CollectConfig:
        """The collection's settings."""
        return CollectConfig(system=system, episodes=self.episodes, frames=self.frames, seed=self.seed,
                             regime=self.regime)

    @property
    def total_frames(self) -> int:
        """Real frames the plan records."""
        return self.episodes * self.frames


@dataclass(frozen=True)
class ModelRecipe:
    """Everything that makes one system's model, from real data to a bundle-ready folder.

    Attributes:
        keypoint_data: short sequences for the keypoint phase (many distinct frames).
        dynamics_data: longer sequences for the dynamics phase (rollouts over seconds).
        eval_data: held-out sequences (another seed) for the observation noise and the
            evaluation; never trained on. Long enough for the spec's `prediction_horizon_s`.
        states_eval_data: more held-out sequences for the evaluation, from start states set
            across the state space (None: none): a model is scored where the task's reset
            does not go as well.
        model: the model's settings (encoder, renderer, dynamics).
        train: `TrainConfig` settings of both training phases (the keypoint phase runs
            with `dynamics_steps=0`, the dynamics phase from its encoder).
        reward_steps, renderer_steps: steps of the reward head and renderer refits.
        renderer_fit: further settings of the renderer refit (`fit_renderer`'s loss weights).
        ensemble_members: dynamics members of the finished model (`keycld_gym.model.ensemble`):
            1, the model alone; K > 1 trains K - 1 more after the renderer refit.
        constants_steps: Gauss-Newton iterations of the constants' long-window refit
            (`keycld_gym.training.constants_fit`) of the finished model and each member
            (0: none); constants_fit: its further settings (`fit_constants`' keywords).
        keypoint_limit_px: the keypoint phase's check (`keycld_gym.training.keypoint_check`):
            its largest error in pixels against the true bodies on held-out frames (None: no
            check); keypoint_attempts: how many seeds the phase may try to pass it.
        noise_estimator: the real-side estimator whose error `observation_noise.json`
            records ('window', 'filter' or its JSON; None: the one the system's bundled
            keypoint agent meets the real task with).
    """

    system: str
    keypoint_data: DataPlan
    dynamics_data: DataPlan
    eval_data: DataPlan
    states_eval_data: DataPlan | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: dict[str, Any] = field(default_factory=dict)
    reward_steps: int = 4000
    renderer_steps: int = 1000
    renderer_fit: dict[str, Any] = field(default_factory=dict)
    noise_estimator: str | None = None
    # 3.5 times the worst bundled model's error (cartpole, 0.28 px), a fifth of a missed
    # body's: a keypoint that never found the pole sits pixels from it in most frames
    keypoint_limit_px: float | None = 1.0
    keypoint_attempts: int = 3
    ensemble_members: int = 1
    constants_steps: int = 0
    constants_fit: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        get_system(self.system)
        if self.ensemble_members < 1:
            raise ValueError(f"{self.system} recipe: ensemble_members must be at least 1, got {self.ensemble_members}")
        if self.keypoint_attempts < 1:
            raise ValueError(f"{self.system} recipe: keypoint_attempts must be at least 1, got {self.keypoint_attempts}")
        if self.keypoint_limit_px is not None and not self.keypoint_limit_px > 0:
            raise ValueError(f"{self.system} recipe: keypoint_limit_px must be positive (or None: no check), "
                             f"got {self.keypoint_limit_px}")
        if self.constants_steps < 0:
            raise ValueError(f"{self.system} recipe: constants_steps must be non-negative, got {self.constants_steps}")
        unknown_fit = set(self.constants_fit) - _CONSTANTS_FIT_SETTINGS
        if unknown_fit:
            raise ValueError(f"{self.system} recipe: unknown constants_fit settings {sorted(unknown_fit)}")
        if self.noise_estimator is not None:
            parse_estimator(self.noise_estimator)  # a clear error now, not after training
        unknown = set(self.train) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"{self.system} recipe: unknown training settings {sorted(unknown)}")

    @property
    def eval_plans(self) -> tuple[DataPlan, ...]:
        """The held-out sets the evaluation scores the model on."""
        return (self.eval_data,) + ((self.states_eval_data,) if self.states_eval_data else ())

    @property
    def training_frames(self) -> int:
        """Real frames the model learns from (both training data sets)."""
        return self.keypoint_data.total_frames + self.dynamics_data.total_frames

    def with_training_frames(self, frames: int) -> "ModelRecipe":
        """The same recipe on about `frames` real training frames (the data-efficiency curve).

        Both training data sets keep their sequence length and seed and lose or gain
        sequences alike (at least one each); the held-out set and every training setting
        stay as they are, so the models differ only in how much real data they saw.
        """
        if frames <= 0:
            raise ValueError(f"training frames must be positive, got {frames}")
        scale = frames / self.training_frames

        def scaled(plan: DataPlan) -> DataPlan:
            return dataclasses.replace(plan, episodes=max(1, round(plan.episodes * scale)))

        return dataclasses.replace(self, keypoint_data=scaled(self.keypoint_data), dynamics_data=scaled(self.dynamics_data))

    def train_config(self, data: str, **overrides: Any) -> TrainConfig:
        """The recipe's `TrainConfig` on data set `data`, with `overrides` applied last."""
        settings = {"seed": self.seed, **self.train, **overrides}
        return TrainConfig(system=self.system, data=data, model=self.model, **settings)


# Heatmaps at the frame's resolution, keypoints placed on the constraints, each frame read as
# it is and mirrored (every spec's camera looks straight at the plane of motion, centred on
# its symmetry). The mirror average, on the held-out sets: cartpole 0.322 -> 0.282 px RMS
# against the tracked points, pendulum 0.143 -> 0.126, acrobot 0.200 -> 0.195
# (BENCHMARKS.md, "The mirror average").
_ENCODER = EncoderConfig(full_resolution=True, constrained=True, mirror_average=True)

# Structured dynamics for every system: a linear potential (uniform gravity), no potential
# MLP, the input matrix and damping the spec's actuators and joints name. Exact for the
# three real systems (tests/test_joint_actuators.py) and started by a least-squares fit.
_STRUCTURED = dict(linear_potential=True, potential_mlp=False)

# Held-out sequences as long as an episode allows (the spec's prediction horizon plus the
# start window fits in 1,000 physics steps for every system), and 20 more from set states
# under the same exploration.
_STATES_EVAL = DataPlan("states-eval", episodes=20, frames=1000, seed=3, regime="states")

# Five dynamics members behind the one encoder: their disagreement ranks the model's actual
# keypoint error on held-out sequences at 0.76-0.78 on all three systems, and five members
# step at 56-67% of one's speed (BENCHMARKS.md, "The real-task loop, calibration on every
# system").
_MEMBERS = 5

RECIPES: dict[str, ModelRecipe] = {
    # 25,000 + 20,000 real frames; the bundled cartpole model is this recipe's
    # (keycld_gym/weights/cartpole/README.md).
    # The push is along the rail, so the constant input matrix on the cart is the spec's
    # force in its original form.
    "cartpole": ModelRecipe(
        system="cartpole",
        keypoint_data=DataPlan("task-500", episodes=500, frames=50, seed=0),
        dynamics_data=DataPlan("task-long", episodes=100, frames=200, seed=2),
        eval_data=DataPlan("task-eval", episodes=40, frames=1000, seed=1),
        states_eval_data=_STATES_EVAL,
        # Heatmaps at the frame's resolution: on the 40 held-out sequences, keypoint error
        # 0.88 -> 0.65 px RMS against the previous half-resolution encoder (BENCHMARKS.md).
        # Keypoints placed on the constraints, drawn by a local renderer, 3,000 keypoint steps:
        # the cart on the rail and the pole's keypoint at a fixed distance from it, so the
        # tip's error along the pole (its largest part) and the cart's height error are gone:
        # 0.65 -> 0.32 px RMS against the points the keypoints track (BENCHMARKS.md, "Keypoints
        # placed on the constraints"); 0.28 with the mirror average, and with it and the SAC
        # recipe's filter an agent's real return 824.6 on unseen seeds ("The mirror average").
        model=ModelConfig(encoder=_ENCODER,
                          renderer=RendererConfig(local=True),
                          dynamics=DynamicsConfig(input_matrix="constant", input_keypoints=(0,), **_STRUCTURED)),
        # The robust loss over 0.96 s rollouts, its scale 4 batch medians: the rail-stop contacts
        # no longer set the constants. Against plain MSE over 0.48 s, the held-out VPT rose from
        # 9.5 to 14.0 (BENCHMARKS.md, "Robust scale, mirrored sequences"). At the robust loss's
        # first scale (one median) agents did worse in the real task (655 and 659 against
        # 777-825): near the top a push tilted the pole 0.74 times as much as the real one's;
        # at 4 medians 0.89 (BENCHMARKS.md, "The rail stops in the dynamics loss").
        train=dict(keypoint_steps=3000, dynamics_steps=800, rollout_loss="robust", robust_scale=4.0,
                   max_horizon=96, horizon_ramp_steps=300),
        # The renderer refit on plain MSE, as VPT scores frames: with the keypoint phase's
        # foreground weight (20) and the read-back term it drew the pole twice as thick as the
        # real one, with dark halos, and its error alone was 0.2-0.4 of VPT's bar. Measured on
        # the held-out set (BENCHMARKS.md, "The renderer on plain MSE"): reconstruction MSE
        # 0.00031 -> 0.00022, VPT 9.5 -> 11.5 with the previous dynamics, 14.0 -> 16.0 with these.
        renderer_fit=dict(weight=0.0, foreground_weight=1.0),
        # Agents train with the sliding window's error as observation noise, though they meet
        # the real task through the filter: the filter's error against the centred fit is 2-3
        # times the window's (its lag), and agents trained with it in the robust-loss model
        # scored 522 and 622 in the real task (BENCHMARKS.md, "The renderer on plain MSE").
        noise_estimator="window",
        # The constants refit over whole training sequences: held-out VPT 1.24 -> 1.92 s median
        # over 9.6 s; the agent trained before it scored 836.3 in it against 842.6, a fresh one
        # trained in it 852.5 (BENCHMARKS.md, "Constants over long windows").
        ensemble_members=_MEMBERS,
        constants_steps=5,
    ),
    # 20,000 + 20,000 real frames: the same seconds of motion per sequence as cartpole's
    # (1 s and 4 s) at the pendulum's 0.02 s step; the held-out set holds 4 s sequences.
    # No damping prior: the real hinge is damped (0.1), and the prior (cartpole's, whose
    # damping is about 0) pulled the joint damping from the least-squares 0.21 to 0.06 and
    # with it the torque gain to 36% of the truth (held-out VPT 19.5 -> 10.0; BENCHMARKS.md).
    "pendulum": ModelRecipe(
        system="pendulum",
        keypoint_data=DataPlan("task-short", episodes=400, frames=50, seed=0),
        dynamics_data=DataPlan("task-long", episodes=100, frames=200, seed=2),
        eval_data=DataPlan("task-eval", episodes=40, frames=1000, seed=1),
        states_eval_data=_STATES_EVAL,
        # The reward is sparse (1 within about 8 degrees of upright): a sigmoid head, whose
        # zero is exact far from upright.
        # The bob placed on its constraint (a fixed distance from the pivot, which the renderer
        # holds at the image centre where the camera looks), drawn by a local renderer: on the 40
        # held-out sequences, keypoint error 0.56 -> 0.14 px RMS (BENCHMARKS.md).
        model=ModelConfig(encoder=_ENCODER,
                          renderer=RendererConfig(learn_pivots=False, local=True),
                          dynamics=DynamicsConfig(input_matrix="spec", damping="joints", **_STRUCTURED),
                          reward_output="sigmoid"),
        train=dict(keypoint_steps=3000, dynamics_steps=800, max_horizon=48, horizon_ramp_steps=200, start_stride=12,
                   damping_prior=0.0),
        # The constants refit over whole 4 s sequences: the learned pendulum swung 0.5% slow and
        # lost 3% more amplitude per period than the real one, unseen over the 0.96 s rollouts
        # above; after it, held-out VPT 1.94 -> 15.24 s median over 19.6 s, beyond the noisy true
        # simulator's 5.00 (BENCHMARKS.md, "Constants over long windows").
        ensemble_members=_MEMBERS,
        constants_steps=5,
    ),
    # The keypoints are placed on the constraints (`EncoderConfig.constrained`): both links
    # share one colour and nothing marks the elbow on a straight arm, so each heatmap only
    # gives its link's direction. With the pivot held at the shoulder and a local decoder
    # drawing compact blobs and lines (nothing painted beyond the links' reach), both link
    # angles came to 0.06-0.08 rad RMS on held-out frames, against 0.2 and 1.2 with free
    # keypoints (BENCHMARKS.md); 0.014 and 0.016 rad (0.2 px) with the settings below. No pivot
    # term (`pivot_separation_weight`): once the heatmaps are read beyond half a link and off
    # the upper arm it is not needed to find the elbow, and it pushed the tip off the shoulder
    # also where a folded arm truly puts it, turning both link angles by about 0.1 sin(elbow)
    # (BENCHMARKS.md, "The acrobot's keypoints at 0.2 px").
    "acrobot": ModelRecipe(
        system="acrobot",
        keypoint_data=DataPlan("task-short", episodes=500, frames=50, seed=0),
        dynamics_data=DataPlan("task-long", episodes=100, frames=200, seed=2),
        eval_data=DataPlan("task-eval", episodes=40, frames=1000, seed=1),
        states_eval_data=_STATES_EVAL,
        model=ModelConfig(encoder=_ENCODER,
                          renderer=RendererConfig(sigma=0.05, link_sigma=0.04, learn_pivots=False, local=True,
                                                  compact=True),
                          dynamics=DynamicsConfig(input_matrix="spec", damping="joints", **_STRUCTURED)),
        # 3,000 keypoint steps: on 10,000 frames, seed 1, 1,500 more steps took the link angles
        # from 0.086 / 0.107 to 0.048 / 0.067 rad (BENCHMARKS.md, as above).
        train=dict(keypoint_steps=3000, dynamics_steps=800, max_horizon=48, horizon_ramp_steps=200,
                   damping_prior=0.0),
        # The links are a pixel and a half wide: with the keypoint phase's foreground weight the
        # renderer paints them too wide, and the read-back term made it worse. Measured on 2,048
        # held-out frames (BENCHMARKS.md): reconstruction MSE 0.0020 after the dynamics phase,
        # 0.0061 after the default refit (weight 10, foreground 20), 0.00093 after this plain
        # MSE refit (the read-back error fell too), against 0.0015 for the mean image, VPT's bar.
        renderer_steps=600, renderer_fit=dict(weight=0.0, foreground_weight=1.0),
        # Held-out VPT 0.78 -> 1.22 s median over 9.6 s (the true constants behind the same
        # encoder gave 1.26; BENCHMARKS.md, "Constants over long windows").
        ensemble_members=_MEMBERS,
        constants_steps=5,
    ),
}


def get_recipe(system: str) -> ModelRecipe:
    """The model recipe of a system."""
    return RECIPES[get_system(system).name]
