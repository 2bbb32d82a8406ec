import numpy as np
import pytest
import torch

from keycld_gym.model.constraints import ConstraintSet
from keycld_gym.model.dynamics import Dynamics, DynamicsConfig
from keycld_gym.model.physics_fit import (
    PhysicsFit,
    apply_physics,
    fit_physics,
    smoothed_derivatives,
)
from keycld_gym.sim.systems import Constraint

STRUCTURED = DynamicsConfig(input_matrix="constant", linear_potential=True, potential_mlp=False, rail_walls=False)
CARTPOLE = (Constraint("fixed_height", 0), Constraint("fixed_distance", 0, 1))


def _cartpole(mass, gravity, inp, damping):
    """A cartpole in keypoint coordinates: cart on a rail at height 0, pole tip at distance 0.6."""
    cons = ConstraintSet(CARTPOLE, 2, init_length=0.6)
    dyn = Dynamics(2, 1, cons, STRUCTURED)
    apply_physics(dyn, PhysicsFit(np.array(mass), np.array(gravity), np.array(inp), np.array(damping), 0, 0.0))
    return dyn


def _simulate(dyn, sequences=24, frames=120, dt=0.01, seed=0):
    """Keypoint sequences `(S, T, 2, 2)` under smooth random actions `(S, T, 1)`, RK4 + projection."""
    from keycld_gym.model.integrators import rollout_step

    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(sequences, generator=g) * 2 * np.pi
    q = torch.stack([torch.stack([torch.rand(sequences, generator=g) - 0.5, torch.zeros(sequences)], -1),
                     torch.stack([torch.rand(sequences, generator=g) - 0.5 + 0.6 * theta.sin(), 0.6 * theta.cos()], -1)], 1)
    v = dyn.constraints.project_velocities(q, torch.randn(sequences, 2, 2, generator=g))
    knots = torch.rand(sequences, frames // 20 + 2, generator=g) * 2 - 1
    u = torch.nn.functional.interpolate(knots[:, None], size=frames, mode="linear", align_corners=True)[:, 0, :, None]
    qs = [q]
    with torch.no_grad():
        for t in range(frames - 1):
            q, v = rollout_step(dyn.acceleration, q, v, u[:, t], dt, substeps=2, constraints=dyn.constraints)
            qs.append(q)
    return torch.stack(qs, 1), u


def test_smoothing_keeps_a_cubic_exactly_and_trims_the_ends():
    t = np.arange(40) * 0.01
    q = np.broadcast_to((1 + 2 * t - 3 * t**3)[None, :, None, None], (2, 40, 1, 2)).copy()
    p, v, a, u = smoothed_derivatives(q, np.ones((2, 39, 1)), 0.01, 11)
    assert p.shape == (2, 30, 1, 2) and u.shape == (2, 30, 1)
    np.testing.assert_allclose(v[0, :, 0, 0], (2 - 9 * t**2)[5:35], atol=1e-9)
    np.testing.assert_allclose(a[0, :, 0, 0], (-18 * t)[5:35], atol=1e-7)
    with pytest.raises(ValueError, match="odd"):
        smoothed_derivatives(q, np.ones((2, 39, 1)), 0.01, 10)


def test_fit_recovers_a_known_cartpoles_accelerations_from_noisy_keypoints():
    # cart 1 + rod terms, pole mass coupling; gravity on the tip's y only; the actuator pushes the cart along x
    mass, gravity, inp = [[1.0, 0.03], [0.03, 0.06]], [0.0, 0.0, 0.0, 0.5], [[6.0], [0.0], [0.0], [0.0]]
    truth = _cartpole(mass, gravity, inp, [0.0, 0.0])
    q, u = _simulate(truth, sequences=40, frames=150)
    noisy = q + 0.01 * torch.randn(q.shape, generator=torch.Generator().manual_seed(1))  # ~0.3 px at 64x128
    fresh = Dynamics(2, 1, ConstraintSet(CARTPOLE, 2, init_length=0.6), STRUCTURED)
    fit = fit_physics(fresh, noisy, u, 0.01)
    assert fit.mass[0, 0] == 1.0 and fit.samples > 0.8 * 40 * (150 - 16)
    # the pole's coupling and a torque on it by the action are nearly collinear on such data (the
    # cart is ten times heavier), so single constants wander; the accelerations they make do not
    assert abs(fit.input[0, 0] - 6.0) < 0.6
    apply_physics(fresh, fit)
    assert torch.allclose(fresh.mass_matrix().detach().double(), torch.from_numpy(fit.mass), atol=1e-4)
    # on states it never saw, the fitted model accelerates as the truth does
    qt, ut = _simulate(truth, sequences=50, frames=2, seed=7)
    vt = truth.constraints.project_velocities(qt[:, 0], torch.randn(50, 2, 2, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        a_true, a_fit = truth.acceleration(qt[:, 0], vt, ut[:, 0]), fresh.acceleration(qt[:, 0], vt, ut[:, 0])
    rel = (a_fit - a_true).norm(dim=(-1, -2)) / a_true.norm(dim=(-1, -2))
    assert rel.median() < 0.1, rel.median()
    untrained = Dynamics(2, 1, ConstraintSet(CARTPOLE, 2, init_length=0.6), STRUCTURED)
    with torch.no_grad():
        rel0 = (untrained.acceleration(qt[:, 0], vt, ut[:, 0]) - a_true).norm(dim=(-1, -2)) / a_true.norm(dim=(-1, -2))
    assert rel0.median() > 0.5


def test_fit_needs_the_structured_parts():
    dyn = Dynamics(2, 1, ConstraintSet(CARTPOLE, 2), DynamicsConfig())
    with pytest.raises(ValueError, match="linear potential"):
        fit_physics(dyn, torch.zeros(2, 40, 2, 2), torch.zeros(2, 40, 1), 0.01)
    with pytest.raises(ValueError, match="potential needs"):
        DynamicsConfig(potential_mlp=False)
