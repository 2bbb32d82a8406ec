"""Where independent units of work run: here, in local processes, or on a Ray cluster.

A unit is one call `fn(*args)` whose result depends on its arguments alone: a data shard, a
real episode, an ablation's training. `run_units` runs a list of them and gives back their
results in the list's order, so a run's output is the same whichever way it ran, unit for
unit. The caller hears of each finished unit at once (`on_result`), which is how collection
and evaluation keep what finished when the rest fails.

- `workers <= 1`, no Ray: one after another in this process.
- `workers > 1`, no Ray: that many fresh local processes (spawned: a GL context does not
  survive a fork).
- `ray` set: Ray tasks of one CPU each, on every node of the cluster. `"local"` starts a
  Ray on this machine or joins the one `ray start` left here (`ray.init()`); `"auto"` or an
  address (`"10.0.0.1:6379"`) joins a running cluster. Ray retries a unit whose worker or
  node dies, and one that raises, `retries` times. Ray is imported here only, and only when
  asked for: the base install needs none (`pip install -e ".[ray]"`).

Each node runs the units with its own installed package, and each unit gets everything it
reads in its arguments (weights and settings, never a path on the caller's disk), except
where a caller says otherwise (the ablations read and write their run folder).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

# What a unit's process must see as the caller does (MuJoCo's GL backend is read at import).
_FORWARDED_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM")
RAY_HELP = "pip install -e \".[ray]\" (Ray core and Tune)"


def ray_address(value: str | None) -> str | None:
    """A `--ray` value checked: None (no Ray), "local" (start or join one here), "auto", HOST:PORT or ray://HOST:PORT."""
    if value is None or value in ("local", "auto"):
        return value
    host, _, port = value.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--ray {value!r}: give nothing (a local Ray), 'auto' (the cluster running here) or the "
                         "head node's address HOST:PORT (ray://HOST:PORT for Ray Client)")
    return value


def init_ray(address: str) -> Any:
    """Start or join Ray (`ray_address`) and return the module; a clear error where Ray is not installed."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"--ray needs Ray, which the base install leaves out: {RAY_HELP}") from err
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        ray.init(address=None if address == "local" else address, runtime_env={"env_vars": env} if env else None,
                 log_to_driver=False, configure_logging=False)
    return ray


def run_units(fn: Callable[..., Any], units: Sequence[tuple], *, workers: int = 1, ray: str | None = None,
              on_result: Callable[[int, Any], None] | None = None, retries: int = 2) -> list[Any]:
    """`[fn(*u) for u in units]`, run as the module docstring says; `on_result(i, result)` as each unit finishes."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    results: list[Any] = [None] * len(units)

    def finished(i: int, result: Any) -> None:
        results[i] = result
        if on_result is not None:
            on_result(i, result)

    if not units:
        return results
    if ray is not None:
        _run_on_ray(fn, units, ray, finished, retries)
    elif workers <= 1 or len(units) == 1:
        for i, args in enumerate(units):
            finished(i, fn(*args))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(units)), mp_context=ctx) as pool:
            futures = {pool.submit(fn, *args): i for i, args in enumerate(units)}
            try:
                for fut in as_completed(futures):
                    finished(futures[fut], fut.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return results


def _run_on_ray(fn: Callable[..., Any], units: Sequence[tuple], address: str, finished: Callable[[int, Any], None],
                retries: int) -> None:
    ray = init_ray(ray_address(address))
    remote = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=retries > 0)(fn)
    # an argument the units share (a model, an agent) goes to the object store once, not once per unit
    stored: dict[int, Any] = {}

    def stored_once(arg: Any) -> Any:
        if isinstance(arg, (int, float, str, bool, type(None))):
            return arg
        if id(arg) not in stored:  # `units` holds every argument alive, so ids are not reused meanwhile
            stored[id(arg)] = ray.put(arg)
        return stored[id(arg)]

    pending = {remote.remote(*map(stored_once, args)): i for i, args in enumerate(units)}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for task in done:
                finished(pending.pop(task), ray.get(task))
    except BaseException:
        for task in pending:
            ray.cancel(task, force=True)
        raise
