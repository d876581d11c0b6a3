"""Authentication of the cluster channel: the cluster key, request signatures, replay guard.

Processes that open the same backend form one cluster. The key comes from
``DURO_CLUSTER_SECRET`` / ``cluster_secret=`` if set, else from the backend itself
(:meth:`duro.backends.Backend.cluster_key`: random, created once, shared by every process that
can open the storage). Every request on the cluster listener carries one header,
``x-duro-auth: <ts> <nonce> <signature>`` (one header, not three: each header costs a parse
callback on the receiver and a multidict insert on the sender, on every forwarded call):

- ``<ts>``: the sender's wall time (seconds);
- ``<nonce>``: ``<sender>.<counter>``, a random id of the signer and a counter that never
  repeats within it;
- ``<signature>``: hex HMAC-SHA256 over method, path (with query), timestamp, nonce and the
  SHA-256 of the body.

The receiver refuses a request whose timestamp is more than :data:`REPLAY_WINDOW` seconds
away from its own clock, whose signature does not match, or whose nonce it has already
accepted. Nonces are remembered per sender: its highest counter and the counters seen in the
last :data:`REORDER` (requests on parallel connections arrive out of order); a sender idle for
longer than the window is forgotten, since its old requests are then stale anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import time
from collections.abc import Mapping
from typing import Final

from duro.errors import ConfigError

__all__ = ["AUTH_HEADER", "MIN_SECRET_CHARS", "REPLAY_WINDOW", "ReplayGuard", "Signer",
           "check_secret", "derive_key"]

MIN_SECRET_CHARS: Final = 16
REPLAY_WINDOW: Final = 30.0
"""Largest accepted difference (seconds) between a request's timestamp and the receiver's clock."""
REORDER: Final = 65536
"""How far below a sender's highest counter a not yet seen counter is still accepted."""
AUTH_HEADER: Final = "x-duro-auth"
"""The request header that carries ``<ts> <nonce> <signature>``."""
_EMPTY_SHA: Final = hashlib.sha256(b"").hexdigest()


def check_secret(secret: str | None) -> None:
    """Refuse a configured secret that is empty or shorter than :data:`MIN_SECRET_CHARS`."""
    if secret is None:
        return
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"the cluster secret (DURO_CLUSTER_SECRET / cluster_secret=) must be a string of at "
            f"least {MIN_SECRET_CHARS} characters; leave it unset to use the key the backend "
            "keeps (python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)")


def derive_key(secret: bytes) -> bytes:
    """The HMAC key for a configured secret or a stored cluster key."""
    return hmac.new(b"duro cluster key v1", secret, hashlib.sha256).digest()


def _message(method: str, path: str, ts: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA
    return f"{method}\n{path}\n{ts}\n{nonce}\n{digest}".encode()


def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC-SHA256 state with *key* absorbed; ``.copy()`` it per message (no key setup)."""
    return hmac.new(key, digestmod=hashlib.sha256)


class Signer:
    """Signs this process's requests to its peers."""

    def __init__(self, key: bytes) -> None:
        self._mac = _keyed(key)
        # Nonce: a random id of this signer and a counter (cheaper than random bytes per call,
        # never repeated within the signer, and the receiver tracks counters per sender id).
        self._prefix = f"{secrets.token_hex(8)}."
        self._counter = itertools.count()

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        """The authentication headers for one request (each call uses a new nonce)."""
        ts = f"{time.time():.3f}"
        nonce = f"{self._prefix}{next(self._counter)}"
        mac = self._mac.copy()
        mac.update(_message(method, path, ts, nonce, body))
        return {AUTH_HEADER: f"{ts} {nonce} {mac.hexdigest()}"}


class _Sender:
    __slots__ = ("highest", "last", "seen")

    def __init__(self) -> None:
        self.highest = -1
        self.seen: set[int] = set()
        self.last = 0.0


class ReplayGuard:
    """Checks signatures and refuses replays; one per listening process."""

    def __init__(self, key: bytes, window: float = REPLAY_WINDOW) -> None:
        self._mac = _keyed(key)
        self._window = window
        self._senders: dict[str, _Sender] = {}
        self._next_sweep = 0.0

    def precheck(self, headers: Mapping[str, str]) -> str | None:
        """Why a request must be refused on its headers alone (before its body is read).

        *headers* maps lowercase names to values (a plain ``dict`` is the cheapest).
        """
        parsed = self._parse(headers)
        return parsed if isinstance(parsed, str) else None

    def _parse(self, headers: Mapping[str, str]) -> str | tuple[str, str, str]:
        """``(ts, nonce, signature)`` from a fresh request's header, or why it is refused."""
        value = headers.get(AUTH_HEADER)
        if not value:
            return "no cluster signature"
        parts = value.split(" ")
        if len(parts) != 3 or not all(parts):
            return "malformed cluster signature header"
        ts, nonce, sig = parts
        try:
            sent = float(ts)
        except ValueError:
            return "malformed timestamp"
        if not abs(time.time() - sent) <= self._window:  # also refuses nan
            return f"timestamp outside the {self._window:g} s replay window (clock skew?)"
        return ts, nonce, sig

    def verify(self, method: str, path: str, headers: Mapping[str, str],
               body: bytes = b"") -> str | None:
        """Why the request must be refused, or ``None`` (then its nonce is spent)."""
        parsed = self._parse(headers)
        if isinstance(parsed, str):
            return parsed
        ts, nonce, sig = parsed
        if len(sig) != 64 or not sig.isascii():
            return "bad signature (a different cluster key?)"
        mac = self._mac.copy()
        mac.update(_message(method, path, ts, nonce, body))
        if not hmac.compare_digest(mac.hexdigest(), sig):
            return "bad signature (a different cluster key?)"
        sender_id, _, counter_s = nonce.partition(".")
        if not counter_s.isdigit():
            return "malformed nonce"
        return self._spend(sender_id, int(counter_s))

    def _spend(self, sender_id: str, counter: int) -> str | None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self._window
            stale = [k for k, s in self._senders.items() if now - s.last > 2 * self._window]
            for k in stale:
                del self._senders[k]
        sender = self._senders.get(sender_id)
        if sender is None:
            sender = self._senders[sender_id] = _Sender()
        if counter <= sender.highest - REORDER or counter in sender.seen:
            return "replayed request (nonce already used)"
        sender.seen.add(counter)
        sender.last = now
        if counter > sender.highest:
            sender.highest = counter
            if len(sender.seen) > 2 * REORDER:
                floor = counter - REORDER
                sender.seen = {c for c in sender.seen if c > floor}
        return None
