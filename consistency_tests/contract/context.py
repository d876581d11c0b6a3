"""What a contract check gets: the backend under test, counted and guarded, plus helpers.

A :class:`CheckContext` opens the backend by URL behind a :class:`GuardedBackend` proxy that
counts calls per method and turns any exception other than a :mod:`duro.errors` one (or
:class:`~duro.backends.LeaseHeld`) into a :class:`RawErrorEscaped` violation. Checks make their
objects with :meth:`CheckContext.ref`, in namespaces private to the run, so a run can share a
store with other data; :meth:`CheckContext.cleanup` deletes every object the run touched.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from duro.backends import Backend, BackendURL, Lease, LeaseHeld, ObjectRef, backend_class
from duro.backends import open_backend as _open_backend
from duro.backends._proxy import _METHODS, ProxyBackend
from duro.errors import DuroError
from duro.ids import id_from_name
from duro.keys import MAX_KEY_BYTES

__all__ = [
    "CHECKS",
    "DEPTHS",
    "T0",
    "TRICKY_KEYS",
    "CheckContext",
    "ContractCheck",
    "ContractViolation",
    "GuardedBackend",
    "RawErrorEscaped",
    "assert_lease",
    "close_to",
    "contract_check",
    "expect_raises",
    "model_scan",
]

T0: Final = 1_000_000.0
"""The wall time (epoch seconds, January 1970) lease and alarm checks start at: far before any
real alarm, so ``due_alarms`` on a shared store only returns the run's own alarms."""

DEPTHS: Final = {"quick": 0.4, "default": 1.0, "thorough": 4.0}
"""Scale factors for loop counts (rounds, keys) per ``--quick`` / default / ``--thorough``."""

TRICKY_KEYS: Final[tuple[bytes, ...]] = tuple(
    k.encode()
    for k in (
        "", "a", "a\x00", "a\x00b", "a\x01", "ab", "b", "\x7f", "\u0080", "é", "éa", "\u07ff",
        "\u0800", "\uffff", "😀", "\U0010ffff", "x" * 511, "x" * 512, "x" * 600 + "a",
        "x" * 600 + "b", "x" * 1000, "x" * 2046 + "é", "x" * 2047 + "a", "x" * 2047 + "b",
        "x" * MAX_KEY_BYTES,
    )
)
"""Keys whose UTF-8 byte order trips naive stores: NUL bytes, prefixes of each other, code points
whose UTF-16 order differs from UTF-8 order, and long keys (beyond LMDB's 511 bytes, up to the
2,048-byte limit) that share long prefixes."""


class ContractViolation(AssertionError):
    """A check found the backend breaking the storage contract."""


class RawErrorEscaped(ContractViolation):
    """A backend method raised something outside the duro exception tree."""

    def __init__(self, method: str, exc: BaseException) -> None:
        super().__init__(f"{method}() let a raw {type(exc).__name__} escape: {exc!s:.300} "
                         "(backends must raise duro.errors exceptions only)")
        self.method = method
        self.exc = exc


class GuardedBackend(ProxyBackend):
    """Counts calls per method and refuses non-duro exceptions from the backend."""

    def __init__(self, inner: Backend, calls: Counter[str], lock: threading.Lock) -> None:
        super().__init__(inner)
        self.calls = calls
        self._lock = lock

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name not in _METHODS:
            return attr
        calls = super().__getattribute__("calls")
        lock = super().__getattribute__("_lock")

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with lock:
                calls[name] += 1
            try:
                return attr(*args, **kwargs)
            except (DuroError, LeaseHeld):
                raise
            except Exception as exc:
                raise RawErrorEscaped(name, exc) from exc

        return guarded


