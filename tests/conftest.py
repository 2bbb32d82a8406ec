import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402
import torch  # noqa: E402

from keycld_gym.model.dynamics import DynamicsConfig  # noqa: E402
from keycld_gym.model.encoder import EncoderConfig  # noqa: E402
from keycld_gym.model.keycld import ModelConfig  # noqa: E402
from keycld_gym.model.renderer import RendererConfig  # noqa: E402

# One test per core (`pytest -n 2`): torch's own threads would only fight over the cores.
ONE_THREAD = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if ONE_THREAD:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _torch_threads():
    """Each test starts on one torch thread under xdist (a command's `--threads` may have raised it)."""
    if ONE_THREAD:
        torch.set_num_threads(1)


# A tiny model: enough to check that every part trains, saves and evaluates, in seconds.
TINY_MODEL = ModelConfig(
    encoder=EncoderConfig(channels=8, depth=1),
    renderer=RendererConfig(channels=8, background_channels=4),
    dynamics=DynamicsConfig(hidden=16),
    reward_hidden=16,
)


# With this fraction `tiny_data`'s sequences 3 and 5 fall in the validation split (with 0.2, none
# would), so the evaluations and refits of the tiny model have held-out sequences to score.
TINY_MODEL_VAL_FRACTION = 0.45


def model_with_gravity():
    """An untrained tiny cartpole model with a pole of length ~1 and a non-trivial potential: dynamics to estimate under."""
    from keycld_gym.model.keycld import KeyCLDModel

    torch.manual_seed(0)
    model = KeyCLDModel("cartpole", TINY_MODEL)
    with torch.no_grad():
        model.constraints.raw_length.fill_(0.54)  # length ~1
        model.dynamics.potential_net[-1].weight.mul_(100.0)
    return model


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A real cartpole data set: 6 sequences x 48 frames of the standard task (about 4 s)."""
    from keycld_gym.data.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("tiny") / "cartpole"
    collect(root, CollectConfig("cartpole", episodes=6, frames=48, seed=11, shard_size=3), progress=False, command="test")
    return root


def tiny_train_config(data, **kwargs):
    """TrainConfig of the tiny model on `data`, a few steps of each phase."""
    from keycld_gym.training.config import TrainConfig

    defaults = dict(
        system="cartpole", data=str(data), model=TINY_MODEL, keypoint_steps=6, keypoint_batch=8,
        dynamics_steps=6, dynamics_batch=4, horizon_start=4, horizon_ramp_steps=4, val_fraction=0.2,
        checkpoint_every_s=1e9,
        start_fit_frames=9,  # start states still shot through the model, over one short stage
    )
    defaults.update(kwargs)
    return TrainConfig(**defaults)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_data, tmp_path_factory):
    """A checkpoint folder trained by `Trainer` on `tiny_data`; sequences 3 and 5 held out (validation split)."""
    from keycld_gym.training.trainer import Trainer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_run")
    Trainer(tiny_train_config(tiny_data, val_fraction=TINY_MODEL_VAL_FRACTION), out, command="pytest", progress=False).run()
    return out / "model"


@pytest.fixture(scope="session")
def noisy_model_dir(tiny_model_dir, tiny_data, tmp_path_factory):
    """The tiny model with its measured observation noise, as a recipe asking for it needs."""
    import shutil

    from keycld_gym.model.checkpoint import load_model, write_noise
    from keycld_gym.model.tracking import Tracking
    from keycld_gym.rl.observation_noise import measure_estimation_error

    folder = tmp_path_factory.mktemp("noisy") / "model"
    shutil.copytree(tiny_model_dir, folder)
    result = measure_estimation_error(load_model(folder), tiny_data, tracking=Tracking(window=9), reference=17, every=16)
    assert result["samples"] > 0 and len(result["std"]) == 8 and len(result["frame_std"]) == 4
    write_noise(folder, result)
    return folder


def true_cart_push() -> float:
    """The real cartpole's cart acceleration under a full push, hanging at rest, in image units/s^2 (MuJoCo)."""
    import mujoco
    import numpy as np
    from dm_control import suite

    physics = suite.load("cartpole", "swingup").physics
    with physics.reset_context():
        physics.data.qpos[:] = [0.0, np.pi]
    accel = []
    for u in (1.0, 0.0):
        physics.data.ctrl[:] = u
        mujoco.mj_forward(physics.model.ptr, physics.data.ptr)
        accel.append(physics.data.qacc[0])
    return 0.6036 * (accel[0] - accel[1])  # image units per metre at the cart (test_training.true_keypoints)


def cart_push(model) -> float:
    """A model's cart acceleration `float` under a full push, pole hanging at rest (its constraint length)."""
    q = torch.tensor([[[0.0, 0.0], [0.0, -model.constraints.length[1].item()]]])
    q, v = model.project(q, torch.zeros_like(q), iterations=20)
    with torch.no_grad():
        push = model.dynamics.acceleration(q, v, torch.ones(1, 1)) - model.dynamics.acceleration(q, v, torch.zeros(1, 1))
    return push[0, 0, 0].item()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes_under(marker: str) -> None:
    """End every process whose command line names `marker` (a cluster's own temp dir), and their children (Ray's
    workers): `ray stop` would end every Ray on the machine, a user's own cluster too."""
    table = [line.split(None, 2) for line in subprocess.run(["ps", "-eww", "-o", "pid=,ppid=,args="], capture_output=True,
                                                              text=True).stdout.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    for pid, ppid, *_ in table:
        children.setdefault(int(ppid), []).append(int(pid))
    found = [int(row[0]) for row in table if len(row) == 3 and marker in row[2]]
    stack, every = list(found), set()
    while stack:
        pid = stack.pop()
        if pid not in every and pid != os.getpid():
            every.add(pid)
            stack += children.get(pid, [])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in every:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on this machine: a head node and a second node started with `ray start`, one CPU each.

    Yields the head's address. Tests that use it are marked `xdist_group("ray")` so that one
    test process (and so one cluster) runs them all; skipped where Ray is not installed. The
    cluster keeps its files in a temp dir of its own, by which its processes are found and
    ended afterwards, and nothing else.
    """
    ray = pytest.importorskip("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="keycld-ray-", dir="/tmp")  # short: Ray's socket paths must stay short
    common = ["--num-cpus", "1", "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats",
              f"--temp-dir={temp_dir}"]
    # No token authentication on this private test cluster: Ray reads the mode once, at import,
    # so a driver that imported Ray before the fixture could not take a token set here
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    def run(*args: str) -> None:
        done = subprocess.run([str(ray_bin), *args], env=env, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    try:
        run("start", "--head", "--port", str(port), "--include-dashboard=false", *common)
        run("start", "--address", address, *common)
        yield address
    finally:
        ray.shutdown()
        _stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
