"""Learned dynamics in keypoint coordinates: the constrained Lagrangian and its ablations.

State: keypoints q and velocities qdot, each `(..., K, 2)` in image units; actions u
`(..., A)`. `acceleration(q, qdot, u)` returns qddot `(..., K, 2)`.

KeyCLD (`kind="constrained"`): L = 1/2 qdot^T M qdot - V(q) with a constant positive-
definite mass matrix M = M_K (x) I_2 over the keypoints (a rigid rod needs the cross terms
that point masses lack, docs/method/dynamics.md, "Lagrangian"), generalised force f = -grad V + B(q) u - D qdot
(D positive semi-definite, per keypoint, initialised near zero so it does not soak up noise),
and the constrained Euler-Lagrange equations

    lambda = (J M^-1 J^T)^-1 (J M^-1 f + Jdot qdot),   qddot = M^-1 (f - J^T lambda).

Ablations from the project page: `"unconstrained"` (the same Lagrangian on free keypoints)
and `"neural_ode"` (an unstructured second-order ODE, qddot = MLP(q, qdot, u)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from keycld_gym.model.constraints import ConstraintSet, inv_softplus, solve_small
from keycld_gym.sim.systems import Actuator, Joint

DYNAMICS_KINDS = ("constrained", "unconstrained", "neural_ode")
INPUT_MATRICES = ("state", "constant", "spec")
DAMPINGS = ("keypoints", "joints")


@dataclass(frozen=True)
class DynamicsConfig:
    """Dynamics model settings.

    Attributes:
        kind: one of `DYNAMICS_KINDS`.
        hidden: width of the potential, input-matrix and ODE MLPs.
        layers: hidden layers of those MLPs.
        init_std: std of the MLPs' initial weights (small, as in the authors' code).
        learn_damping: learn the dissipation D (else D = 0).
        init_damping: initial damping per keypoint (near zero: standard cartpole has ~0).
        rail_walls: add a learned stiff wall at each end of the rail of every keypoint that
            runs on one (a `fixed_height` constraint): the standard cartpole's rail stops are
            stiff contacts that no smooth potential MLP fits (docs/method/measured-facts.md,
            "Dynamics from true keypoints").
        wall_init: initial wall position |x| in image units (inside the data, so it gets a gradient).
        wall_stiffness: initial stiffness of the walls (learned, log-parametrised).
        wall_damping: initial damping of the walls, a dissipative force on the rail keypoint
            while it is beyond a stop (learned, log-parametrised; 0: no wall damping). The
            standard cartpole's rail limit is a soft, critically damped contact (MuJoCo
            `solreflimit=".08 1"`: the cart sinks up to 0.17 m past it and does not bounce),
            which an undamped spring cannot follow. Measured with the structured cartpole
            model (two seeds each), damping from 20 lowered the held-out VPT (median 7.0 and
            6.0 against 8.0 and 7.0) and the learned push on the cart: off by default.
        input_matrix: `"state"`, B(q) an MLP; `"constant"`, one learned B for all states
            (exact where the actuator pushes a keypoint along a fixed direction, as the
            cartpole's cart); or `"spec"`, the form the system spec's actuators name: a
            learned constant force on a keypoint, or a learned gain times a joint angle's
            gradient for a torque (exact for all three systems and linear in its few
            constants, so the least-squares start fits it; docs/method/dynamics.md,
            "Joint actuators and joint damping").
        damping: `"keypoints"`, D = diag(d) (x) I_2, a damping per keypoint, or `"joints"`,
            a damping d_j on the rate of each joint the spec names, f = -sum_j d_j a_j (a_j . qdot)
            with a_j = d theta_j / dq: the pendulum's and acrobot's real damping acts on
            joint rates, which per-keypoint damping cannot represent.
        input_keypoints: the keypoints the actuators push (None: all). Where a motor drives
            one body (the cartpole's cart, keypoint 0) this removes a near-degeneracy: on
            data where the cart is ten times heavier than the pole, a direct push on the pole
            tip and the pole's inertial coupling to the cart move it almost alike, and
            learned models split the two at random (upright response of the tip to an
            action 58-128% of the truth across seeds, measured).
        linear_potential: add a learned linear term g.q to the potential (uniform gravity).
        potential_mlp: include the potential MLP (off with `linear_potential`: gravity and
            rail walls only, exact for rigid bodies under uniform gravity).
            These priors aim at states where data are scarce (the MLPs gave 67% of the true
            effect of an action upright, 90% hanging, and 64% of gravity 0.3 rad from
            upright). Learned by gradient steps from a small start, beside the MLP, they
            lowered the held-out VPT (median 4.0 against 6.5 agent steps). Without the MLP,
            with the cart alone pushed (`input_keypoints`), started from a least-squares fit
            (`keycld_gym.model.physics_fit`) and with start states refit by shooting, they gave
            the bundled cartpole model: VPT median 10 agent steps in 5.6 minutes of training
            (BENCHMARKS.md). Off by default; with the pendulums' hinge torques, whose force on a
            keypoint turns with the link, use `input_matrix="spec"`.
    """

    kind: str = "constrained"
    hidden: int = 64
    layers: int = 2
    init_std: float = 0.01
    learn_damping: bool = True
    init_damping: float = 1e-3
    rail_walls: bool = True
    wall_init: float = 1.0
    wall_stiffness: float = 2000.0
    wall_damping: float = 0.0
    input_matrix: str = "state"
    input_keypoints: tuple[int, ...] | None = None
    damping: str = "keypoints"
    linear_potential: bool = False
    potential_mlp: bool = True

    @property
    def structured(self) -> bool:
        """Whether the Lagrangian has the linear-in-parameters parts that `physics_fit` can start."""
        return self.kind != "neural_ode" and self.linear_potential and self.input_matrix in ("constant", "spec")

    def __post_init__(self) -> None:
        if self.input_keypoints is not None:
            object.__setattr__(self, "input_keypoints", tuple(int(k) for k in self.input_keypoints))
        if self.kind not in DYNAMICS_KINDS:
            raise ValueError(f"dynamics kind must be one of {DYNAMICS_KINDS}, got {self.kind!r}")
        if self.input_matrix not in INPUT_MATRICES:
            raise ValueError(f"input_matrix must be one of {INPUT_MATRICES}, got {self.input_matrix!r}")
        if self.damping not in DAMPINGS:
            raise ValueError(f"damping must be one of {DAMPINGS}, got {self.damping!r}")
        if not (self.potential_mlp or self.linear_potential):
            raise ValueError("the potential needs its MLP or its linear term: set potential_mlp or linear_potential")


def mlp(n_in: int, n_out: int, hidden: int, layers: int, init_std: float) -> nn.Sequential:
    """A softplus MLP (smooth, so its gradient - the force - is smooth too)."""
    dims = [n_in] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Softplus()]
    mods.append(nn.Linear(dims[-1], n_out))
    for m in mods:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=init_std)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*mods)


def mlp_input_gradient(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """d net(x) / dx `(..., n_in)` of a one-output `mlp` at inputs `(..., n_in)`, by the chain rule (differentiable)."""
    slopes, h = [], x
    for m in net:
        if isinstance(m, nn.Softplus):  # h: its input; softplus is linear above the threshold
            z = m.beta * h
            slopes.append(torch.where(z > m.threshold, 1.0, torch.sigmoid(z)))
        h = m(h)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    if h.shape[-1] != 1 or len(linears) != len(slopes) + 1:
        raise ValueError("mlp_input_gradient needs an `mlp` with one output")
    g = linears[-1].weight[0].expand(*x.shape[:-1], -1)
    for lin, slope in zip(reversed(linears[:-1]), reversed(slopes)):
        g = (g * slope) @ lin.weight
    return g


class Dynamics(nn.Module):
    """qddot = f(q, qdot, u) for K keypoints, A action dims (see the module docstring)."""

    def __init__(self, num_keypoints: int, action_dim: int, constraints: ConstraintSet | None, config: DynamicsConfig,
                 actuators: Sequence[Actuator] = (), joints: Sequence[Joint] = ()):
        super().__init__()
        if config.kind == "constrained" and constraints is None:
            raise ValueError("constrained dynamics need a ConstraintSet")
        self.config = config
        self.num_keypoints, self.action_dim = num_keypoints, action_dim
        self.constraints = constraints if config.kind == "constrained" else None
        self.actuators, self.joints = tuple(actuators), tuple(joints)
        # the links' geometry (pivots) for joint angles, also without constraint forces (the
        # unconstrained ablation); a list, so that it is not registered a second time
        self._links = [constraints]
        if config.kind != "neural_ode" and config.input_matrix == "spec" and len(self.actuators) != action_dim:
            raise ValueError(f"input_matrix='spec' needs one actuator per action dimension ({action_dim}), "
                             f"the spec names {len(self.actuators)}")
        if config.kind != "neural_ode" and constraints is None and (
                config.damping == "joints" or any(a.kind == "torque" for a in self.actuators if config.input_matrix == "spec")):
            raise ValueError("joint torques and joint damping need the constraints' links (a ConstraintSet)")
        if config.kind != "neural_ode" and config.damping == "joints" and not self.joints:
            raise ValueError("damping='joints' needs the spec's joints")
        n = 2 * num_keypoints
        h, l, s = config.hidden, config.layers, config.init_std
        if config.kind == "neural_ode":
            self.ode = mlp(2 * n + action_dim, n, h, l, s)
            return
        # M_K = L L^T, L lower triangular with a softplus diagonal: positive definite.
        self.mass_offdiag = nn.Parameter(torch.zeros(num_keypoints, num_keypoints))
        self.mass_raw_diag = nn.Parameter(torch.full((num_keypoints,), inv_softplus(1.0)))
        if config.potential_mlp:
            self.potential_net = mlp(n, 1, h, l, s)
        if config.linear_potential:
            self.potential_linear = nn.Parameter(torch.zeros(n))
        if config.input_matrix == "constant":
            self.input_const = nn.Parameter(torch.randn(n * action_dim) * s)
        elif config.input_matrix == "spec":
            # a force's direction and size per force actuator, a gain per torque actuator (unused entries stay 0)
            self.actuator_force = nn.Parameter(torch.randn(action_dim, 2) * s)
            self.actuator_gain = nn.Parameter(torch.randn(action_dim) * s)
        else:
            self.input_net = mlp(n, n * action_dim, h, l, s)
        mask = torch.ones(num_keypoints, 1, 1)
        if config.input_keypoints is not None:
            if any(not 0 <= k < num_keypoints for k in config.input_keypoints):
                raise ValueError(f"input_keypoints {config.input_keypoints} must name keypoints 0..{num_keypoints - 1}")
            mask = torch.zeros(num_keypoints, 1, 1)
            mask[list(config.input_keypoints)] = 1.0
        self.register_buffer("input_mask", mask, persistent=False)  # (K, 1, 1) over (K, 2, A)
        n_damped = len(self.joints) if config.damping == "joints" else num_keypoints
        self.damping_raw = nn.Parameter(
            torch.full((n_damped,), inv_softplus(config.init_damping)), requires_grad=config.learn_damping
        )
        rails = sorted({c.a for c in (constraints.constraints if constraints else ()) if c.kind == "fixed_height"})
        self.rail_keypoints = rails if config.rail_walls else []
        if self.rail_keypoints:
            n_rail = len(self.rail_keypoints)
            # walls[i] = (left, right) x positions of rail i's stops
            self.walls = nn.Parameter(torch.tensor([[-config.wall_init, config.wall_init]] * n_rail))
            self.log_wall_stiffness = nn.Parameter(torch.full((n_rail,), float(torch.tensor(config.wall_stiffness).log())))
            if config.wall_damping > 0:
                self.log_wall_damping = nn.Parameter(torch.full((n_rail,), float(torch.tensor(config.wall_damping).log())))

    # -- parameter groups -------------------------------------------------------------------
    def network_parameters(self) -> list[nn.Parameter]:
        """The MLPs' weights (potential, input matrix, neural ODE): they learn at the networks' rate."""
        nets = [getattr(self, name) for name in ("potential_net", "input_net", "ode") if hasattr(self, name)]
        return [p for net in nets for p in net.parameters()]

    def physical_parameters(self) -> list[nn.Parameter]:
        """The few physical constants (mass matrix, damping, walls, constant input, constraint constants)."""
        nets = {id(p) for p in self.network_parameters()}
        return [p for p in self.parameters() if id(p) not in nets]

    # -- energies and their parts ---------------------------------------------------------
    def mass_matrix(self) -> torch.Tensor:
        """M_K `(K, K)`, symmetric positive definite (the full M is M_K kron I_2)."""
        low = torch.tril(self.mass_offdiag, -1) + torch.diag_embed(nn.functional.softplus(self.mass_raw_diag))
        return low @ low.mT

    def damping(self) -> torch.Tensor:
        """Damping per keypoint `(K,)` (D = diag(damping) kron I_2) or per joint `(J,)`, non-negative."""
        if not self.config.learn_damping:
            return torch.zeros_like(self.damping_raw)
        return nn.functional.softplus(self.damping_raw)

    def potential(self, q: torch.Tensor, walls: bool = True) -> torch.Tensor:
        """V(q) `(...)` for keypoints `(..., K, 2)` (the MLP, the linear term, and the rail walls unless `walls=False`)."""
        v = q.new_zeros(q.shape[:-2])
        if self.config.potential_mlp:
            v = v + self.potential_net(q.flatten(-2)).squeeze(-1)
        if self.config.linear_potential:
            v = v + (q.flatten(-2) * self.potential_linear).sum(-1)
        for i, k in enumerate(self.rail_keypoints if walls else ()):
            x = q[..., k, 0]
            left, right = self.walls[..., i, 0], self.walls[..., i, 1]
            # quadratic beyond the stop, zero inside: a one-sided spring (C1, fine for RK4)
            pen = torch.relu(x - right) ** 2 + torch.relu(left - x) ** 2
            v = v + 0.5 * self.log_wall_stiffness[..., i].clamp(max=11.0).exp() * pen
        return v

    def kinetic(self, qdot: torch.Tensor) -> torch.Tensor:
        """T = 1/2 qdot^T M qdot `(...)` for velocities `(..., K, 2)`."""
        return 0.5 * torch.einsum("...kd,kl,...ld->...", qdot, self.mass_matrix(), qdot)

    def energy(self, q: torch.Tensor, qdot: torch.Tensor) -> dict[str, torch.Tensor]:
        """Kinetic, potential and total energy, each `(...)` (for energy-based control)."""
        if self.config.kind == "neural_ode":
            raise ValueError("the neural ODE ablation has no energies")
        t, v = self.kinetic(qdot), self.potential(q)
        return {"kinetic": t, "potential": v, "total": t + v}

    def joint_angle_gradients(self, q: torch.Tensor) -> dict[Joint, torch.Tensor]:
        """d theta / dq `(..., K, 2)` at keypoints `(..., K, 2)` of every joint a torque drives or the task damps, each once."""
        joints = dict.fromkeys([a.joint for a in self.actuators if a.kind == "torque"] + list(self.joints))
        return {j: self._links[0].joint_angle_gradient(q, j) for j in joints}

    def joint_gradients(self, q: torch.Tensor, grads: dict[Joint, torch.Tensor] | None = None) -> torch.Tensor:
        """a_j = d theta_j / dq `(J, ..., K, 2)` of the spec's damped joints (from `grads` when given)."""
        grads = grads if grads is not None else self.joint_angle_gradients(q)
        return torch.stack([grads[j] for j in self.joints])

    def input_matrix(self, q: torch.Tensor, grads: dict[Joint, torch.Tensor] | None = None) -> torch.Tensor:
        """B(q) `(..., K, 2, A)`: generalised force per unit action (joint gradients from `grads` when given)."""
        if self.config.input_matrix == "spec":
            grads = grads if grads is not None else self.joint_angle_gradients(q)
            columns = []
            for i, act in enumerate(self.actuators):
                if act.kind == "force":
                    col = q.new_zeros(q.shape)
                    col[..., act.keypoint, :] = self.actuator_force[..., i, :]
                else:
                    col = self.actuator_gain[..., i, None, None] * grads[act.joint]
                columns.append(col)
            return torch.stack(columns, -1)
        if self.config.input_matrix == "constant":
            b = self.input_const.unflatten(-1, (*q.shape[-2:], self.action_dim)).expand(*q.shape, self.action_dim)
        else:
            b = self.input_net(q.flatten(-2)).reshape(*q.shape, self.action_dim)
        return b * self.input_mask if self.config.input_keypoints is not None else b

    def potential_gradient(self, q: torch.Tensor, walls: bool = True) -> torch.Tensor:
        """grad V(q) `(..., K, 2)`, differentiable with respect to q and the parameters (training, shooting); `walls` as in `potential`."""
        # In closed form, not by autograd: its engine costs more than the arithmetic on these
        # tiny tensors, and every rollout step evaluates this four times. `potential` stays the
        # reference (energies; tests check the two agree).
        grad = q.new_zeros(q.shape)
        if self.config.linear_potential:
            grad = grad + self.potential_linear.unflatten(-1, q.shape[-2:])
        for i, k in enumerate(self.rail_keypoints if walls else ()):
            x = q[..., k, 0]
            left, right = self.walls[..., i, 0], self.walls[..., i, 1]
            wall = q.new_zeros(q.shape)
            wall[..., k, 0] = self.log_wall_stiffness[..., i].clamp(max=11.0).exp() * (torch.relu(x - right) - torch.relu(left - x))
            grad = grad + wall
        if self.config.potential_mlp:
            grad = grad + mlp_input_gradient(self.potential_net, q.flatten(-2)).reshape(q.shape)
        return grad

    def force(self, q: torch.Tensor, qdot: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """f = -grad V + B(q) u - D qdot (- the walls' damping past a stop), `(..., K, 2)`."""
        # each joint's angle gradient once per evaluation, for the torques and the damping alike
        joint_specs = self.config.input_matrix == "spec" or self.config.damping == "joints"
        grads = self.joint_angle_gradients(q) if joint_specs else None
        f = -self.potential_gradient(q) + (self.input_matrix(q, grads) @ u[..., None, :, None]).squeeze(-1)
        if self.config.damping == "joints":
            a = self.joint_gradients(q, grads)  # (J, ..., K, 2)
            rates = (a * qdot).sum((-2, -1), keepdim=True)  # (J, ..., 1, 1)
            d = self.damping().movedim(-1, 0)  # (J,) or, members stacked, (J, M, 1)
            f = f - (d.reshape(*d.shape, *[1] * (q.dim() + 1 - d.dim())) * rates * a).sum(0)
        else:
            f = f - self.damping()[..., None] * qdot
        if self.rail_keypoints and self.config.wall_damping > 0:
            for i, k in enumerate(self.rail_keypoints):
                x = q[..., k, 0]
                beyond = ((x > self.walls[..., i, 1]) | (x < self.walls[..., i, 0])).to(q.dtype)
                push = torch.zeros_like(f)
                push[..., k, 0] = beyond * self.log_wall_damping[..., i].clamp(max=8.0).exp() * qdot[..., k, 0]
                f = f - push
        return f

    # -- equations of motion --------------------------------------------------------------
    def acceleration(self, q: torch.Tensor, qdot: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """qddot `(..., K, 2)` from keypoints, velocities `(..., K, 2)` and actions `(..., A)`."""
        if self.config.kind == "neural_ode":
            x = torch.cat([q.flatten(-2), qdot.flatten(-2), u], -1)
            return self.ode(x).reshape(q.shape)
        m_inv = torch.cholesky_inverse(torch.linalg.cholesky(self.mass_matrix()))
        f = self.force(q, qdot, u)
        # matmul and broadcast sums, not einsum: on these tiny tensors einsum's permutes and
        # copies cost more than the arithmetic (a rollout step 25% faster, an ensemble's too)
        m_inv_f = m_inv @ f
        if self.constraints is None:
            return m_inv_f
        c = self.constraints
        j = c.jacobian(q).unflatten(-1, (self.num_keypoints, 2))  # (..., C, K, 2)
        m_inv_jt = m_inv.unsqueeze(-3) @ j  # rows of M^-1 J^T
        jmj = j.flatten(-2) @ m_inv_jt.flatten(-2).transpose(-1, -2)  # (..., C, C)
        rhs = (j * m_inv_f.unsqueeze(-3)).sum((-2, -1)) + c.jdot_qdot(q, qdot)
        lam, ok = solve_small(jmj, rhs)
        # a state blown far off (an untrained model's) can make J M^-1 J^T singular: its
        # acceleration is NaN, which every caller catches as a non-finite state, not an error
        lam = torch.where(ok[..., None], lam, torch.nan)  # (..., C)
        return m_inv_f - (m_inv_jt * lam[..., None, None]).sum(-3)