class CheckContext:
    """One contract run's view of the backend at *url* (see the module docstring)."""

    def __init__(self, url: str, *, depth: str = "default", run_id: str | None = None) -> None:
        self.url = url
        self.depth = depth
        self.scale = DEPTHS[depth]
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.cls = backend_class(BackendURL.parse(url).scheme)
        self.refs: set[ObjectRef] = set()
        self.seq = 0
        """Which check of the run is going on: part of every namespace, so checks never meet."""
        self.backend: Backend = self.open()

    # -- the backend ----------------------------------------------------------------------

    def open(self) -> Backend:
        """A new guarded backend on the URL (the caller closes it)."""
        try:
            inner = _open_backend(self.url)
        except (DuroError, LeaseHeld):
            raise
        except Exception as exc:
            raise RawErrorEscaped("from_url", exc) from exc
        return GuardedBackend(inner, self.calls, self._lock)

    def reopen(self) -> Backend:
        """Close the backend and open it again (same URL); returns the new one."""
        self.close_backend()
        self.calls["close"] += 1
        self.backend = self.open()
        return self.backend

    def close_backend(self) -> None:
        """Close the current backend, turning raw errors into violations."""
        try:
            self.backend.close()
        except (DuroError, LeaseHeld):
            raise
        except Exception as exc:
            raise RawErrorEscaped("close", exc) from exc

    @property
    def persistent(self) -> bool:
        """The backend says data survives close and reopen."""
        return bool(self.cls.persistent)

    @property
    def multi_process(self) -> bool:
        """The backend says several OS processes may share it."""
        return bool(self.cls.multi_process)

    def n(self, base: int, minimum: int = 1) -> int:
        """*base* scaled by the run's depth (at least *minimum*)."""
        return max(minimum, int(base * self.scale))

    # -- objects --------------------------------------------------------------------------

    def namespace(self, name: str) -> str:
        """The current check's private namespace called *name*."""
        return f"DuroCheck{self.run_id}x{self.seq:03d}{name}"

    def ref(self, name: str = "obj", namespace: str = "C", *, object_id: str | None = None
            ) -> ObjectRef:
        """A reference with a real 64-hex ID in the run's namespace *namespace*."""
        ns = self.namespace(namespace)
        ref = ObjectRef(ns, object_id or id_from_name(ns, name).hex)
        self.refs.add(ref)
        return ref

    def own_namespaces(self) -> list[str]:
        """``namespaces()`` restricted to the run's namespaces."""
        prefix = self.namespace("")
        return [n for n in self.backend.namespaces() if n.startswith(prefix)]

    def acquire(self, ref: ObjectRef, owner: str = "A", *, now: float = T0,
                until: float = T0 + 60, name: str | None = None,
                address: str | None = None) -> Lease:
        """``backend.acquire`` with the checks' default times."""
        return self.backend.acquire(ref, owner=owner, address=address, now=now, until=until,
                                    name=name)

    def scan_all(self, ref: ObjectRef) -> list[tuple[bytes, bytes]]:
        """Every row of *ref*."""
        return self.backend.scan(ref, None, None)

    def next_check(self) -> None:
        """Start the next check: fresh namespaces."""
        self.seq += 1

    def cleanup(self) -> list[str]:
        """Delete every object the check touched; returns what could not be deleted, and why."""
        failed: list[str] = []
        for ref in sorted(self.refs, key=lambda r: (r.namespace, r.id)):
            try:
                if self.backend.read_lease(ref) is None:
                    continue
                lease = self.backend.acquire(ref, owner="duro-check-cleanup", address=None,
                                             now=1e12, until=1e12 + 60)
                self.backend.delete_object(ref, lease.epoch)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, which prints it
                failed.append(f"{ref.namespace}/{ref.id[:12]}: {type(exc).__name__}: {exc}")
        self.refs.clear()
        return failed


def model_scan(model: dict[bytes, bytes], lo: bytes | None, hi: bytes | None, reverse: bool,
               limit: int | None) -> list[tuple[bytes, bytes]]:
    """What ``scan(lo, hi, reverse=, limit=)`` returns on a store holding *model*."""
    rows = sorted((k, v) for k, v in model.items()
                  if (lo is None or k >= lo) and (hi is None or k < hi))
    if reverse:
        rows.reverse()
    return rows if limit is None else rows[:limit]


def close_to(a: float | None, b: float | None) -> bool:
    """Times equal to a microsecond (``None`` only equals ``None``)."""
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6


def assert_lease(lease: Lease | None, epoch: int, owner: str | None, until: float,
                 address: str | None = None) -> None:
    """*lease* has this epoch, owner and (if owned) address and until."""
    assert lease is not None, "no lease recorded"
    assert lease.epoch == epoch, f"lease epoch {lease.epoch}, expected {epoch}: {lease}"
    assert lease.owner == owner, f"lease owner {lease.owner!r}, expected {owner!r}: {lease}"
    if owner is not None:
        assert lease.address == address, f"lease address {lease.address!r}: {lease}"
        assert close_to(lease.until, until), f"lease until {lease.until}, expected {until}"


@contextmanager
def expect_raises(kind: type[BaseException] | tuple[type[BaseException], ...],
                  what: str) -> Iterator[None]:
    """The block must raise *kind*; otherwise a :class:`ContractViolation` naming *what*."""
    try:
        yield
    except kind:
        return
    raise ContractViolation(f"{what}: expected {_names(kind)}, but the call succeeded")


def _names(kind: type[BaseException] | tuple[type[BaseException], ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


CheckFn = Callable[[CheckContext], None]
"""A contract check: raises ``AssertionError`` (or :class:`ContractViolation`) on a violation."""


@dataclass(frozen=True)
class ContractCheck:
    """One registered check: its contract *area*, *name*, function and capability needs."""

    area: str
    name: str
    fn: CheckFn
    needs: str | None = None
    """``"persistent"`` or ``"multi_process"``: skipped on backends without that flag."""

    @property
    def doc(self) -> str:
        """The first line of the check's docstring."""
        return (self.fn.__doc__ or self.name).strip().splitlines()[0]

    def skip_reason(self, ctx: CheckContext) -> str | None:
        """Why the check does not apply to *ctx*'s backend, or ``None``."""
        if self.needs == "persistent" and not ctx.persistent:
            return "backend is not persistent (persistent=False)"
        if self.needs == "multi_process" and not ctx.multi_process:
            return "backend is not shared between processes (multi_process=False)"
        return None


CHECKS: list[ContractCheck] = []
"""Every check, in run order (filled by the ``checks_*`` modules as they are imported)."""


def contract_check(area: str, needs: str | None = None) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated function as a check of contract *area*."""

    def register(fn: CheckFn) -> CheckFn:
        name = fn.__name__.removeprefix("check_")
        if any(c.name == name for c in CHECKS):
            raise ValueError(f"duplicate contract check name {name!r}")
        CHECKS.append(ContractCheck(area, name, fn, needs))
        return fn

    return register
