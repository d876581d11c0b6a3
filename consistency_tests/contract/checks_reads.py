"""Contract checks for reads: get_many, scans of every shape, keys, values and isolation."""

from __future__ import annotations

import itertools

from duro.backends import Batch, LeaseHeld, ObjectRef
from duro.codec import DEFAULT_MAX_VALUE_BYTES
from duro.consistency.contract.context import (
    T0,
    TRICKY_KEYS,
    CheckContext,
    close_to,
    contract_check,
    expect_raises,
    model_scan,
)
from duro.errors import Fenced
from duro.keys import key_range, successor

__all__: list[str] = []


@contract_check("reads")
def check_fresh_object_is_empty(ctx: CheckContext) -> None:
    """A never-written object reads empty everywhere."""
    b, ref = ctx.backend, ctx.ref()
    assert b.get_many(ref, [b"a", b""]) == {}, "get_many on a fresh object returned rows"
    assert b.scan(ref, None, None) == [], "scan on a fresh object returned rows"
    assert b.scan(ref, None, None, reverse=True, limit=3) == [], "reverse scan returned rows"
    assert b.get_alarm(ref) is None, "a fresh object has an alarm"
    assert b.read_lease(ref) is None, "a fresh object has a lease"
    assert b.list_objects(ref.namespace) == [], "list_objects lists a never-acquired object"
    assert ctx.own_namespaces() == [], "namespaces() lists a namespace with no objects"


