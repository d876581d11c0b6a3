"""Day-two operations: ``duro inspect``, ``export``/``import``, ``migrate`` and ``unseal``.

Real backends throughout (SQLite files, LMDB environments, the moto S3 server over HTTP, a
throwaway PostgreSQL cluster), real Apps writing while ``migrate`` runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import duro
from duro.backends import Backend, ObjectRef, open_backend
from duro.dump import DumpError, export_lines, import_dump, parse_dump
from duro.errors import ConfigError
from duro.migrate import MigrateError, migrate, unseal
from duro.ops import iter_objects
from duro.ops_cli import register
from duro.testing import make_backend_url

Snapshot = dict[tuple[str, str], tuple[str | None, float | None, list[tuple[bytes, bytes]]]]


class Store(duro.DurableObject):
    async def fill(self, items: dict[str, Any]) -> int:
        self.storage.put_many(items)
        return len(items)

    async def arm(self, when: float) -> None:
        self.storage.set_alarm(when)

    async def increment(self) -> int:
        n = int(await self.storage.get("n", 0)) + 1
        self.storage.put("n", n)
        return n

    async def alarm(self, info: duro.AlarmInfo) -> None:  # never due in these tests
        pass


class Other(Store):
    pass


VALUES: dict[str, Any] = {
    "none": None, "true": True, "false": False, "zero": 0, "neg": -(2**63), "big": 2**64 - 1,
    "float": 0.1, "negzero": -0.0, "inf": math.inf, "nan": math.nan,
    "str": "héllo wörld ✓ 🎉", "empty": "", "bytes": bytes(range(256)), "nobytes": b"",
    "list": [1, "a", b"\x00", None, [2.5]], "dict": {"a": {"b": [b"x"]}, "$weird": 1},
    "naive": dt.datetime(2024, 2, 29, 12, 0, 0, 123456),
    "aware": dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    "k" * 2048: "a key of 2,048 bytes", "a\x00b": "nul in a key", "ключ": "utf-8 key",
}
ALARM = 4102444800.125  # 2100-01-01, never due


def populate(url: str) -> None:
    """Objects of two namespaces: every value type, long keys, an alarm, a big object."""

    async def main() -> None:
        async with duro.App(url, listen=None) as app:
            stores, others = app.namespace(Store), app.namespace(Other)
            await stores.get_by_name("all-types").fill(VALUES)
            await stores.get_by_name("all-types").arm(ALARM)
            big = {f"key/{i:05d}": "v" * (i % 50) for i in range(700)}
            await stores.get_by_name("big").fill(big)
            await stores.get(stores.new_unique_id()).fill({"unnamed": 1})
            await others.get_by_name("empty").fill({})
            await others.get_by_name("x").fill({"x": [dt.datetime(1970, 1, 1)]})

    asyncio.run(main())


def snapshot(backend: Backend) -> Snapshot:
    """Every object's name, alarm and raw rows."""
    out: Snapshot = {}
    for ns in backend.namespaces():
        for info in iter_objects(backend, ns):
            rows = [(bytes(k), bytes(v)) for k, v in backend.scan(info.ref, None, None)]
            out[(ns, info.ref.id)] = (info.name, backend.get_alarm(info.ref), rows)
    return out


def epochs(backend: Backend) -> dict[tuple[str, str], int]:
    out = {}
    for ns in backend.namespaces():
        for info in iter_objects(backend, ns):
            lease = backend.read_lease(info.ref)
            assert lease is not None
            out[(ns, info.ref.id)] = lease.epoch
    return out


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def run_cli(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli(), list(args), input=input, catch_exceptions=False,
                             env={"COLUMNS": "400"})


# -- round trip ----------------------------------------------------------------------------------


