"""MkDocs hooks (`hooks:` in mkdocs.yml): the documentation pages made at build time.

- `cli.md`: the `keycld-gym` command reference, every subcommand's help as
  `keycld_gym.cli.build_parser()` renders it, so the page cannot drift from the parser.
- `benchmarks.md`: the repository's `BENCHMARKS.md` (the current numbers), as it stands.

Neither page is kept in `docs/`: both are generated on every `mkdocs build` or `mkdocs serve`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
WIDTH = "100"  # argparse wraps help text to $COLUMNS


def cli_reference() -> str:
    """Markdown of the top-level help and each subcommand's help, in the parser's order."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        os.environ.setdefault("MUJOCO_GL", "egl")
        from keycld_gym.cli import build_parser  # imported here: only the build needs the package

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        summaries = {a.dest: a.help for a in sub._choices_actions}
        parts = [
            "# Command line reference",
            "",
            "Generated at build time from `keycld_gym.cli.build_parser()` (`scripts/mkdocs_hooks.py`): "
            "what `keycld-gym COMMAND --help` prints.",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, command in sub.choices.items():
            parts += ["", f"## {name}", "", f"{summaries.get(name) or ''}", "", "```text",
                      command.format_help().rstrip(), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def benchmarks_page() -> str:
    """BENCHMARKS.md as a documentation page: its links into `docs/` made relative to the site's root."""
    return (ROOT / "BENCHMARKS.md").read_text().replace("](docs/", "](")


def on_files(files: Files, config) -> Files:
    """Add the generated pages to the site's files (before the navigation is built)."""
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page()))
    return files
