"""Where the backend URL comes from.

Resolution order: the explicit argument, then the ``DURO_BACKEND`` environment variable, then
the nearest configuration file found in the current directory or one of its parents (as ruff
looks for its own): ``duro.toml`` (top-level ``backend``) or ``pyproject.toml`` with a
``[tool.duro]`` table (a ``pyproject.toml`` without one is passed over), then the embedded
default ``sqlite:///.duro/duro.db``.

A relative file path in a configuration file is relative to that file's folder, and the
default is relative to the folder of the configuration file found (else the current
directory), so running from a subfolder of a project reaches the same store. Unknown keys in a
configuration file are a :class:`~duro.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from duro.errors import ConfigError

__all__ = ["DEFAULT_BACKEND", "KNOWN_KEYS", "ResolvedBackend", "describe_backend",
           "find_config", "resolve_backend", "resolve_backend_url"]

DEFAULT_BACKEND: Final = "sqlite:///.duro/duro.db"
KNOWN_KEYS: Final = frozenset({"backend"})
"""The keys a ``duro.toml`` or ``[tool.duro]`` table may hold."""

_RELATIVE_FILE_URL: Final = re.compile(r"^((?:sqlite|lmdb)(?:\+[\w-]+)?:///)(?!/)([^?]*)(.*)$")


@dataclass(frozen=True)
class ResolvedBackend:
    """A backend URL and where it came from."""

    url: str
    source: str
    """``"argument"``, ``"DURO_BACKEND"``, the absolute path of the file (with ``[tool.duro]``
    for a ``pyproject.toml``), or ``"default"``."""

    def __str__(self) -> str:
        return f"{self.url} (from {self.source})"


def anchor(url: str, folder: Path) -> str:
    """*url* with a relative SQLite/LMDB path made absolute against *folder*."""
    m = _RELATIVE_FILE_URL.match(url)
    if m is None or not m.group(2):
        return url
    return f"{m.group(1)}{(folder / m.group(2)).absolute()}{m.group(3)}"


def _read_table(path: Path, table: tuple[str, ...]) -> dict[str, object] | None:
    """The duro table of *path* (``None`` if the file has none); unknown keys are errors."""
    try:
        data: object = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", orig=exc) from exc
    for name in table:
        data = data.get(name) if isinstance(data, dict) else None
    if not isinstance(data, dict):
        return None
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        where = f"[{'.'.join(table)}] in {path}" if table else str(path)
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known keys: "
                          f"{', '.join(sorted(KNOWN_KEYS))}")
    return data


def find_config(cwd: Path | None = None) -> tuple[Path, dict[str, object]] | None:
    """The nearest ``duro.toml`` or ``pyproject.toml`` with ``[tool.duro]``, from *cwd* up,
    with its duro table; ``duro.toml`` wins over ``pyproject.toml`` in the same folder."""
    here = (cwd or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        for name, table in (("duro.toml", ()), ("pyproject.toml", ("tool", "duro"))):
            path = folder / name
            if path.is_file():
                data = _read_table(path, table)
                if data is not None:
                    return path, data
    return None


def resolve_backend(explicit: str | None = None, *, cwd: Path | None = None) -> ResolvedBackend:
    """The backend URL to use and where it came from, in the documented order."""
    if explicit:
        return ResolvedBackend(explicit, "argument")
    env = os.environ.get("DURO_BACKEND")
    if env:
        return ResolvedBackend(env, "DURO_BACKEND")
    found = find_config(cwd)
    home = cwd or Path.cwd()
    if found is not None:
        path, data = found
        home = path.parent
        value = data.get("backend")
        source = f"{path} [tool.duro]" if path.name == "pyproject.toml" else str(path)
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError(f"{path}: 'backend' must be a URL string, not "
                                  f"{type(value).__name__}")
            if value:
                return ResolvedBackend(anchor(value, path.parent), source)
    return ResolvedBackend(anchor(DEFAULT_BACKEND, home), "default")


def resolve_backend_url(explicit: str | None = None, *, cwd: Path | None = None) -> str:
    """The backend URL to use, following the documented resolution order."""
    return resolve_backend(explicit, cwd=cwd).url


def describe_backend(explicit: str | None = None, *, cwd: Path | None = None) -> str:
    """``URL (from SOURCE)`` with file paths made absolute: what a banner or a command shows."""
    resolved = resolve_backend(explicit, cwd=cwd)
    return str(ResolvedBackend(anchor(resolved.url, cwd or Path.cwd()), resolved.source))
