"""Plugins that cannot be used: ``duro check`` must say so (exit 2) and name the plugin."""

from __future__ import annotations

from duro.backends import Backend


class MissingMethods(Backend):  # type: ignore[misc]
    """A backend class that forgot most of the abstract methods."""

    scheme = "bad-abstract"
