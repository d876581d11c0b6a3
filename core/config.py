"""Where the backend URL comes from.

Resolution order: the explicit argument, then the ``DURO_BACKEND`` environment variable, then
``backend`` in ``./duro.toml``, then ``[tool.duro] backend`` in ``./pyproject.toml``, then the
embedded default ``sqlite:///.duro/duro.db``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Final

from duro.errors import ConfigError

__all__ = ["DEFAULT_BACKEND", "resolve_backend_url"]

DEFAULT_BACKEND: Final = "sqlite:///.duro/duro.db"


def _from_toml(path: Path, *table: str) -> str | None:
    if not path.is_file():
        return None
    try:
        data: object = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", orig=exc) from exc
    for name in table:
        data = data.get(name) if isinstance(data, dict) else None
    value = data.get("backend") if isinstance(data, dict) else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{path}: 'backend' must be a URL string, not {type(value).__name__}")
    return value


def resolve_backend_url(explicit: str | None = None, *, cwd: Path | None = None) -> str:
    """Return the backend URL to use, following the documented resolution order."""
    if explicit:
        return explicit
    env = os.environ.get("DURO_BACKEND")
    if env:
        return env
    here = cwd or Path.cwd()
    return (
        _from_toml(here / "duro.toml")
        or _from_toml(here / "pyproject.toml", "tool", "duro")
        or DEFAULT_BACKEND
    )
