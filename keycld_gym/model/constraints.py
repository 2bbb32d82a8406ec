"""Holonomic constraints over keypoints, with learnable constants, batched.

Keypoints q: `(..., K, 2)` in image coordinates. Each constraint is written in squared
form, phi = (|d|^2 - l^2) / 2 for distances, so it is smooth everywhere: no square root
to guard when keypoints start on top of each other near the origin, and the constraint
manifold (|d| = l > 0) and constraint forces J^T lambda are the same as for |d| - l.

For a set of C constraints, `ConstraintSet` gives
    phi(q)            (..., C)          the violations,
    jacobian(q)       (..., C, 2K)      J = dphi/dq over the flattened keypoints,
    jdot_qdot(q, v)   (..., C)          d2phi/dq2 [v, v] (= Jdot qdot).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from keycld_gym.sim.systems import Constraint, Joint


def inv_softplus(x: float) -> float:
    """The raw parameter whose softplus is `x` (> 0)."""
    return float(torch.log(torch.expm1(torch.tensor(x))))


class ConstraintSet(nn.Module):
    """The constraints of one system; their constants (heights, pivots, lengths) are parameters.

    Args:
        constraints: the spec's constraints.
        num_keypoints: K.
        init_length: initial length of distance constraints (image units); lengths stay
            positive through a softplus.
    """

    def __init__(self, constraints: Sequence[Constraint], num_keypoints: int, init_length: float = 0.5):
        super().__init__()
        self.constraints = tuple(constraints)
        self.num_keypoints = num_keypoints
        for c in self.constraints:
            for k in (c.a, c.b):
                if k is not None and not 0 <= k < num_keypoints:
                    raise ValueError(f"constraint {c} refers to keypoint {k}, but there are {num_keypoints}")
        n = len(self.constraints)
        self.height = nn.Parameter(torch.zeros(n))  # used by fixed_height
        self.pivot = nn.Parameter(torch.zeros(n, 2))  # used by fixed_pivot_distance
        self.raw_length = nn.Parameter(torch.full((n,), inv_softplus(init_length)))

    @property
    def num_constraints(self) -> int:
        """C."""
        return len(self.constraints)

    @property
    def length(self) -> torch.Tensor:
        """Lengths of the distance constraints `(C,)` (entries of other kinds unused)."""
        return nn.functional.softplus(self.raw_length)

    def _diff(self, q: torch.Tensor, i: int, c: Constraint) -> torch.Tensor:
        """The vector whose length a distance constraint fixes, `(..., 2)`."""
        if c.kind == "fixed_pivot_distance":
            return q[..., c.a, :] - self.pivot[..., i, :]
        return q[..., c.b, :] - q[..., c.a, :]

    def link_into(self, keypoint: int) -> tuple[int, Constraint]:
        """The rigid link that ends at `keypoint`: (index, constraint) of its distance constraint.

        A ``fixed_pivot_distance`` on the keypoint (the link from the learned pivot) or a
        ``fixed_distance`` whose second keypoint it is (the link from the first).
        """
        for i, c in enumerate(self.constraints):
            if (c.kind == "fixed_pivot_distance" and c.a == keypoint) or (c.kind == "fixed_distance" and c.b == keypoint):
                return i, c
        raise ValueError(f"no rigid link ends at keypoint {keypoint}: a joint needs one (constraints {self.constraints})")

    def joint_angle_gradient(self, q: torch.Tensor, joint: Joint) -> torch.Tensor:
        """d theta / dq `(..., K, 2)` of a joint's angle at keypoints `(..., K, 2)`.

        A link's direction angle theta = atan2(d_y, d_x), d = end - start, has gradient
        R90(d) / |d|^2 at its end and the negative at its start (R90(d) = (-d_y, d_x)); a
        joint between two links takes the difference. A torque tau on the joint is the
        generalised force tau * d theta / dq, and damping b on its rate the force
        -b (d theta / dq) (d theta / dq . qdot) (virtual work;
        docs/method/dynamics.md, "Joint actuators and joint damping").
        """
        grad = q.new_zeros(q.shape)
        for sign, keypoint in ((1.0, joint.child), (-1.0, joint.parent)):
            if keypoint is None:
                continue
            i, c = self.link_into(keypoint)
            d = self._diff(q, i, c)
            r90 = torch.stack([-d[..., 1], d[..., 0]], -1) / (d * d).sum(-1, keepdim=True)
            grad[..., keypoint, :] += sign * r90
            if c.kind == "fixed_distance":
                grad[..., c.a, :] -= sign * r90
        return grad

    def phi(self, q: torch.Tensor) -> torch.Tensor:
        """Constraint violations `(..., C)` of keypoints `(..., K, 2)`."""
        out = []
        for i, c in enumerate(self.constraints):
            if c.kind == "fixed_height":
                out.append(q[..., c.a, 1] - self.height[..., i])
            else:
                d = self._diff(q, i, c)
                out.append(0.5 * ((d * d).sum(-1) - self.length[..., i] ** 2))
        return torch.stack(out, -1)

    def jacobian(self, q: torch.Tensor) -> torch.Tensor:
        """J = dphi/dq `(..., C, 2K)` over keypoints flattened as (x0, y0, x1, y1, ...)."""
        rows = []
        for i, c in enumerate(self.constraints):
            row = q.new_zeros(*q.shape[:-2], self.num_keypoints, 2)
            if c.kind == "fixed_height":
                row[..., c.a, 1] = 1.0
            elif c.kind == "fixed_pivot_distance":
                row[..., c.a, :] = self._diff(q, i, c)
            else:
                d = self._diff(q, i, c)
                row[..., c.a, :] = -d
                row[..., c.b, :] = d
            rows.append(row.flatten(-2))
        return torch.stack(rows, -2)

    def jdot_qdot(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        """d2phi/dq2 [qdot, qdot] `(..., C)` for keypoints and velocities `(..., K, 2)`."""
        out = []
        for c in self.constraints:
            if c.kind == "fixed_height":
                out.append(qdot.new_zeros(qdot.shape[:-2]))
            elif c.kind == "fixed_pivot_distance":
                out.append((qdot[..., c.a, :] ** 2).sum(-1))
            else:
                out.append(((qdot[..., c.b, :] - qdot[..., c.a, :]) ** 2).sum(-1))
        return torch.stack(out, -1)

    def place(self, read: Callable[[int, PlacedLink | None], torch.Tensor],
              pivots: dict[int, torch.Tensor] | None = None, eps: float = 1e-2) -> torch.Tensor:
        """Keypoints `(..., K, 2)` put on the manifold by construction, each constraint in turn placing one keypoint.

        `read(k, link)` gives keypoint k's raw point `(..., 2)`: freely for a keypoint no
        link ends at (link None), else for the link being placed (`PlacedLink`: its start,
        its length and the link placed before it, whose pixels the raw point should avoid).
        A ``fixed_height`` keypoint takes the height; a pivot link's keypoint, or a link's
        second keypoint, keeps only its raw point's direction from the link's start (the
        pivot, or the first keypoint as already placed) and takes the link's length. Only
        directions are read: a point anywhere along a link (the centroid of its pixels, on
        its axis) fixes it, where finding its end (the acrobot's elbow, a thin pole's tip)
        would take a point that looks like nothing in particular. `pivots`: keypoint -> pivot
        `(2,)` used instead of this set's own (the renderer's, so lines and keypoints agree).
        """
        moved = {_placed(c) for c in self.constraints if c.kind != "fixed_height"}
        points: list[torch.Tensor | None] = [None if k in moved else read(k, None) for k in range(self.num_keypoints)]
        segments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # keypoint -> the placed link ending at it
        for i, c in enumerate(self.constraints):
            if c.kind == "fixed_height":
                x = points[c.a][..., 0]
                points[c.a] = torch.stack([x, self.height[..., i].to(x.dtype).expand_as(x)], -1)
                continue
            if c.kind == "fixed_pivot_distance":
                start, k = (pivots or {}).get(c.a, self.pivot[..., i, :]), c.a
            else:
                start, k = points[c.a], c.b
            length = self.length[..., i]
            before = segments.get(c.a) if c.kind == "fixed_distance" else None
            d = read(k, PlacedLink(start, length, before)) - start
            # eps (0.3 px) keeps the direction finite where a point sits on its link's start; it shortens
            # a link by under 0.1% once the point is 7 px from the start
            points[k] = start + length * d / (d.pow(2).sum(-1, keepdim=True) + eps**2).sqrt()
            segments[k] = (start, points[k])
        return torch.stack(points, -2)

    def check_placeable(self) -> None:
        """Fail unless `place` can hold every constraint: no keypoint moved by two of them."""
        moved = [_placed(c) for c in self.constraints]
        twice = sorted({k for k in moved if moved.count(k) > 1})
        if twice:
            raise ValueError(f"constrained keypoints need each keypoint fixed by at most one constraint; "
                             f"keypoints {twice} are fixed by more ({self.constraints})")
        for i, c in enumerate(self.constraints):
            if c.kind == "fixed_distance" and c.a in moved[i + 1:]:
                raise ValueError(f"constraint {c} starts from keypoint {c.a}, placed only by a later constraint; "
                                 "list the constraints from the pivot outwards")

    def project_positions(self, q: torch.Tensor, iterations: int = 3) -> torch.Tensor:
        """Gauss-Newton steps q <- q - J^+ phi(q) onto the manifold, `(..., K, 2)`."""
        shape = q.shape
        for _ in range(iterations):
            j = self.jacobian(q)
            step = _pinv_apply(j, self.phi(q))
            q = (q.flatten(-2) - step).reshape(shape)
        return q

    def project_velocities(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        """qdot <- (I - J^+ J) qdot, the tangent space of the manifold, `(..., K, 2)`."""
        j = self.jacobian(q)
        flat = qdot.flatten(-2)
        return (flat - _pinv_apply(j, (j @ flat.unsqueeze(-1)).squeeze(-1))).reshape(qdot.shape)


def _placed(c: Constraint) -> int:
    """The keypoint a constraint places (`ConstraintSet.place`): a link's far end, else its one keypoint."""
    return c.b if c.kind == "fixed_distance" else c.a


