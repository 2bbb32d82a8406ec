"""`AgentRecipe`: everything that defines how an agent is trained in imagination."""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from keycld_gym.model.tracking import (
    Estimator,
    Filtering,
    Tracking,
    estimator_from_dict,
    estimator_to_dict,
)

SB3_ALGOS = ("sac", "ppo")
# energy: nothing learned by RL; the world model's own energy-shaping controller
# (keycld_gym/rl/energy_control.py), its settings in `hyperparams`; mppi: nothing learned
# either, model-predictive control in the world model guided by a trained agent's value
# (keycld_gym/rl/planning.py), its settings in `hyperparams`
ALGOS = (*SB3_ALGOS, "energy", "mppi")
OBS_TYPES = ("keypoints", "pixels")
NOISES = ("measured", "estimated", "none")
# pixels: the policy's own CNN learns from the frames, or each frame goes through the world
# model's frozen keypoint encoder first (keycld_gym/rl/frame_encoding.py)
FEATURES = ("cnn", "keycld-encoder")


@dataclass(frozen=True)
class AgentRecipe:
    """One stable-baselines3 agent for one system and observation type.

    `hyperparams` go to the SB3 algorithm's constructor as they are; `total_steps` is the
    default training budget in imagined agent steps, summed over `num_envs` batched envs.
    """

    system: str
    obs_type: str
    algo: str
    policy: str
    total_steps: int
    num_envs: int
    hyperparams: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    frame_stack: int = 1  # pixels: the last n frames (or their keypoints), stacked on the last axis
    features: str = "cnn"  # pixels: one of FEATURES
    # keypoints: Gaussian noise of the model's measured real estimation error on the
    # imagined observations (observation_noise.json beside the weights), or "estimated":
    # every imagined frame's keypoints with one real frame's measured encoder noise through
    # the real env's Kalman filter (`Filtering`), which then estimates the real states too;
    # or none;
    # keycld-encoder pixels: of one real frame's encoder error, on each frame's keypoints
    observation_noise: str = "none"
    # keypoints or pixels: each imagined episode's model pushes with gain * action, the gain
    # drawn uniformly from this range (robustness to the model's error in the action's
    # effect); None: gain 1
    action_gain: tuple[float, float] | None = None
    # `keycld-gym benchmark`'s default minutes of training (the whole run adds its real
    # evaluation, about a quarter more)
    benchmark_budget_min: float = 12.0
    # share of imagined training episodes that start anywhere in the model's training data
    # (exploring_starts.npz beside the weights) instead of the task's reset; evaluations
    # always start from the task's reset
    exploring_starts: float = 0.0
    # imagined training episodes end (truncated, bootstrapped through) after this many agent
    # steps, so that more episodes start from the reset and the exploring starts; None: the
    # task's whole episode. Evaluations always run whole episodes.
    training_episode_steps: int | None = None
    # torch threads of training (`train-agent` and `benchmark` without --threads): SAC's
    # small networks and many gradient steps per vector step run faster on one thread
    torch_threads: int = 2
    # keypoints: how the real env estimates the state from its frames (`RealKeypointEnv`):
    # the sliding-window fit or the Kalman filter, with their settings; observation noise
    # "estimated" trains through the same filter in imagination
    real_estimator: Estimator = Tracking()
    # training in a model with an ensemble of dynamics: the reward minus this many times the
    # members' disagreement (pixels; MOPO's penalty), and imagined training episodes end where
    # the disagreement passes this many pixels (MOReL's); 0 and None: off. Evaluations in
    # imagination run without either, so that their returns compare with the real task's.
    uncertainty_penalty: float = 0.0
    uncertainty_limit: float | None = None
    # training in imagination: each step's reward plus this many times the change of the model's
    # energy potential (`keycld_gym.model.energy.EnergyPotential`; potential-based shaping,
    # which leaves the best policies as they were); 0: off. Evaluations run unshaped.
    energy_shaping: float = 0.0
    # training: rewards scaled by a running estimate of the discounted return's spread (SB3's
    # VecNormalize, rewards only): a swing-up's returns run from 0 to hundreds, and their
    # value errors would otherwise take most of PPO's clipped gradient norm. Observations
    # stay as they are, so the policy needs nothing more in the real task.
    normalize_reward: bool = False

    def __post_init__(self) -> None:
        if self.action_gain is not None:
            object.__setattr__(self, "action_gain", tuple(float(g) for g in self.action_gain))
            if len(self.action_gain) != 2 or not 0 < self.action_gain[0] <= self.action_gain[1]:
                raise ValueError(f"action_gain must be a range (low, high) with 0 < low <= high, got {self.action_gain}")
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; choose one of {ALGOS}")
        if self.obs_type not in OBS_TYPES:
            raise ValueError(f"unknown observation type {self.obs_type!r}; choose one of {OBS_TYPES}")
        if self.algo in ("energy", "mppi") and self.obs_type != "keypoints":
            raise ValueError(f"the {self.algo} controller acts on keypoint observations")
        if self.features not in FEATURES:
            raise ValueError(f"unknown pixel features {self.features!r}; choose one of {FEATURES}")
        if self.features != "cnn" and self.obs_type != "pixels":
            raise ValueError(f"features={self.features!r} applies to pixel observations only")
        if self.observation_noise not in NOISES:
            raise ValueError(f"observation_noise must be one of {NOISES}, got {self.observation_noise!r}")
        if self.observation_noise == "estimated" and self.obs_type != "keypoints":
            raise ValueError("observation_noise='estimated' runs the real env's filter on keypoints: use obs_type='keypoints'")
        if not isinstance(self.real_estimator, Estimator):
            raise ValueError(f"real_estimator must be a Tracking or a Filtering, got {self.real_estimator!r}")
        if self.observation_noise == "estimated" and not isinstance(self.real_estimator, Filtering):
            raise ValueError("observation_noise='estimated' trains through the real env's Kalman filter: "
                             "set real_estimator=Filtering(...)")
        if self.observation_noise != "none" and self.obs_type != "keypoints" and self.features != "keycld-encoder":
            raise ValueError("observation noise applies to keypoint observations (or keycld-encoder pixels) only")
        if not (math.isfinite(self.uncertainty_penalty) and self.uncertainty_penalty >= 0):
            raise ValueError(f"uncertainty_penalty must be a finite number >= 0, got {self.uncertainty_penalty}")
        if self.uncertainty_limit is not None and not (math.isfinite(self.uncertainty_limit) and self.uncertainty_limit > 0):
            raise ValueError(f"uncertainty_limit must be a positive number of pixels or None, got {self.uncertainty_limit}")
        if not (math.isfinite(self.energy_shaping) and self.energy_shaping >= 0):
            raise ValueError(f"energy_shaping must be a finite number >= 0, got {self.energy_shaping}")
        if not 0.0 <= self.exploring_starts <= 1.0:
            raise ValueError(f"exploring_starts must be a share in [0, 1], got {self.exploring_starts}")
        if self.training_episode_steps is not None and self.training_episode_steps < 1:
            raise ValueError(f"training_episode_steps must be positive or None, got {self.training_episode_steps}")
        if self.total_steps < 1 or self.num_envs < 1 or self.frame_stack < 1 or self.torch_threads < 1:
            raise ValueError(f"total_steps, num_envs, frame_stack and torch_threads must be positive: {self}")

    def replace(self, **changes: Any) -> "AgentRecipe":
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def with_settings(self, settings: dict[str, Any] | None, reader: Callable[..., Any]) -> "AgentRecipe":
        """A copy whose hyperparams `settings` override, each a keyword-only argument of `reader` (the controller that takes them)."""
        if not settings:
            return self
        known = [name for name, p in inspect.signature(reader).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"unknown {self.algo} settings {unknown}; the settings are {known}")
        return self.replace(hyperparams={**self.hyperparams, **settings})

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "real_estimator": estimator_to_dict(self.real_estimator)}

    def rl_zoo(self) -> dict[str, Any]:
        """This recipe as one entry of an RL Zoo hyper-parameter file (algorithm settings and budget).

        What RL Zoo cannot express is left out: the measured observation noise, exploring
        starts and action gains (those need the model's own files; `keycld-gym train-agent`
        applies them). The uncertainty penalty and limit are env options: pass them with
        `--env-kwargs uncertainty_penalty:1.0 uncertainty_limit:3.0 energy_shaping:20.0` (and `checkpoint:'MODEL'`
        for a model with an ensemble). Pixel recipes that read the world model's encoder have no RL Zoo form.
        """
        if self.features != "cnn":
            raise ValueError(f"features={self.features!r} has no RL Zoo form (a custom extractor on the model's encoder)")
        entry: dict[str, Any] = {"n_timesteps": self.total_steps, "policy": self.policy, "n_envs": self.num_envs,
                                 **self.hyperparams}
        if self.policy_kwargs:
            entry["policy_kwargs"] = dict(self.policy_kwargs)
        if self.frame_stack > 1:
            entry["frame_stack"] = self.frame_stack
        return entry

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AgentRecipe":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}")
        if "real_estimator" in d:
            d = {**d, "real_estimator": estimator_from_dict(d["real_estimator"])}
        return cls(**d)