def test_round_trip_over_every_backend_is_byte_exact(
    tmp_path: Path, duro_s3_endpoint: str, duro_postgres: Any
) -> None:
    """sqlite -> lmdb -> s3 -> postgres -> sqlite, alternating export/import and migrate."""
    urls = {
        "sqlite": make_backend_url("sqlite", tmp_path / "a"),
        "lmdb": make_backend_url("lmdb", tmp_path / "b"),
        "s3": make_backend_url("s3", tmp_path / "c", duro_s3_endpoint),
        "postgresql": duro_postgres.new_database(),
        "sqlite2": make_backend_url("sqlite", tmp_path / "d"),
    }
    for d in "abcd":
        (tmp_path / d).mkdir()
    populate(urls["sqlite"])
    with open_backend(urls["sqlite"]) as b:
        original = snapshot(b)
    assert len(original) == 5
    assert len(original[next(k for k, v in original.items() if v[0] == "big")][2]) == 700

    # sqlite -> lmdb: export/import through the CLI (a file in between)
    dump = tmp_path / "dump.jsonl"
    res = run_cli("export", "--backend", urls["sqlite"], "--output", str(dump))
    assert res.exit_code == 0, res.output
    res = run_cli("import", "--backend", urls["lmdb"], "--input", str(dump))
    assert res.exit_code == 0, res.output
    # lmdb -> s3: migrate (plain copy)
    with open_backend(urls["lmdb"]) as sb, open_backend(urls["s3"]) as db:
        result = migrate(sb, db, seal=False)
        assert result.objects == 5 and result.verified == 5
    # s3 -> postgres: export/import through stdout/stdin
    res = run_cli("export", "--backend", urls["s3"])
    assert res.exit_code == 0
    lines = res.stdout
    assert json.loads(lines.splitlines()[0])["t"] == "duro-dump"
    res = run_cli("import", "--backend", urls["postgresql"], input=lines)
    assert res.exit_code == 0, res.output
    # postgres -> sqlite: migrate through the CLI (sealing the source)
    res = run_cli("migrate", urls["postgresql"], urls["sqlite2"], "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["objects"] == 5 and summary["verified"] == 5 and summary["sealed"]

    for name in ("lmdb", "s3", "postgresql", "sqlite2"):
        with open_backend(urls[name]) as b:
            assert snapshot(b) == original, f"{name} differs"

    # The values decode to what was written, on the last backend.
    async def read_back() -> None:
        async with duro.App(urls["sqlite2"], listen=None) as app:
            got = await app.namespace(Store).get_by_name("all-types").fill({})
            assert got == 0

    asyncio.run(read_back())
    with open_backend(urls["sqlite2"]) as b:
        from duro.codec import decode
        from duro.ids import id_from_name

        ref = ObjectRef("Store", id_from_name("Store", "all-types").hex)
        rows = {k.decode(): decode(v) for k, v in b.scan(ref, None, None)}
        for k, v in VALUES.items():
            if isinstance(v, float) and math.isnan(v):
                assert math.isnan(rows[k])
            else:
                assert rows[k] == v and type(rows[k]) is type(v), k
        assert b.get_alarm(ref) == ALARM

    # the sealed postgres source refuses new owners until unsealed
    with open_backend(urls["postgresql"]) as b:
        lease = b.read_lease(ref)
        assert lease is not None and lease.owner is not None
        assert lease.owner.startswith("duro-migrate:")
        assert unseal(b) == 5
        lease = b.read_lease(ref)
        assert lease is not None and lease.owner is None


# -- inspect -------------------------------------------------------------------------------------


def test_inspect_shows_everything_and_changes_nothing(tmp_path: Path) -> None:
    url = make_backend_url("sqlite", tmp_path)
    populate(url)
    with open_backend(url) as b:
        before, before_epochs = snapshot(b), epochs(b)

    res = run_cli("inspect", "--backend", url, "--json")
    assert res.exit_code == 0, res.output
    listing = {d["namespace"]: d for d in json.loads(res.stdout)}
    assert listing["Store"]["objects"] == 3 and listing["Other"]["objects"] == 2

    res = run_cli("inspect", "--backend", url, "Store", "--json")
    objs = json.loads(res.stdout)["objects"]
    assert sorted(o["name"] or "" for o in objs) == ["", "all-types", "big"]

    res = run_cli("inspect", "--backend", url, "Store", "all-types", "--json")
    assert res.exit_code == 0, res.output
    detail = json.loads(res.stdout)
    values = {r["key"]: r["value"] for r in detail["rows"]}
    assert values["bytes"] == {"$bytes": base64.b64encode(bytes(range(256))).decode()}
    assert values["naive"] == {"$datetime": "2024-02-29T12:00:00.123456"}
    assert values["aware"] == {"$datetime": "2024-02-29T12:00:00-05:00"}
    assert values["nan"] == {"$float": "nan"} and values["negzero"] == -0.0
    assert values["dict"] == {"$dict": {"a": {"b": [{"$bytes": "eA=="}]}, "$weird": 1}}
    assert values["big"] == 2**64 - 1 and values["str"] == "héllo wörld ✓ 🎉"
    assert detail["alarm"] == ALARM and detail["lease"]["epoch"] >= 1
    assert detail["size"] > 0 and detail["keys"] == len(VALUES)

    res = run_cli("inspect", "--backend", url, "Store", "big", "--prefix", "key/001", "--json")
    assert [r["key"] for r in json.loads(res.stdout)["rows"]] == [
        f"key/{i:05d}" for i in range(100, 200)]
    oid = detail["id"]
    res = run_cli("inspect", "--backend", url, "Store", oid)  # by ID, rich table
    assert res.exit_code == 0, res.output
    assert "b'\\x00\\x01" in res.stdout and "datetime(2024-02-29T12:00:00-05:00)" in res.stdout
    res = run_cli("inspect", "--backend", url, "Store", "nobody")
    assert res.exit_code == 2 and "no object 'nobody'" in res.stderr
    res = run_cli("inspect", "--backend", url)
    assert res.exit_code == 0 and "Store" in res.stdout
    res = run_cli("inspect", "--backend", url, "Store", "--limit", "1")
    assert "more objects" in res.stdout

    with open_backend(url) as b:
        assert snapshot(b) == before and epochs(b) == before_epochs
    missing = tmp_path / "nothing-here.db"
    res = run_cli("inspect", "--backend", f"sqlite:///{missing}")
    assert res.exit_code == 2 and "no sqlite store" in res.stderr and not missing.exists()


def test_inspect_a_live_object_takes_no_lease(duro_backend_url: str) -> None:
    """With a live owner: inspect shows it, and neither its epoch nor its lease changes."""
    from duro.ops import inspect_namespace, inspect_object

    async def main() -> None:
        async with duro.App(duro_backend_url, listen=None, lease_ttl=30.0) as app:
            stub = app.namespace(Store).get_by_name("live")
            await stub.fill({"a": b"\x00", "b": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)})
            b = app.backend
            ref = ObjectRef("Store", stub.id.hex)
            lease = await asyncio.to_thread(b.read_lease, ref)
            assert lease is not None
            detail = await asyncio.to_thread(inspect_object, b, "Store", "live")
            listed = await asyncio.to_thread(inspect_namespace, b, "Store")
            assert detail.info.owner == app.owner_id and detail.info.epoch == lease.epoch
            assert [r.value for r in detail.rows] == [
                b"\x00", dt.datetime(2000, 1, 1, tzinfo=dt.UTC)]
            assert [i.ref.id for i in listed] == [stub.id.hex]
            assert await asyncio.to_thread(b.read_lease, ref) == lease
            assert await stub.increment() == 1  # the owner was not fenced

    asyncio.run(main())


