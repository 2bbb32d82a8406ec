"""The KeyCLD world model: encoder, renderer, constraints, dynamics and reward head of one system.

State: keypoints q and their velocities v, each `(B, K, 2)` in image units (x right, y up,
half-height 1). Time: one model step is one physics step of the system (`spec.physics_dt`);
an action is held over it. The imagined env and the evaluation advance the state with
`step`, which sub-steps RK4 and projects onto the constraint manifold.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from keycld_gym.model.constraints import ConstraintSet, PlacedLink
from keycld_gym.model.dynamics import Dynamics, DynamicsConfig, mlp
from keycld_gym.model.encoder import (
    EncoderConfig,
    KeypointEncoder,
    foreground_mask,
    image_grid,
    mask_heatmaps,
    spatial_softmax,
)
from keycld_gym.model.integrators import INTEGRATORS, rollout_step
from keycld_gym.model.renderer import (
    KeypointRenderer,
    RendererConfig,
    segment_distance2,
)
from keycld_gym.sim.systems import Constraint, SystemSpec, get_system

REWARD_OUTPUTS = ("linear", "sigmoid")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a model besides its system.

    Attributes:
        encoder, renderer, dynamics: the parts' settings.
        reward_hidden: width of the reward head's two hidden layers.
        reward_output: `"linear"`, or `"sigmoid"`: the head's output squashed into (0, 1), where
            every dm_control reward lies. A sparse reward (the pendulum's: 0 almost everywhere)
            needs it: a linear head predicted about 0.035 per physics step for the pendulum hanging
            still near the bottom, and SAC learned to sit there in imagination (BENCHMARKS.md).
        integrator: "rk4" or "euler"; substeps: integrator steps per physics step.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    reward_hidden: int = 64
    reward_output: str = "linear"
    integrator: str = "rk4"
    substeps: int = 1

    def __post_init__(self) -> None:
        if self.integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {self.integrator!r}")
        if self.reward_output not in REWARD_OUTPUTS:
            raise ValueError(f"reward_output must be one of {REWARD_OUTPUTS}, got {self.reward_output!r}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be positive, got {self.substeps}")

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are an error (a checkpoint of another version)."""
        parts = {"encoder": EncoderConfig, "renderer": RendererConfig, "dynamics": DynamicsConfig}
        kwargs = {k: parts[k](**v) if k in parts else v for k, v in d.items()}
        return cls(**kwargs)


