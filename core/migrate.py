"""``duro migrate SRC DST``: copy every object between two backends, fencing live writers.

For each object of the source (namespace by namespace, by ID):

1. take the object's lease **on the source** as ``duro-migrate:<run>``. A live owner's lease is
   never broken: the object is put back in the queue and retried once that lease has ended
   (plus the drift margin), for at most ``wait`` seconds overall. Taking the lease bumps the
   epoch, so an owner that lost it is fenced: its next write fails, nothing is lost silently.
2. read its rows and alarm (the lease holds writers off, so this is the object's final state)
   and write them to the destination as one atomic batch under the destination's lease
   (``delete_all`` first, so the copy is exact), then release the destination lease.
3. **seal** the source object: keep its lease, extended far into the future (default), so no
   writer can land anything on the source after it was copied -- point the apps at the
   destination. With ``seal=False`` the source lease is released instead (a plain copy: writes
   made to the source afterwards are not carried over). :func:`unseal` releases seals.

At the end every copied object is read back from the destination and its SHA-256 (rows +
alarm) and key count compared with the source's; a mismatch fails the run.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from duro.backends import Backend, Lease, LeaseHeld, ObjectInfo, ObjectRef
from duro.dump import DumpObject, read_object, write_object
from duro.errors import DuroError, Fenced
from duro.ops import MIGRATE_OWNER_PREFIX, acquire_waiting, iter_objects, object_digest

__all__ = ["MigrateError", "MigrateResult", "migrate", "unseal"]

SEAL_SECONDS: Final = 100 * 365 * 86400.0
"""How far into the future a sealed source object's lease lasts."""


class MigrateError(DuroError):
    """A migration could not move or verify every object."""


@dataclass
class MigrateResult:
    """What :func:`migrate` did."""

    run: str
    objects: int = 0
    keys: int = 0
    bytes: int = 0
    namespaces: dict[str, int] = field(default_factory=dict)
    waited: int = 0
    """Objects that had a live owner on the source and were retried after its lease ended."""
    verified: int = 0
    sealed: bool = True
    seconds: float = 0.0


@dataclass
class _Pending:
    info: ObjectInfo
    not_before: float = 0.0


def _verify(dst: Backend, ref: ObjectRef, digest: str, keys: int) -> str | None:
    obj = read_object(dst, ref.namespace, ref.id, None, None)
    if len(obj.rows) != keys:
        return (f"{ref.namespace}/{ref.id[:12]}…: {len(obj.rows)} keys on the destination, "
                f"{keys} expected")
    if obj.digest() != digest:
        return f"{ref.namespace}/{ref.id[:12]}…: checksum differs on the destination"
    return None


