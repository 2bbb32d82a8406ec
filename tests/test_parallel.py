"""Where units of work run (`keycld_gym.parallel`): the same results here, in local processes and on Ray.

The Ray cases run on a real local cluster of two nodes, a head and a second node started with
`ray start` on this machine, one CPU each (`ray_cluster`); they are skipped where Ray is not
installed, so the suite passes without the `[ray]` extra.
"""

import os
import sys
from pathlib import Path

import pytest

from keycld_gym.data.collect import CollectConfig, collect
from keycld_gym.parallel import init_ray, ray_address, run_units
from keycld_gym.rl.agent import load_agent
from keycld_gym.rl.agent_evaluation import evaluate_agent
from keycld_gym.rl.planning import planning_agent


def square_plus(x: int, y: int) -> int:
    return x * x + y


def fails_once(marker: str, value: int) -> int:
    """Raises on its first call for `marker` (a file), then returns `value`: a unit that a retry saves."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("the first try fails")
    return value


def dies_once(marker: str, value: int) -> int:
    """Kills its own process on its first call for `marker`: a worker (or node) that dies mid-unit."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os._exit(1)
    return value


def node_of_unit(_: int) -> str:
    import time

    import ray

    time.sleep(0.5)  # long enough that both nodes get a unit
    return ray.get_runtime_context().get_node_id()


def test_units_give_their_results_in_order_and_report_each():
    units = [(i, 1) for i in range(5)]
    seen = []
    assert run_units(square_plus, units, on_result=lambda i, r: seen.append((i, r))) == [1, 2, 5, 10, 17]
    assert sorted(seen) == [(i, i * i + 1) for i in range(5)]
    assert run_units(square_plus, units, workers=2) == [1, 2, 5, 10, 17]
    assert run_units(square_plus, []) == []
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_units(square_plus, units, workers=0)


def test_a_failing_unit_fails_the_run_locally(tmp_path):
    with pytest.raises(RuntimeError, match="first try"):
        run_units(fails_once, [(str(tmp_path / "m"), 1)], workers=1)


def test_ray_addresses_are_checked():
    assert ray_address(None) is None and ray_address("local") == "local" and ray_address("auto") == "auto"
    assert ray_address("10.0.0.1:6379") == "10.0.0.1:6379" and ray_address("ray://head:10001") == "ray://head:10001"
    for bad in ("", "head", "head:port", "head:0", ":6379", "head:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            ray_address(bad)


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[ray\]\""):
        init_ray("local")


# -- on a real local cluster (`ray_cluster`, tests/conftest.py) ------------------------------------
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_units_run_on_both_nodes_and_failures_are_retried(ray_cluster, tmp_path):
    ray = init_ray(ray_cluster)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2 and ray.cluster_resources()["CPU"] == 2
    assert len(set(run_units(node_of_unit, [(i,) for i in range(6)], ray=ray_cluster))) == 2
    assert run_units(square_plus, [(i, 1) for i in range(5)], ray=ray_cluster) == [1, 2, 5, 10, 17]
    # a unit that raises, and one whose worker process dies, are run again
    assert run_units(fails_once, [(str(tmp_path / "raised"), 7)], ray=ray_cluster) == [7]
    assert run_units(dies_once, [(str(tmp_path / "died"), 8)], ray=ray_cluster) == [8]
    with pytest.raises(Exception, match="first try"):
        run_units(fails_once, [(str(tmp_path / "no-retry"), 9)], ray=ray_cluster, retries=0)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_collection_on_ray_writes_the_local_shards(ray_cluster, tmp_path):
    config = CollectConfig("cartpole", episodes=4, frames=12, seed=5, shard_size=1)
    local = collect(tmp_path / "local", config, workers=1, progress=False, command="test")
    on_ray = collect(tmp_path / "ray", config, ray=ray_cluster, progress=False, command="test")
    assert on_ray["complete"]
    assert [r["sha256"] for r in on_ray["shards"]] == [r["sha256"] for r in local["shards"]]


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_evaluation_on_ray_gives_the_local_returns(ray_cluster):
    """Episode for episode: an SB3 agent, and the planner (whose noise and warm start are per episode)."""
    agent = load_agent("bundled", "pendulum")
    kwargs = dict(episodes=3, seed=100_000, imagined=False, max_steps=12)
    local = evaluate_agent(agent, workers=1, **kwargs)
    assert evaluate_agent(agent, ray=ray_cluster, **kwargs)["real_returns"] == local["real_returns"]
    planner = planning_agent("acrobot", None, "bundled", {"samples": 32, "horizon": 4})
    kwargs = dict(episodes=2, seed=100_000, imagined=False, max_steps=4)
    local = evaluate_agent(planner, workers=2, **kwargs)
    assert evaluate_agent(planner, ray=ray_cluster, **kwargs)["real_returns"] == local["real_returns"]
    assert evaluate_agent(planner, workers=1, **kwargs)["real_returns"] == local["real_returns"]