# -- bad dumps and newer formats -----------------------------------------------------------------


def _good_dump(tmp_path: Path) -> list[str]:
    url = make_backend_url("sqlite", tmp_path / "src")
    (tmp_path / "src").mkdir()
    populate(url)
    with open_backend(url) as b:
        return list(export_lines(b))


def _import_state(url: str) -> Snapshot:
    with open_backend(url) as b:
        return snapshot(b)


@pytest.mark.parametrize("damage", [
    "truncate-mid-line", "truncate-at-object", "no-footer", "bad-json", "bad-base64",
    "flipped-byte", "missing-end", "wrong-count", "garbage-first-line", "newer-version",
    "newer-storage", "after-footer",
])
def test_bad_dumps_fail_clearly_and_import_nothing_half(tmp_path: Path, damage: str) -> None:
    lines = _good_dump(tmp_path)
    objects_at = [i for i, line in enumerate(lines) if json.loads(line)["t"] == "object"]
    kv_at = [i for i, line in enumerate(lines) if json.loads(line)["t"] == "kv"]
    big_kv = max(kv_at, key=lambda i: len(lines[i]))
    text: str
    expect_line: int
    if damage == "truncate-mid-line":
        cut = big_kv
        text = "".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2]
        expect_line = cut + 1
    elif damage == "truncate-at-object":
        cut = objects_at[2] + 1  # ends right after an object header
        text = "".join(lines[:cut])
        expect_line = cut + 1
    elif damage == "no-footer":
        text = "".join(lines[:-1])
        expect_line = len(lines)
    elif damage == "bad-json":
        lines[big_kv] = lines[big_kv].replace('"]', '"', 1)
        text, expect_line = "".join(lines), big_kv + 1
    elif damage == "bad-base64":
        doc = json.loads(lines[big_kv])
        doc["rows"][3][1] = "***"
        lines[big_kv] = json.dumps(doc) + "\n"
        text, expect_line = "".join(lines), big_kv + 1
    elif damage == "flipped-byte":
        doc = json.loads(lines[big_kv])
        doc["rows"][3][1] = "AQ=="  # valid base64, wrong bytes: the checksum catches it
        lines[big_kv] = json.dumps(doc) + "\n"
        end = next(i for i in range(big_kv, len(lines)) if json.loads(lines[i])["t"] == "end")
        text, expect_line = "".join(lines), end + 1
    elif damage == "missing-end":
        end = next(i for i in range(big_kv, len(lines)) if json.loads(lines[i])["t"] == "end")
        del lines[end]
        text, expect_line = "".join(lines), end + 1
    elif damage == "wrong-count":
        doc = json.loads(lines[objects_at[1]])
        doc["keys"] += 1
        lines[objects_at[1]] = json.dumps(doc) + "\n"
        end = next(i for i in range(objects_at[1], len(lines))
                   if json.loads(lines[i])["t"] == "end")
        text, expect_line = "".join(lines), end + 1
    elif damage == "garbage-first-line":
        text, expect_line = "hello\n" + "".join(lines), 1
    elif damage == "newer-version":
        doc = json.loads(lines[0])
        doc["version"] = 99
        text, expect_line = json.dumps(doc) + "\n" + "".join(lines[1:]), 1
    elif damage == "newer-storage":
        doc = json.loads(lines[0])
        doc["storage_format"] = 99
        text, expect_line = json.dumps(doc) + "\n" + "".join(lines[1:]), 1
    else:
        text, expect_line = "".join(lines) + lines[1], len(lines) + 1

    # Which objects are complete before the damaged line: exactly those get imported.
    complete = sum(1 for line in text.splitlines()[: expect_line - 1] if '"t":"end"' in line)
    if damage.startswith("newer"):
        complete = 0
    dst = make_backend_url("sqlite", tmp_path / "dst")
    (tmp_path / "dst").mkdir()
    res = run_cli("import", "--backend", dst, input=text)
    assert res.exit_code == 1, res.output
    assert f"dump line {expect_line}:" in res.stderr, res.stderr
    if damage.startswith("newer"):
        assert "upgrade duro" in res.stderr
    if expect_line == 1:  # a bad header creates no file at all
        assert list((tmp_path / "dst").iterdir()) == []
        complete = 0
    else:  # the error says exactly what landed
        said = " ".join(res.stderr.split())
        assert f"Imported before it, each whole: {complete} object(s)" in said, said
    state = _import_state(dst)
    assert len(state) == complete
    src_state = _import_state(make_backend_url("sqlite", tmp_path / "src"))
    for key, value in state.items():  # every imported object is whole
        assert src_state[key] == value
    # --check validates without writing
    res = run_cli("import", "--check", input=text)
    assert res.exit_code == 1 and f"dump line {expect_line}:" in res.stderr