def migrate(
    src: Backend,
    dst: Backend,
    *,
    namespaces: list[str] | None = None,
    seal: bool = True,
    wait: float = 60.0,
    ttl: float = 60.0,
    margin: float = 1.0,
    on_total: Callable[[int], None] | None = None,
    on_object: Callable[[DumpObject], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> MigrateResult:
    """Copy every object of *src* (or of *namespaces*) to *dst*; see the module docstring.

    *ttl* is the source lease taken while an object moves (renewed as the seal or released);
    *margin* the drift margin a lease is given past its recorded end. Raises
    :class:`MigrateError` if objects stay owned by live processes for longer than *wait*
    seconds, or if verification fails; objects moved before that stay moved (and sealed).
    """
    start = time.monotonic()
    run = uuid.uuid4().hex[:12]
    owner = MIGRATE_OWNER_PREFIX + run
    result = MigrateResult(run, sealed=seal)
    chosen = namespaces if namespaces is not None else src.namespaces()
    queue: deque[_Pending] = deque(
        _Pending(info) for ns in chosen for info in iter_objects(src, ns))
    if on_total is not None:
        on_total(len(queue))
    moved: list[tuple[ObjectRef, str, int]] = []
    deadline = clock() + wait
    busy: dict[ObjectRef, Lease] = {}
    while queue:
        item = queue.popleft()
        ref = item.info.ref
        now = clock()
        if item.not_before > now:
            if all(p.not_before > now for p in queue):
                sleep(min(item.not_before - now, 1.0))
            queue.append(item)
            continue
        try:
            lease = acquire_waiting(src, ref, owner=owner, name=item.info.name, ttl=ttl,
                                    wait=0.0, clock=clock, sleep=sleep, margin=margin,
                                    adopt_prefix=MIGRATE_OWNER_PREFIX)
        except LeaseHeld as held:
            if ref not in busy:
                result.waited += 1
            busy[ref] = held.lease
            if clock() >= deadline:
                queue.append(item)
                break
            item.not_before = min(held.lease.until + margin, deadline)
            queue.append(item)
            continue
        busy.pop(ref, None)
        try:
            obj = read_object(src, ref.namespace, ref.id, item.info.name, item.info.last_active)
            write_object(dst, obj, owner=owner, ttl=ttl, wait=max(deadline - clock(), 0.0),
                         clock=clock, sleep=sleep)
            if seal:
                src.renew(ref, lease.epoch, clock() + SEAL_SECONDS)
            else:
                src.release(ref, lease.epoch)
        except Fenced as exc:  # someone took the source object from us: move it again
            queue.append(_Pending(item.info))
            if clock() >= deadline:
                raise MigrateError(f"{ref.namespace}/{ref.id[:12]}…: lost its source lease "
                                   f"while moving it ({exc}); re-run migrate") from exc
            continue
        except BaseException:
            if not seal:
                src.release(ref, lease.epoch)
            raise
        moved.append((ref, obj.digest(), len(obj.rows)))
        result.objects += 1
        result.keys += len(obj.rows)
        result.bytes += sum(len(k) + len(v) for k, v in obj.rows)
        result.namespaces[ref.namespace] = result.namespaces.get(ref.namespace, 0) + 1
        if on_object is not None:
            on_object(obj)
    if queue:
        held_list = ", ".join(
            f"{p.info.ref.namespace}/{p.info.ref.id[:12]}… (owner {busy[p.info.ref].owner} at "
            f"{busy[p.info.ref].address})" if p.info.ref in busy
            else f"{p.info.ref.namespace}/{p.info.ref.id[:12]}…"
            for p in list(queue)[:10])
        raise MigrateError(
            f"{len(queue)} object(s) stayed owned by live processes for {wait:.0f} s and were "
            f"not moved: {held_list}. Stop those apps (or let the objects go idle) and re-run "
            f"migrate; the {result.objects} object(s) moved so far stay "
            f"{'sealed on the source' if seal else 'copied'}.")
    problems = [p for ref, digest, keys in moved if (p := _verify(dst, ref, digest, keys))]
    result.verified = len(moved) - len(problems)
    if problems:
        raise MigrateError(f"verification failed for {len(problems)} object(s): "
                           + "; ".join(problems[:10]))
    per_ns_dst = {ns: sum(1 for _ in iter_objects(dst, ns)) for ns in result.namespaces}
    short = {ns: (n, per_ns_dst[ns]) for ns, n in result.namespaces.items() if per_ns_dst[ns] < n}
    if short:
        raise MigrateError(f"the destination lists fewer objects than were moved: {short}")
    result.seconds = time.monotonic() - start
    return result


def unseal(backend: Backend, *, namespaces: list[str] | None = None) -> int:
    """Release the leases ``duro migrate`` left on sealed source objects; return how many."""
    n = 0
    for ns in namespaces if namespaces is not None else backend.namespaces():
        for info in iter_objects(backend, ns):
            lease = backend.read_lease(info.ref)
            if lease is not None and lease.owner and lease.owner.startswith(MIGRATE_OWNER_PREFIX):
                backend.release(info.ref, lease.epoch)
                n += 1
    return n


def digest_of(backend: Backend, ref: ObjectRef) -> str:
    """The SHA-256 of *ref*'s rows and alarm on *backend* (see :func:`~duro.ops.object_digest`)."""
    return object_digest(backend.scan(ref, None, None), backend.get_alarm(ref))
