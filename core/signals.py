"""Control flow between the runtime's layers: where a call goes next, or why it did not start.

None of these reach users: the runtime catches each one and retries, forwards or maps it to a
:mod:`duro.errors` error. A leaf module, so every layer can raise and catch them.
"""

from __future__ import annotations

from duro.errors import ObjectReset

__all__ = ["AppClosing", "Chain", "Elsewhere", "Gone", "OwnerGone", "OwnerUnreachable"]

Chain = tuple[tuple[str, str], ...]
"""The objects of a call chain, outermost first: ``(namespace, hex id)`` pairs (loop guard)."""


class AppClosing(ObjectReset):
    """The App is not open: a call was refused before it started."""

    not_run = True


class Gone(Exception):
    """The instance stopped taking events before this one started: dispatch it again."""


class Elsewhere(Exception):
    """Another live process owns the object; forward the call there."""

    def __init__(self, address: str, until: float) -> None:
        super().__init__(address)
        self.address = address
        self.until = until


class OwnerGone(Exception):
    """The owner at *address* refuses connections; its lease lasts until *until*."""

    def __init__(self, address: str, until: float) -> None:
        super().__init__(address)
        self.address = address
        self.until = until


class OwnerUnreachable(Exception):
    """Nothing answers at the owner's address, or the owner is handing its objects over."""

    def __init__(self, moving: bool) -> None:
        super().__init__("moving" if moving else "unreachable")
        self.moving = moving
