"""The README's examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _example(name: str) -> str:
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


@pytest.mark.parametrize("name", ["gym-make", "sb3"])
def test_readme_example_runs(name, capsys):
    scope: dict = {}
    exec(compile(_example(name), f"README:{name}", "exec"), scope)
    if name == "gym-make":
        assert scope["obs"].shape == (8,) and scope["info"]["physics_steps"] == 1000
        assert scope["real"].observation_space == scope["env"].observation_space
    else:
        assert "real return" in capsys.readouterr().out and 0.0 <= scope["ret"] <= 1000.0