class KeyCLDModel(nn.Module):
    """A KeyCLD world model for one system (see the module docstring for shapes and units)."""

    def __init__(self, system: str | SystemSpec, config: ModelConfig = ModelConfig(), action_dim: int = 1):
        super().__init__()
        self.spec = get_system(system) if isinstance(system, str) else system
        self.config = config
        self.action_dim = action_dim
        k = self.spec.num_keypoints
        h, w = self.spec.image_shape[:2]
        self.encoder = KeypointEncoder(k, config.encoder)
        # the scene without its moving parts (the data set's median image), set by training
        self.register_buffer("background", torch.zeros(h, w, 3))
        self.renderer = self._make_renderer(config.renderer)
        self.constraints = ConstraintSet(self.spec.constraints, k)
        if config.encoder.constrained:
            # the encoder's own constants: the dynamics phase fits the dynamics' from its keypoints
            self.keypoint_constraints = ConstraintSet(self.spec.constraints, k)
            self.keypoint_constraints.check_placeable()
        self.dynamics = Dynamics(k, action_dim, self.constraints, config.dynamics,
                                 actuators=self.spec.actuators, joints=self.spec.joints)
        self.reward_net = mlp(4 * k + action_dim, 1, config.reward_hidden, 2, 0.1)
        # more dynamics members behind the same encoder (`keycld_gym.model.ensemble`), set by
        # `load_model` where the checkpoint has them; a plain attribute, not in the state dict
        self.ensemble = None  # a DynamicsEnsemble

    # -- parameter groups: each learns at its own rate (training) --------------------------
    def keypoint_parameters(self) -> list[nn.Parameter]:
        """Encoder and renderer: what the keypoint phase trains."""
        placement = list(self.keypoint_constraints.parameters()) if self.constrained_keypoints else []
        return list(self.encoder.parameters()) + list(self.renderer.parameters()) + placement

    @torch.no_grad()
    def load_keypoint_phase(self, other: "KeyCLDModel") -> None:
        """Take `other`'s keypoint phase: what `keypoint_parameters` trains (placement lengths included) and the background."""
        if other.constrained_keypoints != self.constrained_keypoints:
            raise ValueError(f"that model places its keypoints on the constraints ({other.constrained_keypoints}) where "
                             f"this one does ({self.constrained_keypoints}); reuse an encoder of the same kind")
        self.encoder.load_state_dict(other.encoder.state_dict())
        self.renderer.load_state_dict(other.renderer.state_dict())
        if self.constrained_keypoints:
            # the learned link lengths place the keypoints: left at their start, the acrobot's
            # elbow sat 10% out along the upper arm and the lower arm turned by 0.12 sin(elbow)
            self.keypoint_constraints.load_state_dict(other.keypoint_constraints.state_dict())
        self.background.copy_(other.background)

    def network_parameters(self) -> list[nn.Parameter]:
        """The dynamics' MLPs and the reward head."""
        return self.dynamics.network_parameters() + list(self.reward_net.parameters())

    def physical_parameters(self) -> list[nn.Parameter]:
        """The dynamics' physical constants and the constraint constants (each once)."""
        params = self.dynamics.physical_parameters()
        seen = {id(p) for p in params}
        return params + [p for p in self.constraints.parameters() if id(p) not in seen]

    @property
    def dt(self) -> float:
        """Seconds per model step (the system's physics step)."""
        return self.spec.physics_dt

    @property
    def projects(self) -> bool:
        """Whether states are projected onto the constraints (the constrained model only)."""
        return self.dynamics.constraints is not None

    def heatmaps(self, frames: torch.Tensor) -> torch.Tensor:
        """Heatmap logits `(B, K, h, w)` of frames uint8 `(B, H, W, 3)`, masked to the foreground (`KeypointEncoder.heatmaps`)."""
        return self._masked(self.encoder.heatmaps(frames), frames)

    def _masked(self, heat: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Heatmaps `(nB, K, h, w)`, n reads of each of frames `(B, H, W, 3)` one batch after another, masked to the frames' foreground."""
        config = self.config.encoder
        if config.foreground_threshold <= 0:
            return heat
        mask = foreground_mask(frames, self.background, config.foreground_threshold, config.mask_ramp)
        return mask_heatmaps(heat, mask.repeat(len(heat) // len(frames), 1, 1))

    @property
    def constrained_keypoints(self) -> bool:
        """Whether encoded keypoints are placed on the constraints (`EncoderConfig.constrained`): their order is the constraints'."""
        return self.config.encoder.constrained

    def keypoint_order(self, keypoints: torch.Tensor) -> list[int]:
        """The order of encoded keypoints `(N, K, 2)` the constraints name (`keypoint_order`); constrained keypoints are in it already."""
        if self.constrained_keypoints:
            return list(range(self.spec.num_keypoints))
        return keypoint_order(keypoints, self.spec)

    def keypoints(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Keypoints `(B, K, 2)` of heatmap logits `(B, K, h, w)`: their expected positions, placed on the constraints if constrained."""
        if not self.constrained_keypoints:
            return spatial_softmax(heatmaps)
        grid = image_grid(*heatmaps.shape[-2:], heatmaps.device).to(heatmaps.dtype)  # (h, w, 2)
        config = self.config.encoder

        def read(k: int, link: PlacedLink | None) -> torch.Tensor:
            heat = heatmaps[:, k]
            if link is not None:
                # Cells near the link's start would give a noisy direction, cells on the link
                # before it (the upper arm, for the lower arm's direction) a wrong one. They are
                # held far down, yet above the background's -1e4 (`mask_heatmaps`), so they
                # still count when no other foreground is left (a link seen end-on, folded back).
                start = link.start.detach().reshape(-1, 1, 1, 2)
                avoid = ((grid - start) ** 2).sum(-1) < (config.read_beyond * link.length.detach()) ** 2
                if link.before is not None:
                    a, b = (p.detach().reshape(-1, 1, 1, 2) for p in link.before)
                    avoid = avoid | (segment_distance2(grid, a, b) < config.link_clearance**2)
                heat = heat - 5e3 * avoid
            return spatial_softmax(heat[:, None])[:, 0]

        pivots, pivoted = self.renderer.pivot_links()
        return self.keypoint_constraints.place(read, {k: pivots[i] for i, k in enumerate(pivoted)})

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Keypoints `(B, K, 2)` of frames uint8 `(B, H, W, 3)` (averaged with the mirror image's if `EncoderConfig.mirror_average`)."""
        if not self.config.encoder.mirror_average:
            return self.keypoints(self.heatmaps(frames))
        # one encoder pass over the frames and their mirror images; the mirror images' heatmaps
        # are flipped back onto the frames, so both reads are placed in the frames' coordinates
        own, mirrored = self.encoder.heatmaps(torch.cat([frames, frames.flip(-2)])).chunk(2)
        keypoints = self.keypoints(self._masked(torch.cat([own, mirrored.flip(-1)]), frames))
        return keypoints.reshape(2, len(frames), *keypoints.shape[1:]).mean(0)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray, batch: int = 256) -> torch.Tensor:
        """Keypoints `(..., K, 2)` of uint8 frames `(..., H, W, 3)` of any leading shape, in batches."""
        flat = frames.reshape(-1, *frames.shape[-3:])
        kp = [self.encode(torch.from_numpy(flat[i:i + batch])) for i in range(0, len(flat), batch)]
        return torch.cat(kp).reshape(*frames.shape[:-3], self.spec.num_keypoints, 2)

    def render(self, q: torch.Tensor) -> torch.Tensor:
        """Frames `(B, H, W, 3)` in [0, 1] of keypoints `(B, K, 2)`."""
        return self.renderer(q)

    def replace_renderer(self, config: RendererConfig) -> None:
        """Put a fresh (untrained) renderer of settings `config` in place of this one; learned pivots carry over."""
        pivots = self.renderer.pivot_links()[0]
        self.renderer = self._make_renderer(config)
        if pivots is not None and self.renderer.pivot_links()[0] is not None:
            with torch.no_grad():
                self.renderer.pivots.copy_(pivots)
        self.config = dataclasses.replace(self.config, renderer=config)

    def _make_renderer(self, config: RendererConfig) -> KeypointRenderer:
        """A renderer of settings `config` drawing the spec's rigid links."""
        links = [(c.a, c.b) for c in self.spec.constraints if c.kind == "fixed_distance"]
        pivoted = [c.a for c in self.spec.constraints if c.kind == "fixed_pivot_distance"]
        h, w = self.spec.image_shape[:2]
        return KeypointRenderer(self.spec.num_keypoints, h, w, config, links=links, pivoted=pivoted)

    def project(self, q: torch.Tensor, v: torch.Tensor, iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and velocities `(B, K, 2)` projected onto the constraint manifold (if any).

        A few Gauss-Newton steps suffice for states near the manifold (every rollout step);
        states set from outside (env resets) take more.
        """
        if not self.projects:
            return q, v
        q = self.constraints.project_positions(q, iterations)
        return q, self.constraints.project_velocities(q, v)

    def step(self, q: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One physics step under actions `(B, A)` held over it: `(q, v)` -> `(q, v)`, `(B, K, 2)`."""
        return rollout_step(
            self.dynamics.acceleration, q, v, u, self.dt,
            substeps=self.config.substeps, method=self.config.integrator,
            constraints=self.dynamics.constraints,
        )

    def rollout(self, q: torch.Tensor, v: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States after each of T physics steps under actions `(B, T, A)`: two `(B, T + 1, K, 2)`, start included."""
        qs, vs = [q], [v]
        for t in range(actions.shape[1]):
            q, v = self.step(q, v, actions[:, t])
            qs.append(q)
            vs.append(v)
        return torch.stack(qs, 1), torch.stack(vs, 1)

    def reward(self, q: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Predicted reward of one physics step `(B,)` from state `(B, K, 2)` x2 and action `(B, A)`."""
        out = self.reward_net(torch.cat([q.flatten(-2), v.flatten(-2), u], -1)).squeeze(-1)
        return torch.sigmoid(out) if self.config.reward_output == "sigmoid" else out

    def permute_keypoints(self, order: list[int]) -> None:
        """Reorder the keypoints in place: new keypoint i is old keypoint `order[i]`.

        Permutes the encoder's heatmap channels and the renderer's blob inputs together, so
        frames encode and render as before with the keypoints in the new order. The
        renderer's links are renamed alike (a link is a line, the same either way round).
        """
        if self.constrained_keypoints and order != list(range(len(order))):
            raise ValueError("constrained keypoints are in the constraints' order already; they cannot be reordered")
        idx = torch.as_tensor(order)
        head = self.encoder.output_conv
        first = self.renderer.down[0]
        k = self.spec.num_keypoints
        with torch.no_grad():
            head.weight.copy_(head.weight[idx])
            head.bias.copy_(head.bias[idx])
            first.weight[:, :k].copy_(first.weight[:, :k][:, idx])
        new_index = {old: new for new, old in enumerate(order)}
        self.renderer.links.apply_(lambda i: new_index[i])
        if hasattr(self.renderer, "pivoted"):
            self.renderer.pivoted.apply_(lambda i: new_index[i])


def fit_circle(points: torch.Tensor) -> torch.Tensor:
    """Centre `(2,)` of the circle through points `(N, 2)` (algebraic least squares)."""
    p = points.double()
    a = torch.cat([2 * p, torch.ones_like(p[:, :1])], -1)
    sol = torch.linalg.lstsq(a, (p**2).sum(-1, keepdim=True)).solution.squeeze(-1)
    return sol[:2].to(points.dtype)


def keypoint_order(keypoints: torch.Tensor, spec: SystemSpec) -> list[int]:
    """The order of encoded keypoints `(N, K, 2)` that best satisfies the system's constraints.

    Unsupervised keypoints come in no particular order, but the constraints name keypoints
    (cartpole: keypoint 0 runs on the rail, keypoint 1 keeps its distance to it). For every
    order, each constraint's quantity (a height, a distance) is measured over the frames; the
    order whose quantities vary least relative to the scene's spread wins.
    """
    q = keypoints.detach().double()
    spread = q.flatten(0, 1).std(0).norm() + 1e-9
    best, best_cost = list(range(spec.num_keypoints)), float("inf")
    for order in itertools.permutations(range(spec.num_keypoints)):
        p = q[:, list(order)]
        quantities = constraint_quantities(p, spec.constraints, lambda a, p=p: fit_circle(p[:, a]))
        cost = sum(float(quantity.std() / spread) for quantity in quantities)
        if cost < best_cost:
            best, best_cost = list(order), cost
    return best


def constraint_quantities(q: torch.Tensor, constraints: Sequence[Constraint],
                          centre_of: Callable[[int], torch.Tensor | None]) -> list[torch.Tensor]:
    """What each constraint holds constant, per frame `(N,)` of keypoints `(N, K, 2)`: a height or a link length.

    A pivot link's length is measured to `centre_of(keypoint)` `(2,)`; a pivot constraint
    whose centre is None is left out.
    """
    out = []
    for c in constraints:
        if c.kind == "fixed_height":
            out.append(q[:, c.a, 1])
        elif c.kind == "fixed_pivot_distance":
            centre = centre_of(c.a)
            if centre is not None:
                out.append((q[:, c.a] - centre.to(q.dtype)).norm(dim=-1))
        else:
            out.append((q[:, c.b] - q[:, c.a]).norm(dim=-1))
    return out


MIN_LENGTH = 0.05  # image units: a link shorter than ~1.6 px is not a link (untrained keypoints)


def init_constraints_from(keypoints: torch.Tensor, model: KeyCLDModel) -> None:
    """Start the learnable constraint constants at their values measured on keypoints `(N, K, 2)`."""
    c = model.constraints
    q = keypoints.detach().to(c.height.dtype)
    with torch.no_grad():
        for i, con in enumerate(c.constraints):
            if con.kind == "fixed_height":
                c.height[i] = q[:, con.a, 1].median()
            elif con.kind == "fixed_pivot_distance":
                centre = fit_circle(q[:, con.a])
                c.pivot[i] = centre
                length = (q[:, con.a] - centre).norm(dim=-1).median().clamp(min=MIN_LENGTH)
                c.raw_length[i] = torch.log(torch.expm1(length))
            else:
                length = (q[:, con.b] - q[:, con.a]).norm(dim=-1).median().clamp(min=MIN_LENGTH)
                c.raw_length[i] = torch.log(torch.expm1(length))