class PlacedLink(NamedTuple):
    """A rigid link as `ConstraintSet.place` places it: its start `(..., 2)` or `(2,)`, its length, and
    the link placed before it (start, end), if it continues one (the acrobot's lower arm)."""

    start: torch.Tensor
    length: torch.Tensor
    before: tuple[torch.Tensor, torch.Tensor] | None


def _pinv_apply(j: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """J^+ r = J^T (J J^T)^-1 r for full-row-rank J `(..., C, N)`, r `(..., C)` -> `(..., N)`."""
    jjt = j @ j.transpose(-1, -2)
    eye = torch.eye(jjt.shape[-1], dtype=j.dtype, device=j.device)
    sol, _ = solve_small(jjt + 1e-9 * eye, r)
    return (j.transpose(-1, -2) @ sol.unsqueeze(-1)).squeeze(-1)


def solve_small(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x with a x = b for systems `(..., C, C)`, `(..., C)` -> x `(..., C)` and whether each was solvable `(...)` bool.

    The constraint systems here have one or two rows (a rail, a rigid link per body), where
    a general batched LU spends more on its calls than on the arithmetic: those are solved in
    closed form (Cramer's rule), larger ones by `torch.linalg.solve_ex`. An unsolvable system
    gives non-finite x, as the LU's singular case does for the callers that catch it.
    """
    c = a.shape[-1]
    if c == 1:
        det = a[..., 0, 0]
        return b / det[..., None], det != 0
    if c == 2:
        a00, a01, a10, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 0], a[..., 1, 1]
        det = a00 * a11 - a01 * a10
        x = torch.stack([a11 * b[..., 0] - a01 * b[..., 1], a00 * b[..., 1] - a10 * b[..., 0]], -1) / det[..., None]
        return x, det != 0
    x, info = torch.linalg.solve_ex(a, b.unsqueeze(-1))
    return x.squeeze(-1), info == 0