def test_parse_dump_api_and_empty_input(tmp_path: Path) -> None:
    lines = _good_dump(tmp_path)
    assert len(list(parse_dump(lines))) == 5
    with pytest.raises(DumpError, match="empty"):
        list(parse_dump([]))
    stats = import_dump(None, lines)
    assert stats.objects == 5 and stats.keys == len(VALUES) + 700 + 1 + 0 + 1


def _make_newer(url_path: Path) -> None:
    con = sqlite3.connect(url_path)
    con.execute("UPDATE duro_meta SET value = '99' WHERE name = 'format_version'")
    con.commit()
    con.close()


def test_newer_storage_format_is_refused_by_every_command(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old_url = make_backend_url("sqlite", tmp_path / "old")
    new_url = make_backend_url("sqlite", tmp_path / "new")
    populate(old_url)
    populate(new_url)
    _make_newer(tmp_path / "new" / "duro.db")
    res = run_cli("export", "--backend", old_url)
    dump = res.stdout
    for args, given in [
        (("export", "--backend", new_url), None),
        (("import", "--backend", new_url), dump),
        (("inspect", "--backend", new_url), None),
        (("migrate", old_url, new_url), None),
        (("migrate", new_url, old_url), None),
    ]:
        res = run_cli(*args, input=given)
        assert res.exit_code == 2, (args, res.output)
        assert "storage format 99" in res.stderr and "upgrade duro" in res.stderr, res.stderr


# -- migrate with live owners --------------------------------------------------------------------


def test_migrate_waits_for_a_live_owner_and_never_breaks_its_lease(tmp_path: Path) -> None:
    src, dst = make_backend_url("sqlite", tmp_path / "s"), make_backend_url("lmdb", tmp_path / "d")

    async def main() -> None:
        async with duro.App(src, listen=None, lease_ttl=30.0) as app:
            stub = app.namespace(Store).get_by_name("busy")
            await stub.increment()
            s, d = open_backend(src), open_backend(dst)
            try:
                with pytest.raises(MigrateError, match="owned by live processes") as err:
                    await asyncio.to_thread(migrate, s, d, wait=0.5)
                assert app.owner_id in str(err.value)
                assert await stub.increment() == 2  # never fenced: its lease was respected
            finally:
                s.close()
                d.close()
        # The app closed and released its lease: now the object moves.
        with open_backend(src) as s, open_backend(dst) as d:
            result = migrate(s, d, wait=5.0)
            assert result.objects == 1 and result.waited == 0
            assert snapshot(d) == {k: v for k, v in snapshot(s).items()}

    asyncio.run(main())


@pytest.mark.parametrize("source", ["sqlite", "postgresql"])
def test_migrate_during_live_writes_loses_no_acknowledged_write(
    tmp_path: Path, source: str, duro_postgres: Any
) -> None:
    """An App keeps incrementing counters (pausing now and then, so idle objects are evicted)
    while migrate runs: every acknowledged increment is on the destination, and nothing lands
    on the source after its object was sealed."""
    src = (duro_postgres.new_database() if source == "postgresql"
           else make_backend_url("sqlite", tmp_path / "s"))
    dst = make_backend_url("lmdb", tmp_path / "d")
    names = [f"c{i}" for i in range(4)]
    acked: dict[str, list[int]] = {n: [] for n in names}
    done = threading.Event()
    migrated: dict[str, Any] = {}

    def run_migrate() -> None:
        time.sleep(0.5)
        with open_backend(src) as s, open_backend(dst) as d:
            try:
                migrated["result"] = migrate(s, d, wait=30.0, margin=0.2)
            except BaseException as exc:  # reported by the test thread
                migrated["error"] = exc
        done.set()

    async def writer(ns: Any, name: str, k: int) -> None:
        stub = ns.get_by_name(name)
        i = 0
        while not done.is_set():
            # CallTimeout/ObjectReset/BackendUnavailable: unknown outcome, not acknowledged
            with contextlib.suppress(duro.CallTimeout, duro.ObjectReset, duro.BackendUnavailable):
                acked[name].append(await stub.increment())
            i += 1
            # bursts, then a pause longer than idle_timeout so the object is evicted
            await asyncio.sleep(0.4 if i % (3 + k) == 0 else 0.01)

    async def main() -> None:
        async with duro.App(src, listen=None, lease_ttl=1.0, drift_margin=0.2,
                            idle_timeout=0.15, call_timeout=1.5) as app:
            ns = app.namespace(Store)
            mover = threading.Thread(target=run_migrate)
            mover.start()
            await asyncio.gather(*(writer(ns, n, k) for k, n in enumerate(names)))
            await asyncio.to_thread(mover.join)

    asyncio.run(main())
    assert "error" not in migrated, migrated.get("error")
    assert migrated["result"].objects == len(names)
    from duro.codec import decode
    from duro.ids import id_from_name

    with open_backend(src) as s, open_backend(dst) as d:
        for name in names:
            ref = ObjectRef("Store", id_from_name("Store", name).hex)
            on_dst = decode(d.get_many(ref, [b"n"])[b"n"])
            on_src = decode(s.get_many(ref, [b"n"])[b"n"])
            assert acked[name], f"{name}: no write was acknowledged at all"
            assert on_dst >= max(acked[name]), (name, on_dst, max(acked[name]))
            assert on_src == on_dst, "a write landed on the source after it was sealed"
            lease = s.read_lease(ref)
            assert lease is not None and (lease.owner or "").startswith("duro-migrate:")


def test_migrate_refuses_a_missing_source(tmp_path: Path) -> None:
    res = run_cli("migrate", f"sqlite:///{tmp_path}/nope.db", f"sqlite:///{tmp_path}/dst.db")
    assert res.exit_code == 2 and "no sqlite store" in res.stderr
    with pytest.raises(ConfigError):
        from duro.ops import open_existing

        open_existing(f"lmdb:///{tmp_path}/nope.lmdb")
