"""The package's layout: each subpackage imports only the layers before it, with no cycles and no hidden imports."""

import ast
import importlib
import importlib.metadata
import pkgutil
from pathlib import Path

import pytest

import keycld_gym

PACKAGE = Path(keycld_gym.__file__).parent
BASE = {"errors", "files", "parallel", "version"}
# The floors, bottom first: a module may import its own floor and the floors below it, never
# one above (each subpackage's docstring says the same). The package root holds the base
# modules (files, errors, the version, where units of work run) and the two entry points
# (`benchmark`, `cli`) only.
FLOORS = ["base", "sim", "data", "model", "envs", "agents", "rl", "analysis", "training", "benchmark", "cli"]
ROOT_MODULES = BASE | {"benchmark", "cli"}
# the package's __init__ re-exports the public API, which lives on these floors
PACKAGE_IMPORTS = {"base", "sim", "model", "envs"}


def upward_imports(imports: dict[str, list[str]]) -> list[str]:
    """Every import of a module on a floor above the importer's: `imports` maps module -> modules it imports."""
    bad = []
    for module, imported in imports.items():
        layer = _layer(module)
        for target in map(_layer, imported):
            allowed = PACKAGE_IMPORTS if layer == "package" else set(FLOORS[:FLOORS.index(layer) + 1])
            if target not in allowed:
                bad.append(f"{module} ({layer}) imports {target}, a floor above it")
    return bad


def _modules() -> dict[str, Path]:
    found = {"keycld_gym": PACKAGE / "__init__.py"}
    for info in pkgutil.walk_packages([str(PACKAGE)], "keycld_gym."):
        spec = importlib.util.find_spec(info.name)
        found[info.name] = Path(spec.origin)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "agents":
        return "agents"
    if len(parts) == 1:
        return "package"
    return "base" if parts[1] in BASE else parts[1]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of keycld_gym or agents in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.split(".")[0] in ("keycld_gym", "agents"):
                found.append((name, id(node) in top))
    return found


def test_every_floor_imports_only_the_floors_below_it():
    assert not upward_imports({m: [i for i, _ in _imports(p)] for m, p in _modules().items()})


def test_the_layout_test_fails_on_an_upward_import():
    assert upward_imports({"keycld_gym.model.keycld": ["keycld_gym.envs.imagination"]})
    assert upward_imports({"keycld_gym.analysis.video": ["keycld_gym.training.pipeline"]})
    assert upward_imports({"keycld_gym.rl.agent": ["keycld_gym.cli"]})
    assert not upward_imports({"keycld_gym.training.pipeline": ["keycld_gym.analysis.evaluation"]})


def test_the_package_root_is_one_floor_of_at_most_six_modules():
    root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert root == ROOT_MODULES, f"modules at the package root: {sorted(root)}; only {sorted(ROOT_MODULES)} belong there"
    assert len(root) <= 6
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(FLOORS) - {"base", "agents", "benchmark", "cli"}, sorted(subpackages)


def test_no_function_local_imports_of_the_package():
    local = [f"{module} imports {imported} inside a function"
             for module, path in _modules().items() for imported, at_top in _imports(path) if not at_top]
    assert not local, "\n".join(local)


def test_no_import_cycles():
    graph = {m: {i for i, _ in _imports(p) if i in _MODULES} for m, p in _MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_every_subpackage_says_what_it_may_import():
    for sub in ("sim", "data", "model", "envs", "rl", "analysis", "training"):
        doc = importlib.import_module(f"keycld_gym.{sub}").__doc__
        assert doc and "May import" in doc, sub


_MODULES = _modules()


def test_installed_packages_are_the_folders_and_nothing_top_level_but_keycld_gym():
    tomllib = pytest.importorskip("tomllib")
    root = PACKAGE.parent
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"keycld_gym"} | {f"keycld_gym.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    folders.add("keycld_gym.agents")  # mapped from the repository's top-level agents/
    weights = PACKAGE / "weights"  # bundled folders, and the models that pixel agents' folders carry
    folders |= {"keycld_gym.weights"} | {"keycld_gym.weights." + ".".join(p.relative_to(weights).parts)
                                         for p in weights.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert set(setup["packages"]) == folders
    assert setup["package-dir"] == {"keycld_gym.agents": "agents"}
    assert {name.split(".")[0] for name in setup["packages"]} == {"keycld_gym"}
    top_level = importlib.metadata.distribution("keycld-gym").read_text("top_level.txt")
    assert top_level is None or top_level.split() == ["keycld_gym"]
    assert importlib.import_module("keycld_gym.agents").get_recipe("cartpole").system == "cartpole"


def test_constraints_pin_every_dependency_inside_its_range():
    """`constraints.txt` (the measured set) satisfies the ranges `pyproject.toml` asks for."""
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    root = PACKAGE.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = requirements.Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt pins no {name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {spec}"


def test_no_absolute_path_in_any_shipped_file():
    """Bundled records say where things were relative to the repository, never the machine they were made on."""
    import re

    found = []
    for path in (PACKAGE / "weights").rglob("*"):
        if path.suffix in (".json", ".md"):
            found += [f"{path.relative_to(PACKAGE)}: {m}" for m in re.findall(r'"(/(?:home|work|tmp|root|Users|mnt)/[^"]*)"', path.read_text())]
    assert not found, "\n".join(found)


def test_portable_paths_make_records_machine_free(tmp_path, monkeypatch):
    from keycld_gym.files import portable_paths

    monkeypatch.chdir(tmp_path)
    record = {"model": str(PACKAGE / "weights" / "acrobot"), "runs": [str(tmp_path / "runs" / "a")], "n": 3,
              "command": "keycld-gym train --out /x/y", "elsewhere": "/nonexistent-root/z"}
    assert portable_paths(record) == {"model": "keycld_gym/weights/acrobot", "runs": ["runs/a"], "n": 3,
                                      "command": "keycld-gym train --out /x/y", "elsewhere": "/nonexistent-root/z"}
