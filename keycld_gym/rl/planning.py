"""Model-predictive control in the learned model (`keycld-gym evaluate-agent --agent plan`).

At every agent step the planner imagines many futures from the estimated state and acts on
the best: `samples` action sequences of `horizon` agent steps, drawn around a running mean,
are stepped in the model as one batch (`Imagination`, the imagined env's own physics and
reward head); each is scored by its discounted imagined reward plus, at the horizon, the
value a guide agent's critic puts on the end state; the mean is refitted to the best
(`elites`, weighted by exp(score / temperature), MPPI as TD-MPC uses it) `iterations` times.
The mean's first action is taken, the rest, shifted, warm-starts the next step. One
candidate in every round is the guide's own policy run closed-loop in the model.

The guide is an agent trained in imagination only (the bundled one by default), so the
planner adds no real frames: it spends the model's cheap steps at decision time, where a
policy alone spends them in training. The horizon covers what the critic values poorly
(the next fraction of a second), the critic what lies past the horizon (the reward of the acrobot's
balance is seconds away from most states). Feedback from each real frame keeps the model's
error from compounding past one horizon, which is what lets a planner score in the real
task where an open-loop exploit of the model would not (docs/method/control.md, "Planning in the model").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import SACPolicy

from keycld_gym.agents import AgentRecipe, get_recipe
from keycld_gym.envs.imagination import Imagination
from keycld_gym.files import portable_path
from keycld_gym.model.checkpoint import checkpoint_folder, load_model
from keycld_gym.model.keycld import KeyCLDModel
from keycld_gym.rl.agent import Agent, load_agent
from keycld_gym.sim.systems import get_system

Tensor = torch.Tensor
# the recorded real evaluation of a model's planner guided by the bundled agent, beside the
# model's weights (`keycld-gym evaluate-agent --agent plan --json MODEL/planning.json`); the
# benchmark lists it beside the RL agents
PLANNING_RECORD = "planning.json"


class Guide:
    """A trained keypoint agent's policy and value on observation tensors `(N, 4K)`, as the planner uses them.

    PPO: the critic's V(s) and the Gaussian's mean (clipped, as PPO acts); SAC: the smaller
    of the twin critics' Q(s, pi(s)) and the deterministic actor.
    """

    def __init__(self, agent: Agent):
        if agent.recipe.obs_type != "keypoints":
            raise ValueError(f"the planner's guide must act on keypoints, agent {agent.info.get('path', '?')} acts on "
                             f"{agent.recipe.obs_type!r}")
        policy = agent.policy
        if not isinstance(policy, (ActorCriticPolicy, SACPolicy)):
            raise ValueError(f"no value to plan with in a {type(policy).__name__}: the guide must be a PPO or SAC agent")
        self.policy = policy
        self.gamma = float(agent.recipe.hyperparams.get("gamma", 0.99))
        self.info = {"path": agent.info.get("path", "?"), "algo": agent.recipe.algo}

    @torch.no_grad()
    def action(self, obs: Tensor) -> Tensor:
        """Actions `(N, A)` in [-1, 1]."""
        obs = obs.float()
        if isinstance(self.policy, SACPolicy):
            return self.policy.actor(obs, deterministic=True)
        return self.policy.get_distribution(obs).distribution.mean.clamp(-1, 1)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        """Value estimates `(N,)` (the return from here, discounted by the guide's gamma)."""
        obs = obs.float()
        if isinstance(self.policy, SACPolicy):
            return torch.cat(self.policy.critic(obs, self.policy.actor(obs, deterministic=True)), 1).amin(1)
        return self.policy.predict_values(obs).squeeze(-1)


class ModelPredictiveControl:
    """MPPI in a KeyCLD model with a guide's terminal value (module docstring): `planner(obs)` -> actions.

    Args:
        horizon: agent steps imagined per candidate.
        samples: candidates per real env and round.
        iterations: rounds of refitting the mean per action.
        elites: best candidates the mean is refitted to.
        temperature: softmax temperature on the elites' scores, in units of their spread.
        noise: std of the candidates about the mean at each action's first round; later
            rounds use the elites' spread, at least `min_noise`.
        gamma: discount per agent step (None: the guide's, so that its value adds on the same scale).
        gains: each candidate is imagined once per gain, the model pushing with gain * action,
            and scored by the worst of them (robust to the model's error in the action's
            effect; (1.0,): the model as it is).
        seed: seeds the candidates' noise.
        ensemble_mode: with a model that has an ensemble, how its candidates are imagined:
            'off', the model's own dynamics (member 0) alone; 'member', each candidate follows
            a member drawn for it, as PETS's trajectory sampling. Members cost their steps:
            'off' steps one dynamics, 'member' all of them.
        uncertainty_penalty: each imagined step's reward minus this times the members'
            disagreement in pixels (with 'member'): plans keep to where the model knows.
    """

    def __init__(self, model: KeyCLDModel, guide: Guide | None = None, *, horizon: int = 16, samples: int = 256,
                 iterations: int = 2, elites: int = 32, temperature: float = 0.5, noise: float = 0.6,
                 min_noise: float = 0.05, gamma: float | None = None, gains: tuple[float, ...] = (1.0,), seed: int = 0,
                 ensemble_mode: str = "off", uncertainty_penalty: float = 0.0):
        if horizon < 1 or samples < 2 or iterations < 1 or not 1 <= elites <= samples:
            raise ValueError(f"the planner needs horizon >= 1, samples >= 2, iterations >= 1 and 1 <= elites <= samples, "
                             f"got {horizon}, {samples}, {iterations}, {elites}")
        if temperature <= 0 or not 0 < min_noise <= noise:
            raise ValueError(f"temperature must be positive and 0 < min_noise <= noise, got {temperature}, {min_noise}, {noise}")
        self.model, self.guide = model.eval(), guide
        self.horizon, self.samples, self.iterations, self.elites = horizon, samples, iterations, elites
        self.temperature, self.noise, self.min_noise = temperature, noise, min_noise
        self.gamma = gamma if gamma is not None else (guide.gamma if guide is not None else 0.99)
        self.gains = torch.tensor([float(g) for g in gains])
        if len(self.gains) < 1 or not (self.gains > 0).all():
            raise ValueError(f"gains must be one or more positive action gains, got {gains}")
        if ensemble_mode not in ("off", "member"):
            raise ValueError(f"the planner's ensemble_mode must be 'off' or 'member', got {ensemble_mode!r}")
        if ensemble_mode == "member" and model.ensemble is None:
            raise ValueError("ensemble_mode 'member' needs a model with an ensemble (`keycld-gym ensemble`)")
        if not uncertainty_penalty >= 0 or (uncertainty_penalty > 0 and ensemble_mode == "off"):
            raise ValueError(f"uncertainty_penalty must be >= 0, and > 0 only with ensemble_mode 'member', got "
                             f"{uncertainty_penalty} with {ensemble_mode!r}")
        self.ensemble_mode, self.uncertainty_penalty = ensemble_mode, float(uncertainty_penalty)
        self.generator = torch.Generator().manual_seed(seed)
        self.spec = model.spec
        self.action_dim = model.action_dim
        self.mean: Tensor | None = None  # (N, H, A): the plan carried to the next step
        self._sims: dict[int, Imagination] = {}

    def reset(self) -> None:
        """Forget the carried plan (a new episode)."""
        self.mean = None

    def _sim(self, n: int) -> Imagination:
        if n not in self._sims:
            self._sims[n] = Imagination(self.model, n, self.spec.action_repeat, ensemble_mode=self.ensemble_mode)
        return self._sims[n]

    @torch.no_grad()
    def _rollout(self, q: Tensor, v: Tensor, actions: Tensor | None, gain: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores `(B,)` of action sequences `(B, H, A)` from states `(B, K, 2)` x2 under action gains `(B,)` (None: 1).

        actions None: the guide's closed loop, its actions returned.
        """
        b = len(q)
        sim = self._sim(b)
        sim.q, sim.v = q.clone(), v.clone()
        sim.action_gain = torch.ones(b, 1) if gain is None else gain[:, None]
        if sim.ensemble is not None:  # each candidate follows a member of its own
            sim.member = torch.randint(0, sim.ensemble.size, (b,), generator=self.generator)
        score, discount = torch.zeros(b), 1.0
        alive = torch.ones(b, dtype=torch.bool)
        taken = torch.empty(b, self.horizon, self.action_dim)
        for t in range(self.horizon):
            u = self.guide.action(self._obs(sim.q, sim.v)) if actions is None else actions[:, t]
            taken[:, t] = u
            reward, diverged = sim.step(u)
            if self.uncertainty_penalty:
                reward = reward - self.uncertainty_penalty * sim.uncertainty
            alive &= ~diverged  # a diverged future scores what it gathered before
            score += discount * torch.where(alive, reward, torch.zeros_like(reward))
            discount *= self.gamma
        if self.guide is not None:
            score += discount * torch.where(alive, self.guide.value(self._obs(sim.q, sim.v)), torch.zeros_like(score))
        return score, taken

    @staticmethod
    def _obs(q: Tensor, v: Tensor) -> Tensor:
        return torch.cat([q.flatten(1), v.flatten(1)], 1)

    @torch.no_grad()
    def __call__(self, observations: np.ndarray) -> np.ndarray:
        """Actions float32 `(N, A)` in [-1, 1] for keypoint observations `(N, 4K)` (positions then velocities)."""
        k = self.spec.num_keypoints
        obs = np.asarray(observations, np.float32)
        if obs.ndim != 2 or obs.shape[1] != 4 * k:
            raise ValueError(f"the planner takes keypoint observations (N, {4 * k}), got {obs.shape}")
        if not np.all(np.isfinite(obs)):
            raise ValueError("the planner got non-finite observations: the state estimate failed upstream")
        n, s, h, a = len(obs), self.samples, self.horizon, self.action_dim
        q, v = torch.from_numpy(obs[:, :2 * k]).reshape(n, k, 2), torch.from_numpy(obs[:, 2 * k:]).reshape(n, k, 2)
        q, v = self.model.project(q, v, iterations=10)
        if self.mean is None or len(self.mean) != n:
            self.mean = torch.zeros(n, h, a)
        else:  # last step's plan, one step on
            self.mean = torch.cat([self.mean[:, 1:], self.mean[:, -1:]], 1)
        guided = self._rollout(q, v, None)[1] if self.guide is not None else None
        g = len(self.gains)  # each candidate once per gain: index (gain, env, sample)
        qs, vs = q.repeat_interleave(s, 0).repeat(g, 1, 1), v.repeat_interleave(s, 0).repeat(g, 1, 1)
        gain = self.gains.repeat_interleave(n * s)
        std = torch.full((n, h, a), self.noise)
        for _ in range(self.iterations):
            noise = torch.randn(n, s, h, a, generator=self.generator)
            candidates = (self.mean[:, None] + std[:, None] * noise).clamp(-1, 1)
            candidates[:, 0] = self.mean
            if guided is not None:
                candidates[:, 1] = guided
            score = self._rollout(qs, vs, candidates.reshape(n * s, h, a).repeat(g, 1, 1), gain)[0]
            score = score.reshape(g, n, s).amin(0)
            best, index = score.topk(self.elites, 1)
            elite = torch.gather(candidates, 1, index[:, :, None, None].expand(-1, -1, h, a))
            spread = best.std(1, keepdim=True) if self.elites > 1 else torch.ones(n, 1)
            weight = torch.softmax((best - best[:, :1]) / (self.temperature * (spread + 1e-3)), 1)[:, :, None, None]
            self.mean = (weight * elite).sum(1)
            std = (weight * (elite - self.mean[:, None]) ** 2).sum(1).sqrt().clamp(self.min_noise, self.noise)
        return self.mean[:, 0].numpy().astype(np.float32)


class PlanningAgent:
    """The planner as an agent: `act(obs)` on keypoint observations `(N, 4K)`.

    Holds what `evaluate_agent` reads of an agent (`recipe`, `info`, `act`), as `keycld_gym.rl.agent.Agent` does.
    """

    def __init__(self, model: KeyCLDModel, recipe: AgentRecipe, guide: Agent | None, info: dict[str, Any] | None = None):
        if recipe.algo != "mppi" or recipe.obs_type != "keypoints":
            raise ValueError(f"a planning agent needs an mppi recipe on keypoints, got {recipe.algo}/{recipe.obs_type}")
        if guide is not None and guide.recipe.system != recipe.system:
            raise ValueError(f"the guide agent was trained for {guide.recipe.system!r}, the planner plans for {recipe.system!r}")
        self.recipe = recipe
        self.guide = Guide(guide) if guide is not None else None
        self.planner = ModelPredictiveControl(model, self.guide, **recipe.hyperparams)
        self.info = {"path": "plan", "recipe": recipe.to_dict(), "guide": self.guide.info if self.guide else None,
                     **(info or {})}

    def act(self, observations: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions `(N, A)` for a batch of keypoint observations."""
        return self.planner(observations)


def planning_agent(system: str, checkpoint: str | Path | None = None, guide: str | Path | None = "bundled",
                   settings: dict[str, Any] | None = None) -> PlanningAgent:
    """The planner of a system's model (default: the bundled one), guided by an agent folder (default: the bundled keypoint agent; None: no guide).

    `settings` override the recipe's hyperparams (`agents/<system>.py`, `PLAN`).
    """
    name = get_system(system).name
    recipe = get_recipe(name, "keypoints", "mppi").with_settings(settings, ModelPredictiveControl)
    folder = checkpoint_folder(checkpoint, name)
    guide_agent = load_agent(guide, name, "keypoints") if guide is not None else None
    return PlanningAgent(load_model(folder), recipe, guide_agent, {"model": {"path": portable_path(folder)}})
