"""The URL registry: which :class:`~duro.backends.base.Backend` serves which scheme.

Built-ins resolve lazily from an in-code table (the driver is imported only when its scheme is
used); third parties register with :func:`register_backend` or the ``duro.backends`` entry
point group. A missing driver raises :class:`~duro.errors.BackendNotInstalled` with the pip line.
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Final

from duro.backends.base import Backend, BackendURL
from duro.errors import BackendNotInstalled, ConfigError

__all__ = ["backend_class", "open_backend", "register_backend", "registry"]

_BUILTIN: Final = {
    "lmdb": ("duro.backends._lmdb:LMDBBackend", "lmdb"),
    "memory": ("duro.backends._memory:MemoryBackend", None),
    "postgres": ("duro.backends._sql:SQLBackend", "postgres"),
    "postgresql": ("duro.backends._sql:SQLBackend", "postgres"),
    "s3": ("duro.backends._s3:S3Backend", "s3"),
    "sqlite": ("duro.backends._sql:SQLBackend", None),
}
assert list(_BUILTIN) == sorted(_BUILTIN)

_registry: dict[str, str | type[Backend]] = {k: v[0] for k, v in _BUILTIN.items()}
registry = MappingProxyType(_registry)
"""Read-only view: scheme -> backend class or ``"module:Class"`` path."""


def register_backend(scheme: str, target: str | type[Backend], *, clobber: bool = False) -> None:
    """Register *target* (a class or ``"module:Class"``) for URLs starting ``scheme://``."""
    if scheme in _registry and not clobber:
        raise ConfigError(f"backend scheme {scheme!r} is already registered (pass clobber=True)")
    _registry[scheme] = target


def _load_entry_points(scheme: str) -> None:
    for ep in entry_points(group="duro.backends"):
        if ep.name == scheme and scheme not in _registry:
            _registry[scheme] = ep.value


def backend_class(scheme: str) -> type[Backend]:
    """The backend class for *scheme*, importing its driver on first use."""
    base = scheme.split("+", 1)[0]
    if base not in _registry:
        _load_entry_points(base)
    target = _registry.get(base)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_registry))
        raise ConfigError(f"unknown backend scheme {scheme!r}; known schemes: {known}")
    if isinstance(target, type):
        return target
    module_name, _, attr = target.partition(":")
    plugin = f"backend plugin {base!r} ({target})"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _BUILTIN.get(base, (None, None))[1]
        hint = f"pip install 'duro[{extra}]'" if extra else f"install the package for {module_name}"
        raise BackendNotInstalled(
            f"the {base}:// backend needs a driver that is not installed ({exc.name}): {hint}",
            orig=exc,
        ) from exc
    except Exception as exc:  # a plugin's own bug: name the plugin, keep the cause
        raise ConfigError(f"{plugin} failed to import: {type(exc).__name__}: {exc}",
                          orig=exc) from exc
    cls = getattr(module, attr, None) if attr else None
    if cls is None:
        raise ConfigError(f"{plugin}: module {module_name} has no class {attr or '(none named)'}")
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"{plugin}: {target} is not a duro Backend subclass")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConfigError(f"{plugin}: {cls.__name__} does not implement the abstract "
                          f"method(s) {missing} of duro.backends.Backend")
    return cls


def open_backend(url: str) -> Backend:
    """Parse *url* and open the backend it names."""
    parsed = BackendURL.parse(url)
    return backend_class(parsed.scheme).from_url(parsed)
