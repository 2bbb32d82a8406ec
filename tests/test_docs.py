"""The documentation site builds without a warning (`mkdocs build --strict`), its generated pages included."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # the pages made at build time: the command reference from the parser, the benchmarks from BENCHMARKS.md
    cli = (site / "cli" / "index.html").read_text()
    assert "keycld-gym pipeline" in cli and "--training-frames" in cli
    assert "Current numbers" in (site / "benchmarks" / "index.html").read_text()
    assert "make_real_env" in (site / "api" / "index.html").read_text()
