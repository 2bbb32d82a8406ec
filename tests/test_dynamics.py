import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from keycld_gym import get_system
from keycld_gym.model.constraints import ConstraintSet
from keycld_gym.model.dynamics import Dynamics, DynamicsConfig
from keycld_gym.model.integrators import euler_step, rk4_step, rollout_step
from keycld_gym.sim.systems import Constraint

ALL_KINDS = (Constraint("fixed_height", 0), Constraint("fixed_pivot_distance", 1), Constraint("fixed_distance", 0, 2))


@pytest.fixture(autouse=True)
def float64():
    """These tests compare against double-precision references; restore the default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _random_constraints():
    torch.manual_seed(0)
    c = ConstraintSet(ALL_KINDS, num_keypoints=3)
    with torch.no_grad():
        c.height.normal_()
        c.pivot.normal_()
        c.raw_length.normal_()
    return c


def test_jacobian_and_second_derivative_match_autograd():
    c = _random_constraints()
    q, v = torch.randn(6, 3, 2), torch.randn(6, 3, 2)
    for b in range(len(q)):
        phi = lambda flat: c.phi(flat.reshape(3, 2))  # noqa: E731
        jac = torch.func.jacrev(phi)(q[b].flatten())
        torch.testing.assert_close(c.jacobian(q[b]), jac)
        hess = torch.func.hessian(phi)(q[b].flatten())  # (C, 2K, 2K)
        vf = v[b].flatten()
        torch.testing.assert_close(c.jdot_qdot(q[b], v[b]), torch.einsum("cij,i,j->c", hess, vf, vf))
    assert c.phi(q).shape == (6, 3) and c.jacobian(q).shape == (6, 3, 6)


@pytest.mark.parametrize("terms", [dict(potential_mlp=True), dict(linear_potential=True, potential_mlp=False),
                                   dict(linear_potential=True, potential_mlp=True)])
def test_potential_gradient_matches_autograd_also_for_training(terms):
    torch.manual_seed(0)
    spec = get_system("cartpole")
    dyn = Dynamics(2, 1, ConstraintSet(spec.constraints, 2), DynamicsConfig(init_std=0.5, **terms))
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    q = torch.randn(16, 2, 2) * 1.5  # cart keypoints on both sides beyond the walls too
    q.requires_grad_(True)
    (reference,) = torch.autograd.grad(dyn.potential(q).sum(), q, create_graph=True)
    grad = dyn.potential_gradient(q)
    torch.testing.assert_close(grad, reference)
    # what training differentiates: the force's gradient with respect to the parameters and q
    w = torch.randn_like(q)
    params = [p for p in dyn.parameters() if p.requires_grad] + [q]
    for a, b in zip(torch.autograd.grad((grad * w).sum(), params, allow_unused=True, materialize_grads=True),
                    torch.autograd.grad((reference * w).sum(), params, allow_unused=True, materialize_grads=True)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(dyn.potential_gradient(q), reference.detach())


def test_squared_form_is_smooth_where_keypoints_coincide():
    c = ConstraintSet([Constraint("fixed_distance", 0, 1)], num_keypoints=2)
    q = torch.zeros(1, 2, 2, requires_grad=True)  # keypoints start on top of each other
    c.phi(q).sum().backward()
    assert torch.isfinite(q.grad).all()


def test_projection_lands_on_the_manifold_and_its_tangent_space():
    c = _random_constraints()
    q = c.project_positions(torch.randn(5, 3, 2), iterations=8)
    assert c.phi(q).abs().max() < 1e-8
    v = c.project_velocities(q, torch.randn(5, 3, 2))
    assert (c.jacobian(q) @ v.flatten(-2).unsqueeze(-1)).abs().max() < 1e-7


def _pendulum(g=9.81):
    constraints = ConstraintSet([Constraint("fixed_pivot_distance", 0)], num_keypoints=1, init_length=1.0)
    dyn = Dynamics(1, 1, constraints, DynamicsConfig(learn_damping=False, linear_potential=True, potential_mlp=False))
    with torch.no_grad():
        dyn.potential_linear.copy_(torch.tensor([0.0, g]))  # V = g y: uniform gravity on a point mass
    return dyn


def test_point_mass_on_a_distance_constraint_under_a_linear_potential_is_a_pendulum():
    g, dt, steps = 9.81, 0.01, 300
    dyn = _pendulum(g)
    assert torch.allclose(dyn.mass_matrix(), torch.ones(1, 1))
    theta0, omega0 = 2.0, 0.5  # from hanging straight down, large swing
    q = torch.tensor([[[np.sin(theta0), -np.cos(theta0)]]])
    v = omega0 * torch.tensor([[[np.cos(theta0), np.sin(theta0)]]])
    u = torch.zeros(1, 1)
    ts = dt * np.arange(1, steps + 1)
    ref = solve_ivp(lambda t, y: [y[1], -g * np.sin(y[0])], (0, ts[-1]), [theta0, omega0], t_eval=ts,
                    rtol=1e-10, atol=1e-10).y[0]
    with torch.no_grad():
        for k in range(steps):
            q, v = rollout_step(dyn.acceleration, q, v, u, dt, constraints=dyn.constraints)
            expected = np.array([np.sin(ref[k]), -np.cos(ref[k])])
            np.testing.assert_allclose(q[0, 0].numpy(), expected, atol=1e-5)


def test_energy_is_conserved_without_damping_or_input():
    dyn = _pendulum()
    q = torch.tensor([[[1.0, 0.0]]])
    v = torch.zeros(1, 1, 2)
    u = torch.zeros(1, 1)
    e0 = (dyn.kinetic(v) + dyn.potential(q)).detach()
    with torch.no_grad():
        for _ in range(1000):
            q, v = rollout_step(dyn.acceleration, q, v, u, 0.01, constraints=dyn.constraints)
    e1 = dyn.kinetic(v) + dyn.potential(q)
    assert abs((e1 - e0).item()) < 1e-4 * 9.81


def test_ten_thousand_step_rollout_stays_on_the_manifold():
    torch.set_default_dtype(torch.float32)  # the env's precision; the fixture restores float64
    spec = get_system("cartpole")
    torch.manual_seed(0)
    constraints = ConstraintSet(spec.constraints, spec.num_keypoints, init_length=0.6)
    # An untrained model (no confining potential yet): keep the drift in a sane range.
    dyn = Dynamics(spec.num_keypoints, 1, constraints, DynamicsConfig())
    q = constraints.project_positions(torch.randn(8, 2, 2) * 0.5, iterations=10)
    v = constraints.project_velocities(q, 0.3 * torch.randn(8, 2, 2))
    worst = 0.0
    with torch.no_grad():
        for step in range(10_000):
            u = torch.rand(8, 1) * 2 - 1
            q, v = rollout_step(dyn.acceleration, q, v, u, 0.01, constraints=constraints)
            if step % 100 == 0:
                assert torch.isfinite(q).all() and torch.isfinite(v).all()
                worst = max(worst, float(constraints.phi(q).abs().max()))
    assert worst < 1e-5
    assert float(constraints.phi(q).abs().max()) < 1e-5


def test_mass_matrix_is_positive_definite_with_cross_terms():
    dyn = Dynamics(2, 1, ConstraintSet([Constraint("fixed_distance", 0, 1)], 2), DynamicsConfig())
    with torch.no_grad():
        dyn.mass_offdiag.normal_()
    m = dyn.mass_matrix()
    assert torch.linalg.eigvalsh(m).min() > 0 and m[0, 1] != 0
    v = torch.randn(4, 2, 2)
    full = torch.kron(m, torch.eye(2))  # M = M_K kron I_2 over (x0, y0, x1, y1)
    vf = v.flatten(-2)
    torch.testing.assert_close(dyn.kinetic(v), 0.5 * torch.einsum("bi,ij,bj->b", vf, full, vf))


@pytest.mark.parametrize("kind", ["constrained", "unconstrained", "neural_ode"])
def test_every_kind_is_batched_and_differentiable(kind):
    spec = get_system("cartpole")
    constraints = ConstraintSet(spec.constraints, spec.num_keypoints)
    dyn = Dynamics(2, 1, constraints, DynamicsConfig(kind=kind))
    q = torch.randn(3, 5, 2, 2, requires_grad=True)
    v, u = torch.randn(3, 5, 2, 2), torch.randn(3, 5, 1)
    a = dyn.acceleration(q, v, u)
    assert a.shape == (3, 5, 2, 2)
    a.square().sum().backward()
    grads = [p.grad for p in dyn.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if kind == "constrained":
        # The constrained acceleration keeps the constraint accelerations at zero:
        # J qddot + Jdot qdot = 0.
        j = constraints.jacobian(q.detach())
        lhs = (j @ a.detach().flatten(-2).unsqueeze(-1)).squeeze(-1) + constraints.jdot_qdot(q.detach(), v)
        assert lhs.abs().max() < 1e-8


def test_euler_and_rk4_agree_on_a_small_step():
    dyn = _pendulum()
    q, v, u = torch.tensor([[[0.6, -0.8]]]), torch.tensor([[[0.8, 0.6]]]), torch.zeros(1, 1)
    qe, ve = euler_step(dyn.acceleration, q, v, u, 1e-4)
    qr, vr = rk4_step(dyn.acceleration, q, v, u, 1e-4)
    torch.testing.assert_close(qe, qr, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="integrator"):
        rollout_step(dyn.acceleration, q, v, u, 0.01, method="leapfrog")


def test_constant_input_matrix_and_linear_potential_are_the_same_everywhere():
    """A rail actuator and uniform gravity: one B and one gradient for every state, learnable."""
    cfg = DynamicsConfig(kind="unconstrained", input_matrix="constant", linear_potential=True, rail_walls=False)
    dyn = Dynamics(2, 1, None, cfg)
    with torch.no_grad():
        dyn.potential_net[-1].weight.zero_()  # leave only the linear term
        dyn.input_const.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))  # push keypoint 0 along x
        dyn.potential_linear.copy_(torch.tensor([0.0, 0.0, 0.0, 2.0]))  # weight on keypoint 1
    q = torch.randn(5, 2, 2)
    f = dyn.force(q, torch.zeros_like(q), torch.ones(5, 1))
    torch.testing.assert_close(f, torch.tensor([[3.0, 0.0], [0.0, -2.0]]).expand(5, 2, 2))
    assert {"input_const", "potential_linear"} <= {n for n, p in dyn.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="input_matrix"):
        DynamicsConfig(input_matrix="linear")


def test_input_keypoints_confine_the_actuator_to_the_keypoints_it_pushes():
    cfg = DynamicsConfig(kind="unconstrained", input_matrix="constant", input_keypoints=[0], rail_walls=False)
    assert cfg.input_keypoints == (0,)
    dyn = Dynamics(2, 1, None, cfg)
    with torch.no_grad():
        dyn.input_const.copy_(torch.tensor([3.0, 1.0, 2.0, 5.0]))
    b = dyn.input_matrix(torch.randn(4, 2, 2))
    torch.testing.assert_close(b[:, 0, :, 0], torch.tensor([3.0, 1.0]).expand(4, 2))
    assert (b[:, 1] == 0).all()
    with pytest.raises(ValueError, match="input_keypoints"):
        Dynamics(2, 1, None, DynamicsConfig(kind="unconstrained", input_keypoints=(2,)))
