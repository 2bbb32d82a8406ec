"""One frozen spec per system: the single source of truth for task, camera and timing.

Nothing else in the package hard-codes a camera, an image size, an action repeat or a
constraint: every module reads them from the `SystemSpec` returned by `get_system`.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from keycld_gym.errors import UnknownSystemError
from keycld_gym.files import differing_keys

CONSTRAINT_KINDS = ("fixed_height", "fixed_pivot_distance", "fixed_distance")
# What a data set or a checkpoint depends on: the task and its physics, the camera (pose
# and frame size), and the learned state's keypoints and constraints.
COMPATIBILITY_FIELDS = ("name", "domain", "task", "camera", "physics_dt", "episode_steps", "num_keypoints",
                        "constraints", "qpos_names")


@dataclass(frozen=True)
class Windows:
    """How long each window of frames is, in seconds: the same durations for every system.

    A window of `s` seconds spans `SystemSpec.frames(s)` frames at the physics rate (both
    ends included), so a system whose physics step is twice as long uses half the frames
    for the same stretch of motion. The durations were chosen on cartpole (0.01 s steps),
    where they are the frame counts measured there: 9, 17 and 33 frames.
    """

    tracking: float = 0.16  # the real env's causal state estimate at each agent step
    start_fit: float = 0.32  # training: each rollout's start state, fitted by shooting
    evaluation_start: float = 0.32  # evaluation: the start state of every held-out prediction
    smoothing: float = 0.16  # centred fits that smooth keypoints into states (reward head, physics start)
    start_bank: float = 0.08  # the shipped real start frames of each imagined episode
    estimation_stages: tuple[float, ...] = (0.08, 0.16)  # coarse-to-fine prefixes of a cold fit


WINDOWS = Windows()


def frames_in(seconds: float, dt: float) -> int:
    """Frames `dt` apart spanning `seconds`, both ends included (at least 2)."""
    return max(2, round(seconds / dt) + 1)


@dataclass(frozen=True)
class CameraSpec:
    """Where the observation camera looks from and the frame it renders.

    Either `name` names a camera of the dm_control model (e.g. ``"fixed"``), or `name` is
    None and the free camera is placed at `lookat`/`distance`/`azimuth`/`elevation`
    (dm_control's `MovableCamera.set_pose`), which frames a view without touching physics.
    """

    height: int
    width: int
    name: str | None = None
    lookat: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: float = 0.0
    azimuth: float = 0.0
    elevation: float = 0.0

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"camera size must be positive, got {self.height}x{self.width}")
        if self.name is None and self.distance <= 0:
            raise ValueError("a free camera (name=None) needs a positive distance")

    def resized(self, height: int, width: int) -> "CameraSpec":
        """The same view rendered at another size (same field of view, vertical fovy)."""
        return dataclasses.replace(self, height=height, width=width)


@dataclass(frozen=True)
class Constraint:
    """One holonomic constraint over keypoints (its constants are learned by the model).

    kinds: ``fixed_height`` (keypoint `a` keeps a constant image y), ``fixed_pivot_distance``
    (keypoint `a` keeps a constant distance to a learned pivot), ``fixed_distance``
    (keypoints `a` and `b` keep a constant distance).
    """

    kind: str
    a: int
    b: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in CONSTRAINT_KINDS:
            raise ValueError(f"unknown constraint kind {self.kind!r}; valid: {CONSTRAINT_KINDS}")
        if (self.kind == "fixed_distance") != (self.b is not None):
            raise ValueError(f"constraint {self.kind!r} takes {'two' if self.b is None else 'one'} keypoints")


@dataclass(frozen=True)
class Joint:
    """A hinge of the real system in keypoint terms (docs/method/dynamics.md, "Joint actuators and joint damping").

    Its angle is the direction of the link into keypoint `child` (from the learned pivot of a
    ``fixed_pivot_distance`` constraint on `child`, or from the other keypoint of a
    ``fixed_distance`` constraint ending at `child`), measured from the link into `parent`
    (None: from the image's x axis).
    """

    child: int
    parent: int | None = None


POINT_KINDS = ("body", "geom", "site")


@dataclass(frozen=True)
class BodyPoint:
    """Where a keypoint sits on the real system: a body's, geom's or site's origin plus `offset` in its frame (metres).

    Only diagnostics read it (the keypoints are learned without it): the true state mapped
    into keypoint space, to tell the encoder's, the dynamics' and the state estimate's
    errors apart.
    """

    kind: str
    name: str
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.kind not in POINT_KINDS:
            raise ValueError(f"unknown point kind {self.kind!r}; valid: {POINT_KINDS}")


ACTUATOR_KINDS = ("force", "torque")


@dataclass(frozen=True)
class Actuator:
    """What one action dimension drives: a ``force`` on `keypoint` along a fixed direction
    (the cartpole's cart), or a ``torque`` on `joint` (the pendulum's hinge, the acrobot's elbow)."""

    kind: str
    keypoint: int | None = None
    joint: Joint | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTUATOR_KINDS:
            raise ValueError(f"unknown actuator kind {self.kind!r}; valid: {ACTUATOR_KINDS}")
        if (self.kind == "force") != (self.keypoint is not None) or (self.kind == "torque") != (self.joint is not None):
            raise ValueError("a force actuator names its keypoint, a torque actuator its joint")


@dataclass(frozen=True)
class SystemSpec:
    """Everything that defines one system: the real task, its camera, timing and structure.

    Attributes:
        name: short name used everywhere (``"cartpole"``).
        domain, task: the unmodified dm_control suite task.
        camera: the observation camera and frame size (H, W).
        action_repeat: physics steps an agent action is held for (agent interval
            = action_repeat * physics_dt).
        physics_dt: the task's physics (= control) timestep in seconds, checked against
            the loaded model.
        episode_steps: physics steps per episode (returns on a 0..episode_steps scale).
        num_keypoints: K, keypoints of the learned state.
        constraints: the holonomic constraints over those keypoints.
        qpos_names: names of the physical coordinates, in dm_control's qpos order.
        state_qpos_low/high, state_qvel_low/high: the box the ``states`` data regime
            samples start states from (whole state space, as the KeyCLD authors did).
        actuators: what each action dimension drives, in keypoint terms (the structured
            input matrix follows from them).
        joints: the hinges whose rates the task damps (the structured joint damping).
        keypoint_points: where each keypoint sits on the real system (diagnostics only).
        render_scale: how much larger than the observation `render_mode="rgb_array"` is.
        prediction_horizon_s: how far ahead `evaluate-model` scores open-loop prediction
            (VPT): long enough that the true simulator, restarted from a slightly wrong
            state, does not stay valid over all of it (a VPT that every predictor reaches
            says nothing); at most one episode less the start window.
        camera_note: why this camera, with the measured facts behind the choice.
    """

    name: str
    domain: str
    task: str
    camera: CameraSpec
    action_repeat: int
    physics_dt: float
    episode_steps: int
    num_keypoints: int
    constraints: tuple[Constraint, ...]
    qpos_names: tuple[str, ...]
    state_qpos_low: tuple[float, ...]
    state_qpos_high: tuple[float, ...]
    state_qvel_low: tuple[float, ...]
    state_qvel_high: tuple[float, ...]
    actuators: tuple[Actuator, ...] = ()
    joints: tuple[Joint, ...] = ()
    keypoint_points: tuple[BodyPoint, ...] = ()
    render_scale: int = 4
    prediction_horizon_s: float = 9.6
    camera_note: str = ""

    def __post_init__(self) -> None:
        if self.episode_steps % self.action_repeat:
            raise ValueError(
                f"{self.name}: episode_steps {self.episode_steps} is not a multiple of "
                f"action_repeat {self.action_repeat}"
            )
        for act in self.actuators:
            joint = act.joint or Joint(child=act.keypoint)
            if any(not 0 <= k < self.num_keypoints for k in (joint.child, joint.parent) if k is not None):
                raise ValueError(f"{self.name}: actuator {act} names a keypoint outside 0..{self.num_keypoints - 1}")
        if self.keypoint_points and len(self.keypoint_points) != self.num_keypoints:
            raise ValueError(f"{self.name}: keypoint_points must name {self.num_keypoints} points")
        n = len(self.qpos_names)
        for field in ("state_qpos_low", "state_qpos_high", "state_qvel_low", "state_qvel_high"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{self.name}: {field} must have {n} entries")
        episode_s = self.episode_steps * self.physics_dt
        if not self.agent_dt <= self.prediction_horizon_s <= episode_s - WINDOWS.evaluation_start:
            raise ValueError(f"{self.name}: prediction_horizon_s must lie in [{self.agent_dt}, "
                             f"{episode_s - WINDOWS.evaluation_start:.2f}] s (one agent step to an episode less "
                             f"the start window), got {self.prediction_horizon_s}")

    @property
    def prediction_steps(self) -> int:
        """Agent steps in `prediction_horizon_s`."""
        return int(round(self.prediction_horizon_s / self.agent_dt))

    @property
    def agent_dt(self) -> float:
        """Seconds between two agent steps."""
        return self.action_repeat * self.physics_dt

    def frames(self, seconds: float) -> int:
        """Frames at the physics rate spanning `seconds`, both ends included (at least 2)."""
        return frames_in(seconds, self.physics_dt)

    @property
    def agent_steps(self) -> int:
        """Agent steps per episode."""
        return self.episode_steps // self.action_repeat

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Observation frame shape (H, W, 3)."""
        return (self.camera.height, self.camera.width, 3)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the spec (stored in manifests and checkpoints)."""
        return dataclasses.asdict(self)

    def differences(self, saved: dict | None) -> list[str]:
        """Fields that change physics or images in which a stored spec dict (a manifest's, a checkpoint's) differs.

        Only `COMPATIBILITY_FIELDS` count: prose (`camera_note`), the episode's action repeat
        and the ``states`` regime's sampling box do not change a recorded frame or a learned
        weight, so editing them keeps every data set and checkpoint valid.
        """
        return differing_keys(saved, self.to_dict(), COMPATIBILITY_FIELDS)

    def checked_action_repeat(self, action_repeat: int | None) -> int:
        """The action repeat to use: the spec's by default; else a positive divisor of the episode."""
        if action_repeat is None:
            repeat = self.action_repeat
        elif isinstance(action_repeat, numbers.Integral) and not isinstance(action_repeat, bool):
            repeat = int(action_repeat)
        else:  # 2.7 or "4": never truncated or parsed silently
            raise ValueError(f"action_repeat must be a whole number of physics steps (an int), got {action_repeat!r}")
        if repeat < 1 or self.episode_steps % repeat:
            raise ValueError(f"action_repeat must be a positive divisor of {self.episode_steps}, got {action_repeat!r}")
        return repeat


_TWO_PI = 6.283185307179586
_PI = _TWO_PI / 2

SYSTEMS: dict[str, SystemSpec] = {
    "cartpole": SystemSpec(
        name="cartpole",
        domain="cartpole",
        task="swingup",
        # The pixel-RL papers' `fixed` camera, rendered twice as wide. At 64x64 it loses the
        # cart beyond |x| ~ 1.65 m, while the stiff rail stop (limit 1.8 m) lets the cart
        # reach 2.06 m under full force (measured; tests check < 2.1 m). At 64x128 cart and
        # pole stay in frame for every |x| <= 2.1 m and every pole angle (pole tip >= 4 px
        # from the edge), at the same scale (19.3 px per metre, pole ~1.7 px wide). Moving
        # the camera back instead thins the pole to ~1.2 px, where a light keypoint model
        # lost it (docs/method/measured-facts.md, "Keypoints from pixels").
        camera=CameraSpec(height=64, width=128, name="fixed"),
        action_repeat=8,
        physics_dt=0.01,
        episode_steps=1000,
        num_keypoints=2,  # cart, pole tip
        constraints=(
            Constraint("fixed_height", a=0),
            Constraint("fixed_distance", a=0, b=1),
        ),
        qpos_names=("slider", "hinge_1"),
        actuators=(Actuator("force", keypoint=0),),  # the slider motor pushes the cart
        joints=(Joint(child=1),),  # the pole's hinge (its damping, 2e-6, is negligible)
        keypoint_points=(BodyPoint("body", "cart"), BodyPoint("body", "pole_1", (0.0, 0.0, 1.0))),  # the pole is 1 m
        state_qpos_low=(-1.7, -_PI),
        state_qpos_high=(1.7, _PI),
        state_qvel_low=(-2.0, -8.0),
        state_qvel_high=(2.0, 8.0),
        camera_note="fixed camera (pixel-RL standard), 64x128 keeps the whole rail and pole in view",
    ),
    "pendulum": SystemSpec(
        name="pendulum",
        domain="pendulum",
        task="swingup",
        # The `fixed` camera looks down at 45 degrees, so the bob's image distance from the
        # pivot is not constant and the distance constraint would not hold. A free camera
        # straight in front of the swing plane (azimuth 90, elevation 0) at the pivot
        # (z = 0.6 m), 1.6 m away, frames the 0.55 m swing circle at ~27 px radius of 32.
        camera=CameraSpec(height=64, width=64, name=None, lookat=(0.0, 0.0, 0.6),
                          distance=1.6, azimuth=90.0, elevation=0.0),
        # 2 as in PlaNet/Dreamer: the pendulum's physics step is already 0.02 s, so an
        # agent interval of 0.04 s matches cartpole's 0.08 s in swings per step.
        action_repeat=2,
        physics_dt=0.02,
        episode_steps=1000,
        num_keypoints=1,  # bob
        constraints=(Constraint("fixed_pivot_distance", a=0),),
        qpos_names=("hinge",),
        actuators=(Actuator("torque", joint=Joint(child=0)),),  # the hinge motor turns the bob
        joints=(Joint(child=0),),  # damping 0.1 on the hinge
        keypoint_points=(BodyPoint("geom", "mass"),),
        state_qpos_low=(-_PI,),
        state_qpos_high=(_PI,),
        state_qvel_low=(-6.0,),
        state_qvel_high=(6.0,),
        # a pendulum's true simulator stays valid for seconds: the whole episode (less the start window)
        prediction_horizon_s=19.6,
        camera_note="frontal free camera framed to the swing circle (fixed camera is oblique)",
    ),
    "acrobot": SystemSpec(
        name="acrobot",
        domain="acrobot",
        task="swingup",
        # The `fixed` camera is head-on but 6 m away (links ~1.3 px wide at 64x64). A free
        # camera at the same head-on angle, 5.3 m from the shoulder, still frames the 2.05 m
        # reach circle (half-height 2.2 m, ~30 of 32 px) and widens the links to ~1.45 px.
        camera=CameraSpec(height=64, width=64, name=None, lookat=(0.0, 0.0, 2.0),
                          distance=5.3, azimuth=90.0, elevation=0.0),
        action_repeat=4,  # 0.04 s agent interval; 250 agent steps per episode
        physics_dt=0.01,
        episode_steps=1000,
        num_keypoints=2,  # elbow, tip
        constraints=(
            Constraint("fixed_pivot_distance", a=0),
            Constraint("fixed_distance", a=0, b=1),
        ),
        qpos_names=("shoulder", "elbow"),
        # only the elbow is driven; both joints are damped (0.05)
        actuators=(Actuator("torque", joint=Joint(child=1, parent=0)),),
        joints=(Joint(child=0), Joint(child=1, parent=0)),
        keypoint_points=(BodyPoint("body", "lower_arm"), BodyPoint("site", "tip")),
        state_qpos_low=(-_PI, -_PI),
        state_qpos_high=(_PI, _PI),
        state_qvel_low=(-6.0, -10.0),
        state_qvel_high=(6.0, 10.0),
        camera_note="head-on free camera framed to the reach circle (fixed is head-on but farther)",
    ),
}


def get_system(name: str | SystemSpec) -> SystemSpec:
    """The spec of a system by name (a spec passes through unchanged)."""
    if isinstance(name, SystemSpec):
        return name
    try:
        return SYSTEMS[name]
    except (KeyError, TypeError):
        raise UnknownSystemError(
            f"unknown system {name!r}; valid systems: {', '.join(sorted(SYSTEMS))}"
        ) from None