@contract_check("reads")
def check_get_many_omits_missing_keys(ctx: CheckContext) -> None:
    """get_many returns the keys that exist, omits the others, tolerates duplicates."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    b.commit(ref, epoch, Batch(puts={b"a": b"1", b"c": b"3"}))
    got = b.get_many(ref, [b"a", b"b", b"c", b"d"])
    assert got == {b"a": b"1", b"c": b"3"}, f"get_many(a, b, c, d) = {got!r}"
    assert b.get_many(ref, []) == {}, "get_many([]) is not empty"
    assert b.get_many(ref, [b"b"]) == {}, "get_many of a missing key returned it"
    assert b.get_many(ref, [b"a", b"a"]) == {b"a": b"1"}, "get_many with a duplicate key"


@contract_check("reads")
def check_get_many_of_many_keys(ctx: CheckContext) -> None:
    """get_many of hundreds of keys (more than one SQL statement's worth) returns them all."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    n = ctx.n(600, 300)
    model = {b"g%05d" % i: b"v%d" % i for i in range(n)}
    b.commit(ref, epoch, Batch(puts=dict(model)))
    asked = sorted(model) + [b"missing%d" % i for i in range(50)]
    got = b.get_many(ref, asked)
    missing = sorted(set(model) - set(got))
    assert not missing, f"get_many of {len(asked)} keys dropped {len(missing)}: {missing[:3]}"
    assert got == model, "get_many of many keys returned wrong values or extra keys"


@contract_check("reads")
def check_put_overwrite_and_delete(ctx: CheckContext) -> None:
    """Puts overwrite, deletes remove (deleting a missing key is fine)."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    b.commit(ref, epoch, Batch(puts={b"k": b"v1", b"j": b"x"}))
    b.commit(ref, epoch, Batch(puts={b"k": b"v2"}, deletes={b"j", b"never"}))
    assert ctx.scan_all(ref) == [(b"k", b"v2")], "overwrite or delete did not apply"
    b.commit(ref, epoch, Batch(deletes={b"k"}))
    assert ctx.scan_all(ref) == [], "deleted key still listed"
    assert b.get_many(ref, [b"k"]) == {}, "deleted key still readable"


@contract_check("values")
def check_values_of_every_size(ctx: CheckContext) -> None:
    """Values from 0 bytes to the 128 KiB limit, with every byte value, round-trip intact."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    pattern = bytes(range(256))
    sizes = (0, 1, 99, 100, 101, 255, 256, 1000, 4095, 4096, 4097, 65535, 65536,
             DEFAULT_MAX_VALUE_BYTES - 1, DEFAULT_MAX_VALUE_BYTES)
    model = {b"size%06d" % n: (pattern * (n // 256 + 1))[:n] for n in sizes}
    model[b""] = b"empty-key"
    b.commit(ref, epoch, Batch(puts=dict(model)))
    got = b.get_many(ref, list(model))
    for k, v in model.items():
        assert k in got, f"value of {len(v)} bytes under {k!r} is missing (empty value dropped?)"
        assert got[k] == v, (f"value of {len(v)} bytes under {k!r} came back as "
                             f"{len(got[k])} bytes")
    assert ctx.scan_all(ref) == sorted(model.items()), "scan returned values differently"
    b.commit(ref, epoch, Batch(deletes={b""}, puts={b"size000000": b"now-set"}))
    del model[b""]
    model[b"size000000"] = b"now-set"
    assert ctx.scan_all(ref) == sorted(model.items()), "delete of the empty key or overwrite"


_SMALL = {k.encode(): k.upper().encode() for k in ("a", "b", "c", "d", "e")}


@contract_check("ranges")
def check_scan_bounds_reverse_and_limit(ctx: CheckContext) -> None:
    """scan(lo, hi, reverse, limit): lo inclusive, hi exclusive, in both directions, limits."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    b.commit(ref, epoch, Batch(puts=dict(_SMALL)))
    bounds: list[tuple[bytes | None, bytes | None]] = [
        (None, None), (b"b", None), (None, b"d"), (b"b", b"d"), (b"b", b"b"), (b"d", b"b"),
        (b"bb", b"dd"), (b"", b"\xff"), (b"a", b"a\x00"), (b"b\x00", None),
        (b"b\x00", b"d"), (b"e", None), (b"f", None), (None, b"a"), (None, b"e\x00"),
    ]
    for lo, hi in bounds:
        for reverse in (False, True):
            for limit in (None, 0, 1, 2, 3, 4, 5, 6, 10):
                got = b.scan(ref, lo, hi, reverse=reverse, limit=limit)
                want = model_scan(_SMALL, lo, hi, reverse, limit)
                assert got == want, (f"scan(lo={lo!r}, hi={hi!r}, reverse={reverse}, "
                                     f"limit={limit}) returned keys {[k for k, _ in got]}, "
                                     f"expected {[k for k, _ in want]}")


@contract_check("ranges")
def check_list_shapes(ctx: CheckContext) -> None:
    """Every list() shape the runtime sends: start, start_after, end, prefix, reverse, limit."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    names = ["", "a", "a\x00", "a\x00b", "ab", "abc", "abd", "ac", "b", "ba", "é", "éa", "😀"]
    model = {n.encode(): b"%d" % i for i, n in enumerate(names)}
    b.commit(ref, epoch, Batch(puts=dict(model)))
    starts = (None, "a", "ab", "b", "zz")
    ends = (None, "ab", "abd", "b", "é")
    prefixes = (None, "a", "ab", "é", "zz")
    for start, end, prefix in itertools.product(starts, ends, prefixes):
        for after in (False, True):
            lo, hi = key_range(start=None if after else start,
                               start_after=start if after else None, end=end, prefix=prefix)
            for reverse in (False, True):
                for limit in (None, 1, 2):
                    got = b.scan(ref, lo, hi, reverse=reverse, limit=limit)
                    want = model_scan(model, lo, hi, reverse, limit)
                    assert got == want, (
                        f"list({'start_after' if after else 'start'}={start!r}, end={end!r}, "
                        f"prefix={prefix!r}, reverse={reverse}, limit={limit}) = scan({lo!r}, "
                        f"{hi!r}) returned {[k for k, _ in got]}, expected "
                        f"{[k for k, _ in want]}")


@contract_check("keys")
def check_utf8_byte_order_and_long_keys(ctx: CheckContext) -> None:
    """Keys sort by UTF-8 bytes (NUL, non-ASCII, astral), up to 2,048 bytes, long prefixes."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    model = {k: b"v%d" % i for i, k in enumerate(TRICKY_KEYS)}
    b.commit(ref, epoch, Batch(puts=dict(model)))
    got = [k for k, _ in ctx.scan_all(ref)]
    assert got == sorted(model), f"scan order/keys differ from UTF-8 byte order: {got[:16]!r}"
    assert b.scan(ref, None, None, reverse=True) == sorted(model.items(), reverse=True), \
        "reverse scan is not reversed byte order"
    assert b.get_many(ref, list(model)) == model, "get_many of tricky keys differs"
    for lo in (None, *TRICKY_KEYS):
        for hi in (None, *TRICKY_KEYS[::4]):
            for reverse in (False, True):
                got_rows = b.scan(ref, lo, hi, reverse=reverse, limit=3)
                want = model_scan(model, lo, hi, reverse, 3)
                assert got_rows == want, (f"scan({lo!r:.40}, {hi!r:.40}, reverse={reverse}, "
                                          "limit=3) over tricky keys")
    for prefix in (b"x" * 511, b"x" * 600, b"x" * 2047, b"a", "é".encode()):
        hi = successor(prefix)
        want = sorted((k, v) for k, v in model.items() if k.startswith(prefix))
        assert b.scan(ref, prefix, hi) == want, f"prefix scan {prefix[:8]!r}… ({len(prefix)} B)"
    b.commit(ref, epoch, Batch(deletes={b"x" * 2047 + b"a", b"x" * 511}))
    del model[b"x" * 2047 + b"a"], model[b"x" * 511]
    assert ctx.scan_all(ref) == sorted(model.items()), "deleting long keys"


@contract_check("keys")
def check_many_keys_and_long_key_groups(ctx: CheckContext) -> None:
    """Hundreds of short keys and of 1,500-byte keys sharing a prefix: scans, deletes."""
    b, ref = ctx.backend, ctx.ref()
    epoch = ctx.acquire(ref).epoch
    n = ctx.n(300, 100)
    short = {b"k%05d" % i: b"s%d" % i for i in range(n)}
    long = {b"L" * 1500 + b"%05d" % i: b"l%d" % i for i in range(n)}
    long |= {b"L" * 1500: b"base", b"L" * 2048: b"max"}
    model = short | long
    b.commit(ref, epoch, Batch(puts=dict(short)))
    b.commit(ref, epoch, Batch(puts=dict(long)))
    rows = sorted(model.items())
    assert ctx.scan_all(ref) == rows, "full scan of many keys"
    assert b.scan(ref, None, None, reverse=True, limit=n // 2) == rows[::-1][: n // 2], \
        "reverse limited scan of many keys"
    lo, hi = b"L" * 1500 + b"%05d" % (n // 3), b"L" * 1500 + b"%05d" % (2 * n // 3)
    inside = [r for r in rows if lo <= r[0] < hi]
    assert b.scan(ref, lo, hi) == inside, "bounded scan over long keys"
    assert b.scan(ref, lo, hi, reverse=True, limit=5) == inside[::-1][:5], \
        "reverse bounded scan over long keys"
    gone = {k for i, k in enumerate(sorted(long)) if i % 3 == 0}
    b.commit(ref, epoch, Batch(deletes=gone))
    assert ctx.scan_all(ref) == [r for r in rows if r[0] not in gone], "deletes of long keys"
    assert b.get_many(ref, sorted(long)) == {k: v for k, v in long.items() if k not in gone}, \
        "get_many of long keys after deletes"


@contract_check("isolation")
def check_objects_are_isolated(ctx: CheckContext) -> None:
    """Objects never share data, alarms or epochs, also the same ID in two namespaces."""
    b = ctx.backend
    a, o = ctx.ref("same", "NsA"), ctx.ref("other", "NsA")
    c = ctx.ref(namespace="NsB", object_id=a.id)
    epochs = {r: ctx.acquire(r).epoch for r in (a, o, c)}
    for r in (a, o, c):
        b.commit(r, epochs[r], Batch(puts={b"k": r.namespace.encode() + r.id[:4].encode(),
                                           b"only-" + r.id[:4].encode(): b"1"},
                                     alarm=T0 + len(r.namespace) + (r is c)))
    b.commit(a, epochs[a], Batch(delete_all=True))
    assert ctx.scan_all(a) == [], "delete_all left rows"
    assert b.get_alarm(a) is None, "delete_all left the alarm"
    for r in (o, c):
        got = b.get_many(r, [b"k"])
        assert got == {b"k": r.namespace.encode() + r.id[:4].encode()}, \
            f"another object's delete_all or write reached {r.namespace[-3:]}/{r.id[:8]}"
        assert len(ctx.scan_all(r)) == 2, "another object's rows leaked in or out"
        assert b.get_alarm(r) is not None, \
            "alarm lost (dropped by its commit, or cleared by another object's delete_all)"
    with expect_raises(Fenced, "commit under another object's epoch"):
        b.commit(a, epochs[a] + 1, Batch(puts={b"x": b"1"}))


def _similar_ids(ctx: CheckContext, count: int) -> list[ObjectRef]:
    base = ctx.ref("similar-base").id
    refs = []
    for i in range(count):  # IDs equal but for their last 4 hex digits, or their first
        tail = format(i, "04x")
        refs.append(ctx.ref(namespace="Sim", object_id=base[: 64 - len(tail)] + tail))
    refs.append(ctx.ref(namespace="Sim", object_id=("f" if base[0] != "f" else "e") + base[1:]))
    refs.append(ctx.ref(namespace="Sim2", object_id=refs[0].id))
    return refs


@contract_check("isolation")
def check_ids_sharing_long_prefixes_stay_isolated(ctx: CheckContext) -> None:
    """Objects whose IDs share 60+ hex digits keep their own rows, alarms and leases."""
    b = ctx.backend
    refs = _similar_ids(ctx, ctx.n(20, 8))
    epochs = {}
    for i, r in enumerate(refs):
        try:
            epochs[r] = ctx.acquire(r, f"owner{i}", until=T0 + 100 + i).epoch
        except LeaseHeld as exc:
            raise AssertionError(f"acquire of …{r.id[-6:]} met the lease of another object with "
                                 f"a similar ID ({exc.lease.owner})") from exc
        b.commit(r, epochs[r], Batch(puts={b"who": r.id.encode(), b"n%03d" % i: b"x"},
                                     alarm=T0 + 1 + i))
    for i, r in enumerate(refs):
        rows = ctx.scan_all(r)
        assert rows == sorted([(b"who", r.id.encode()), (b"n%03d" % i, b"x")]), (
            f"object {r.namespace[-4:]}/…{r.id[-6:]} holds rows of a similar ID: "
            f"{[k for k, _ in rows]}")
        assert close_to(b.get_alarm(r), T0 + 1 + i), f"alarm of …{r.id[-6:]} mixed up"
        lease = b.read_lease(r)
        assert lease is not None and lease.owner == f"owner{i}", f"lease of …{r.id[-6:]}: {lease}"
    listed = [i.ref for i in b.list_objects(refs[0].namespace, limit=1000)]
    want = sorted((r for r in refs if r.namespace == refs[0].namespace), key=lambda r: r.id)
    assert listed == want, "list_objects of similar IDs"
    b.commit(refs[0], epochs[refs[0]], Batch(delete_all=True))
    for r in refs[1:]:
        assert len(ctx.scan_all(r)) == 2, f"delete_all of a similar ID emptied …{r.id[-6:]}"
