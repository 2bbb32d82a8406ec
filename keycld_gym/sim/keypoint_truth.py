"""The real system's keypoints from its true state: what the learned keypoints should be.

Every spec names where its keypoints sit on the real bodies (`SystemSpec.keypoint_points`).
Their positions in the plane the camera looks at (world x and z: every spec's camera looks
along the world y axis), their velocities and accelerations come straight from MuJoCo. The
diagnostics map them into a model's keypoint space by one affine map (`KeypointMap`); only
the references see them (`envs/true_keypoints.py`: what an agent reaches on the true state),
never a model or an agent of imagination.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from keycld_gym.sim.systems import SystemSpec


def true_points(physics: Any, spec: SystemSpec) -> np.ndarray:
    """The keypoints' positions `(K, 2)` (world x, z; metres) in the physics' current kinematics."""
    if not spec.keypoint_points:
        raise ValueError(f"{spec.name}: the spec names no keypoint_points")
    d = physics.named.data
    out = []
    for p in spec.keypoint_points:
        pos = getattr(d, f"{'x' if p.kind == 'body' else p.kind + '_x'}pos")[p.name]
        mat = getattr(d, f"{'x' if p.kind == 'body' else p.kind + '_x'}mat")[p.name].reshape(3, 3)
        world = pos + mat @ np.asarray(p.offset)
        out.append((world[0], world[2]))
    return np.array(out)


def _points_at(physics: Any, spec: SystemSpec, qpos: np.ndarray) -> np.ndarray:
    physics.data.qpos[:] = qpos
    mujoco.mj_kinematics(physics.model.ptr, physics.data.ptr)
    return true_points(physics, spec)


def point_jacobian(physics: Any, spec: SystemSpec, qpos: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d points / d qpos `(K, 2, nq)` at `qpos` (central differences; leaves the physics' kinematics at `qpos`)."""
    jac = np.stack([(_points_at(physics, spec, qpos + h * e) - _points_at(physics, spec, qpos - h * e)) / (2 * h)
                    for e in np.eye(len(qpos))], -1)
    _points_at(physics, spec, qpos)
    return jac


def true_motion(physics: Any, spec: SystemSpec) -> tuple[np.ndarray, np.ndarray]:
    """The keypoints' positions and velocities `(K, 2)` each in the physics' current state."""
    qpos, qvel = physics.data.qpos.copy(), physics.data.qvel.copy()
    jac = point_jacobian(physics, spec, qpos)
    return true_points(physics, spec), jac @ qvel


def random_state(rng: np.random.Generator, spec: SystemSpec, slider_range: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A state `(nq,)`, `(nv,)` from the spec's ``states`` box, sliders within `slider_range` of the centre."""
    qpos = rng.uniform(spec.state_qpos_low, spec.state_qpos_high)
    for i, name in enumerate(spec.qpos_names):
        if "slider" in name:
            qpos[i] = rng.uniform(-slider_range, slider_range)
    return qpos, rng.uniform(spec.state_qvel_low, spec.state_qvel_high)


def exact_samples(physics: Any, spec: SystemSpec, n: int, seed: int, actions: tuple[float, ...] | None = None,
                  slider_range: float = 1.0, states: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Keypoints, velocities `(n, K, 2)` and accelerations `(n, U, K, 2)` under actions `(n, U, A)` at random states.

    States are drawn by `random_state` (sliders within `slider_range` of the centre, away from
    the rail stops, which no smooth Lagrangian holds), or given: `states` = qpos `(n, nq)`,
    qvel `(n, nv)`. `actions`: the constant actions each state is evaluated under (default
    one random action per state).
    """
    rng = np.random.default_rng(seed)
    nu = physics.model.nu
    out: dict[str, list] = {k: [] for k in ("q", "qd", "qdd", "u")}
    for i in range(n):
        qpos, qvel = random_state(rng, spec, slider_range) if states is None else (states[0][i], states[1][i])
        us = [rng.uniform(-1, 1, nu)] if actions is None else [np.full(nu, a) for a in actions]
        points = _points_at(physics, spec, qpos)
        curv = (_points_at(physics, spec, qpos + 1e-3 * qvel) - 2 * points
                + _points_at(physics, spec, qpos - 1e-3 * qvel)) / 1e-6
        jac = point_jacobian(physics, spec, qpos)
        qdds = []
        for u in us:
            with physics.reset_context():
                physics.data.qpos[:], physics.data.qvel[:] = qpos, qvel
            physics.data.ctrl[:] = u
            mujoco.mj_forward(physics.model.ptr, physics.data.ptr)
            qdds.append(jac @ physics.data.qacc + curv)
        out["q"].append(points)
        out["qd"].append(jac @ qvel)
        out["qdd"].append(qdds)
        out["u"].append(us)
    return {k: np.array(v) for k, v in out.items()}


def move_along(p: np.ndarray, along: tuple[tuple[int, int, float], ...]) -> np.ndarray:
    """Points, velocities or accelerations `(..., K, 2)` with the end b of each link `(a, b, f)` moved to `f` of the way from a."""
    if not along:
        return p
    out = np.array(p, dtype=float, copy=True)
    for i, j, f in along:
        out[..., j, :] = p[..., i, :] + f * (p[..., j, :] - p[..., i, :])
    return out


class KeypointMap:
    """The affine map `kp = A p + b` from true points (world x, z) to a model's keypoint space.

    `along`: links `(a, b, f)` whose end point b is first moved to `f` of the way from a, the
    point a learned keypoint follows on its body (a pole keypoint at 93% of the pole; the
    diagnostics' `tracked_keypoint_map` finds f). Moving along a link is linear, so velocities
    and accelerations move alike.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, along: tuple[tuple[int, int, float], ...] = ()):
        self.a, self.b, self.along = a, b, tuple((int(i), int(j), float(f)) for i, j, f in along)

    def moved(self, p: np.ndarray) -> np.ndarray:
        """Points, velocities or accelerations `(..., K, 2)` with each `along` link's end moved to its fraction."""
        return move_along(p, self.along)

    def points(self, p: np.ndarray) -> np.ndarray:
        """Keypoints `(..., K, 2)` of true points `(..., K, 2)`."""
        return self.moved(p) @ self.a.T + self.b

    def vectors(self, v: np.ndarray) -> np.ndarray:
        """Keypoint velocities or accelerations `(..., K, 2)` of the true ones."""
        return self.moved(v) @ self.a.T

    def to_dict(self) -> dict[str, list]:
        """The map as plain lists (JSON)."""
        return {"a": self.a.tolist(), "b": self.b.tolist(), "along": [list(x) for x in self.along]}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "KeypointMap":
        """The map `to_dict` wrote (`along` optional)."""
        return cls(np.asarray(d["a"], dtype=float), np.asarray(d["b"], dtype=float), tuple(map(tuple, d.get("along", ()))))

    @property
    def scale(self) -> float:
        """Keypoint units per metre (the map's mean singular value)."""
        return float(np.linalg.svd(self.a, compute_uv=False).mean())


def fit_keypoint_map(keypoints: np.ndarray, points: np.ndarray,
                     along: tuple[tuple[int, int, float], ...] = ()) -> KeypointMap:
    """The least-squares affine map (one for all keypoints) from true points to encoded keypoints `(N, K, 2)`.

    `along`: as `KeypointMap`'s, applied to the points before the fit.
    """
    p = move_along(points, along).reshape(-1, 2)
    x = np.concatenate([p, np.ones((len(p), 1))], 1)
    w, *_ = np.linalg.lstsq(x, keypoints.reshape(-1, 2), rcond=None)
    return KeypointMap(w[:2].T, w[2], along)
