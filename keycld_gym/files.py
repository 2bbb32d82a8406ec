"""Files that are either whole or absent: atomic writes, JSON records, checksums, provenance.

Every file the package writes (data shards, manifests, checkpoints, agent files, training
state, benchmark records) goes through `atomic_write_bytes`: an interrupted run leaves the
previous file or none, never half of one, so a rerun can trust what it finds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterable


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through `write(fileobj)` so that it either fully exists or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | Path, data: dict) -> None:
    """Atomically write a JSON file."""
    atomic_write_bytes(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def json_roundtrip(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), for comparing with stored records."""
    return json.loads(json.dumps(value))


# the folder that holds the package: bundled files are recorded relative to it ("keycld_gym/weights/...")
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def portable_path(path: str | Path) -> str:
    """`path` as a record may keep it: relative to the repository for the package's own files, to the
    working directory for a user's, absolute only outside both (never for a file that ships)."""
    resolved = Path(path).resolve()
    for root in (_PACKAGE_PARENT, Path.cwd().resolve()):
        if resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix() or "."
    return str(path)


def portable_paths(record: Any) -> Any:
    """A JSON record with every absolute path in it made portable (`portable_path`); other values unchanged."""
    if isinstance(record, dict):
        return {k: portable_paths(v) for k, v in record.items()}
    if isinstance(record, list):
        return [portable_paths(v) for v in record]
    if isinstance(record, str) and record.startswith("/") and "\n" not in record and " " not in record:
        return portable_path(record)
    return record


def default_command() -> str:
    """The command line that started this process, quoted for a shell (recorded beside data, models and agents)."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def differing_keys(saved: dict | None, current: dict, keys: Iterable[str] | None = None) -> list[str]:
    """Keys (`keys`, or all of `current`'s) whose values differ between a stored record and `current`, compared as JSON.

    The one check behind every "resume with the same settings" and "made for this spec" test.
    """
    saved, current = saved or {}, json_roundtrip(current)
    return sorted(k for k in (current if keys is None else keys) if saved.get(k) != current.get(k))


def read_record(path: str | Path, kind: str, fmt: str, version: int, error: type[Exception], remedy: str) -> dict:
    """A JSON record of one of the package's file formats (manifest, model config, agent), format and version checked.

    Raises `error` naming the file and `remedy` (what to do) for a file that is not valid
    JSON, of another format, or of another format version.
    """
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path} is corrupt, not valid JSON ({err}): {remedy}") from err
    found = record.get("format") if isinstance(record, dict) else None
    if found != fmt:
        raise error(f"{path} is not a keycld-gym {kind} (format {found!r}): {remedy}")
    if record.get("format_version") != version:
        raise error(f"{path} has {kind} format version {record.get('format_version')!r}; this keycld-gym reads "
                    f"version {version}: {remedy}")
    return record
