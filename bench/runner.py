"""The benchmark runner: plans the sweep and the target runs, drives duro and the baselines.

Every duro run opens a fresh :class:`duro.App`, loads its data through a first App, then
activates every object before the clock starts, so only steady-state calls are timed.
Baselines (:mod:`duro.bench.baselines`) run in the same process, on the same disk, with the
same op stream, one operation per transaction, from one thread.

Embedded backends (sqlite, lmdb) get fresh files per run under ``config.data_dir``; a
``--backend`` URL given by the user is used as it is, each run in its own namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from duro.backends.base import BackendURL
from duro.bench.baselines import (
    DiskCachePeer,
    RawLMDB,
    RawS3,
    RawSQLite,
    RawStore,
    remove_tree,
    run_sync_ops,
    time_sync_loop,
)
from duro.bench.config import (
    GROUP_COMMIT,
    LOAD_CHUNK,
    MANY_OBJECTS,
    OP_POOL,
    PAD_COUNT,
    PAD_SIZE,
    PAIRED_SLICES,
    S3_BUCKET,
    S3_MIN_DURATION,
    TARGET_VALUE,
    TOUCHED_FULL,
    TOUCHED_QUICK,
    WRITES,
    BackendSpec,
    BenchConfig,
)
from duro.bench.drive import Step, drive_async
from duro.bench.hdr import Histogram
from duro.bench.many import FloorStub, ThreadHandoff, many_objects, resident_memory
from duro.bench.report import (
    Measurement,
    Report,
    Result,
    Target,
    filesystem_type,
    machine_info,
    versions,
)
from duro.bench.scratch import drop_namespaces
from duro.bench.workloads import (
    SWEEP_WORKLOADS,
    WORKLOADS,
    Op,
    OpStream,
    Workload,
    key_name,
    payload,
    payload_ring,
)

__all__ = [
    "BackendSpec",
    "BenchConfig",
    "Runner",
    "Step",
    "drive_async",
    "run_bench",
]

class Runner:
    """Plans and runs one benchmark, producing a :class:`~duro.bench.report.Report`."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.results: list[Result] = []
        self.run_dir = config.data_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._created_root = not config.data_dir.exists()
        self._baselines: dict[tuple[Any, ...], Measurement | None] = {}
        self._baseline_names: dict[tuple[Any, ...], str] = {}
        self._pending: list[tuple[Result, tuple[Any, ...]]] = []
        self._case = 0
        self._moto: Any = None
        self._resident: dict[str, float] | None = None
        self._env_set: list[str] = []
        self._made: list[str] = []  # namespaces this run wrote (removed from given backends)
        unknown = [w for w in config.workloads if w not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload(s) {', '.join(unknown)}; known: "
                             f"{', '.join(SWEEP_WORKLOADS)}")
        self.specs = self._specs()

    # ---------------------------------------------------------------- setup and teardown

    def _specs(self) -> list[BackendSpec]:
        cfg = self.config
        if cfg.backends:
            specs = [BackendSpec.from_url(u, self.run_dir) for u in cfg.backends]
        else:
            specs = [BackendSpec.embedded("sqlite"), BackendSpec.embedded("lmdb")]
        if cfg.s3 and not any(s.kind == "s3" for s in specs):
            specs.append(BackendSpec(label="s3", kind="s3", sync="full"))
        return specs

    def _start_moto(self) -> None:
        from duro.testing.moto_server import start_moto_server

        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if name not in os.environ:
                os.environ[name] = "testing"
                self._env_set.append(name)
        self._moto = start_moto_server(host="127.0.0.1", port=0, latency=self.config.s3_latency)
        self._moto.create_bucket(S3_BUCKET)
        prefix = f"run-{uuid.uuid4().hex[:8]}"
        url = f"s3://{S3_BUCKET}/{prefix}?endpoint_url={self._moto.endpoint}&region=us-east-1"
        for spec in self.specs:
            if spec.kind == "s3" and spec.url is None:
                spec.url = url

    def _cleanup(self) -> None:
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        for name in self._env_set:
            os.environ.pop(name, None)
        if not self.config.keep_data:
            remove_tree(self.run_dir)
            for spec in self.specs:
                if spec.url is not None and spec.raw_dir is not None and spec.kind != "s3":
                    remove_tree(spec.raw_dir)
            if self._created_root:
                with contextlib.suppress(OSError):
                    self.config.data_dir.rmdir()

    def _case_dir(self, tag: str) -> Path:
        self._case += 1
        return self.run_dir / f"{self._case:03d}-{tag}"

    def _namespace(self) -> str:
        self._made.append(f"bench_{self._case:03d}_{uuid.uuid4().hex[:6]}")
        return self._made[-1]

    # ---------------------------------------------------------------- baselines

    def _raw_path(self, spec: BackendSpec, tag: str) -> Path:
        """A fresh directory for a baseline's files, on the same disk as *spec*'s data."""
        root = (spec.raw_dir or self.run_dir) if not spec.fresh else self.run_dir
        return root / f"raw-{tag}-{uuid.uuid4().hex[:6]}"

    def _raw_store(self, spec: BackendSpec, tag: str, *, pad: bool = True) -> RawStore:
        path = self._raw_path(spec, tag)
        store: RawStore
        if spec.kind in ("sqlite", "lmdb"):
            store = (RawSQLite(path / "raw.db", spec.sync) if spec.kind == "sqlite"
                     else RawLMDB(path / "raw.lmdb", spec.sync))
            if pad:
                store.pad(PAD_COUNT, PAD_SIZE)
            return store
        if spec.kind == "s3":
            url = spec.url or ""
            parsed = BackendURL.parse(url)
            return RawS3(parsed.netloc, parsed.path,
                         endpoint_url=parsed.options.get("endpoint_url")
                         or os.environ.get("AWS_ENDPOINT_URL"),
                         region=parsed.options.get("region", "us-east-1"))
        raise ValueError(f"no raw baseline for {spec.kind}")

    @staticmethod
    def _discard(store: RawStore) -> None:
        store.close()
        path = getattr(store, "path", None)
        if isinstance(path, Path):
            remove_tree(path.parent)

    # ---------------------------------------------------------------- duro side

    def _records(self, spec: BackendSpec) -> int:
        return min(self.config.records, self.config.s3_records) if spec.kind == "s3" \
            else self.config.records

    async def _load(self, ns: Any, names: list[str], records: int, value: bytes) -> None:
        async def one(name: str) -> None:
            stub = ns.get_by_name(name)
            for first in range(0, records, LOAD_CHUNK):
                await stub.load(first, min(LOAD_CHUNK, records - first), value)

        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(one(name))

    async def _with_app(
        self,
        spec: BackendSpec,
        tag: str,
        names: list[str],
        records: int,
        value: bytes,
        body: Callable[[Any, list[Any]], Awaitable[Measurement]],
        *,
        pad: bool = True,
    ) -> Measurement:
        """Load *records* into each object, then time *body* (in a fresh App if cold_start).

        With *pad*, a file store is first brought to steady state (see :data:`PAD_COUNT`).
        """
        import duro
        from duro.bench.objects import BenchObject

        case_dir = self._case_dir(tag)
        url = spec.case_url(case_dir)
        ns_name = self._namespace()
        try:
            single = spec.kind == "memory" or not self.config.cold_start
            if records and not single:
                async with duro.App(backend=url) as app:
                    ns = app.namespace(BenchObject, name=ns_name)
                    await self._load(ns, names, records, value)
            async with duro.App(backend=url) as app:
                ns = app.namespace(BenchObject, name=ns_name)
                if records and single:
                    await self._load(ns, names, records, value)
                stubs = [ns.get_by_name(n) for n in names]
                await asyncio.gather(*(s.noop() for s in stubs))
                if pad and spec.kind not in ("s3", "memory"):
                    await ns.get_by_name("~pad").pad(PAD_COUNT, PAD_SIZE)
                return await body(ns, stubs)
        finally:
            if spec.fresh and not self.config.keep_data:
                shutil.rmtree(case_dir, ignore_errors=True)

    def _pools(self, workload: Workload, clients: int, objects: int,
               records: int) -> list[list[Op]]:
        return [
            OpStream(workload, objects=objects, records=records,
                     seed=self.config.seed * 1000 + i).take(OP_POOL)
            for i in range(clients)
        ]

    @staticmethod
    def _dispatch(stubs: list[Any], values: list[bytes], scan_length: int
                  ) -> Callable[[int, Op], Awaitable[object]]:
        """Map an op to its stub call; puts cycle through *values* (so each write changes)."""
        counter = [0]
        ring = len(values)

        def call(_client: int, op: Op) -> Awaitable[object]:
            kind, obj, key = op
            stub = stubs[obj]
            if kind == "get":
                return stub.get(key)  # type: ignore[no-any-return]
            if kind == "put":
                counter[0] += 1
                return stub.put(key, values[counter[0] % ring])  # type: ignore[no-any-return]
            if kind == "rmw":
                return stub.rmw(key)  # type: ignore[no-any-return]
            return stub.scan(key, scan_length)  # type: ignore[no-any-return]

        return call

    async def _guard(self, result: Result, coro: Awaitable[Measurement]) -> None:
        try:
            m = await asyncio.wait_for(coro, self.config.step_timeout)
        except Exception as exc:  # noqa: BLE001 - one failed run must not stop the report
            result.error = f"{type(exc).__name__}: {exc}"[:500]
        else:
            result.set_measurement(m)
        self.results.append(result)

    def _baseline_step(self, key: tuple[Any, ...], name: str,
                       measure: Callable[[], Measurement]) -> Step:
        self._baseline_names[key] = name

        async def run() -> None:
            try:
                self._baselines[key] = measure()
            except Exception:  # noqa: BLE001 - recorded as a missing baseline
                self._baselines[key] = None

        return Step(f"baseline {name}", run)

    def _expect_baseline(self, result: Result, key: tuple[Any, ...]) -> None:
        self._pending.append((result, key))

    # ---------------------------------------------------------------- the sweep

    def _sweep_steps(self) -> Iterator[Step]:
        cfg = self.config
        for spec in self.specs:
            for wl_name in cfg.workloads:
                wl = WORKLOADS[wl_name]
                object_counts = [cfg.fan_out_objects] if wl.fan_out else cfg.objects
                for objects in object_counts:
                    for size in cfg.value_sizes:
                        key = ("sweep", spec.label, wl.name, objects, size)
                        if spec.has_baseline:
                            yield self._baseline_step(
                                key, _raw_name(spec),
                                functools.partial(self._sweep_baseline, spec, wl, objects, size),
                            )
                        for clients in cfg.clients:
                            yield self._sweep_step(spec, wl, clients, objects, size, key)

    def _sweep_baseline(self, spec: BackendSpec, wl: Workload, objects: int,
                        size: int) -> Measurement:
        cfg = self.config
        records = self._records(spec)
        values = payload_ring(size)
        names = [f"o{i}" for i in range(objects)]
        store = self._raw_store(spec, wl.name, pad=cfg.pad_sweep)
        try:
            for name in names:
                store.load(name, records, values[0])
            stream = OpStream(wl, objects=objects, records=records, seed=cfg.seed * 1000)
            return run_sync_ops(store, stream, values=values, scan_length=cfg.scan_length,
                                obj_names=names, duration=cfg.duration, max_ops=cfg.max_ops)
        finally:
            self._discard(store)

    def _sweep_step(self, spec: BackendSpec, wl: Workload, clients: int, objects: int,
                    size: int, key: tuple[Any, ...]) -> Step:
        cfg = self.config

        async def run() -> None:
            records = self._records(spec)
            values = payload_ring(size)
            names = [f"o{i}" for i in range(objects)]
            pools = self._pools(wl, clients, objects, records)

            async def body(_ns: Any, stubs: list[Any]) -> Measurement:
                return await drive_async(pools, self._dispatch(stubs, values, cfg.scan_length),
                                         duration=cfg.duration, max_ops=cfg.max_ops)

            result = Result(wl.name, spec.label, clients, objects, size)
            if spec.has_baseline:
                self._expect_baseline(result, key)
            await self._guard(result, self._with_app(spec, wl.name, names, records, values[0],
                                                     body, pad=cfg.pad_sweep))

        return Step(f"{wl.name} {spec.label} clients={clients} objects={objects} value={size}",
                    run)

    # ---------------------------------------------------------------- target runs

    def _target_steps(self) -> Iterator[Step]:
        sqlite = BackendSpec.embedded("sqlite")
        lmdb = BackendSpec.embedded("lmdb")
        yield self._cached_get(sqlite)
        yield self._stub_call()
        for clients in (1, 64):
            yield self._stub_floor(clients)
        for spec in (sqlite, lmdb):
            yield self._group_commit(spec, 64)
        for spec in (sqlite, lmdb):
            yield self._lone_put(spec)
        many = [sqlite, lmdb, *(s for s in self.specs if s.kind == "postgresql")]
        for spec in many:
            for n in MANY_OBJECTS:
                yield self._many_objects(spec, n)
        yield self._resident_memory(sqlite)
        for clients in (1, 64):
            yield self._diskcache(BackendSpec.embedded("sqlite", "normal"), clients)
        s3 = next((s for s in self.specs if s.kind == "s3"), None)
        if s3 is not None:
            yield self._s3_group_commit(s3)
            yield self._s3_objects(s3)

    async def _paired(
        self,
        duration: float,
        baseline: Callable[[float], Awaitable[Measurement]],
        duro_side: Callable[[float], Awaitable[Measurement]],
    ) -> tuple[Measurement, Measurement]:
        """Alternate baseline and duro slices (B D D B B D D B …) so drift hits both alike."""
        base_parts: list[Measurement] = []
        duro_parts: list[Measurement] = []
        per = duration / PAIRED_SLICES
        for i in range(PAIRED_SLICES):
            if i % 2 == 0:
                base_parts.append(await baseline(per))
                duro_parts.append(await duro_side(per))
            else:
                duro_parts.append(await duro_side(per))
                base_parts.append(await baseline(per))
        return Measurement.combine(base_parts), Measurement.combine(duro_parts)

    def _target(
        self,
        description: str,
        spec: BackendSpec,
        result: Result,
        baseline_name: str,
        names: list[str],
        records: int,
        value: bytes,
        body: Callable[[list[Any], tuple[Any, ...]], Awaitable[Measurement]],
    ) -> Step:
        """A target run: *body* (given the stubs and the baseline key) measures both sides."""
        key: tuple[Any, ...] = ("target", description)
        self._baseline_names[key] = baseline_name

        async def run() -> None:
            self._expect_baseline(result, key)

            async def inner(_ns: Any, stubs: list[Any]) -> Measurement:
                return await body(stubs, key)

            await self._guard(result, self._with_app(spec, result.workload, names, records,
                                                     value, inner))

        return Step(description, run)

    def _sync_slices(self, store: RawStore, workload: Workload, values: list[bytes],
                     records: int) -> Callable[[float], Awaitable[Measurement]]:
        cfg = self.config
        stream = OpStream(workload, objects=1, records=records, seed=cfg.seed)

        async def slice_(seconds: float) -> Measurement:
            return run_sync_ops(store, stream, values=values, scan_length=cfg.scan_length,
                                obj_names=["o0"], duration=seconds, max_ops=cfg.max_ops)

        return slice_

    def _async_slices(self, pools: list[list[Op]], call: Callable[[int, Op], Awaitable[object]],
                      ops_per_call: int = 1) -> Callable[[float], Awaitable[Measurement]]:
        cfg = self.config

        async def slice_(seconds: float) -> Measurement:
            return await drive_async(pools, call, duration=seconds, max_ops=cfg.max_ops,
                                     ops_per_call=ops_per_call)

        return slice_

    def _cached_get(self, spec: BackendSpec) -> Step:
        cfg = self.config
        records = cfg.records
        keys = [key_name(i) for i in range(records)]
        value = payload(TARGET_VALUE)
        rounds = 20
        result = Result("cached-get", spec.label, 1, 1, TARGET_VALUE, mode="in-object",
                        note=f"{records * rounds} cached gets per stub call (timed outside "
                        "the call)")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            stub = stubs[0]
            await stub.read_loop(keys)  # warm the cache
            store = self._raw_store(spec, "cached-get")
            try:
                store.load("o0", records, value)
                position = [0]

                def one_get() -> object:
                    k = keys[position[0] % records]
                    position[0] += 1
                    return store.get("o0", k)

                async def base(seconds: float) -> Measurement:
                    return time_sync_loop(one_get, duration=seconds, max_ops=cfg.max_ops)

                duro_side = self._async_slices([[("get", 0, "")]],
                                               lambda _c, _op: stub.read_rounds(records, rounds),
                                               ops_per_call=records * rounds)
                self._baselines[key], m = await self._paired(cfg.target_duration, base,
                                                             duro_side)
                return m
            finally:
                self._discard(store)

        return self._target("cached-get sqlite (in-object)", spec, result,
                            "sqlite3 SELECT", ["o0"], records, value, body)

    def _stub_call(self) -> Step:
        cfg = self.config
        spec = BackendSpec.embedded("memory")
        result = Result("stub-call", spec.label, 1, 1, 0, note="noop(), no storage")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            from duro.bench.objects import PlainObject

            stub, plain = stubs[0], PlainObject()
            base = self._async_slices([[("get", 0, "")]], lambda _c, _op: plain.noop())
            duro_side = self._async_slices([[("get", 0, "")]], lambda _c, _op: stub.noop())
            self._baselines[key], m = await self._paired(cfg.target_duration, base, duro_side)
            return m

        return self._target("stub-call memory", spec, result, "plain async call",
                            ["o0"], 0, b"", body)

    def _group_commit(self, spec: BackendSpec, clients: int) -> Step:
        cfg = self.config
        records = 64
        values = payload_ring(TARGET_VALUE)
        result = Result("group-commit", spec.label, clients, 1, TARGET_VALUE,
                        note="durable read-modify-write, one object")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            store = self._raw_store(spec, "group-commit")
            try:
                store.load("o0", records, values[0])
                base = self._sync_slices(store, GROUP_COMMIT, values, records)
                pools = self._pools(GROUP_COMMIT, clients, 1, records)
                duro_side = self._async_slices(pools, self._dispatch(stubs, values, 0))
                self._baselines[key], m = await self._paired(cfg.target_duration, base,
                                                             duro_side)
                return m
            finally:
                self._discard(store)

        return self._target(f"group-commit {spec.label} clients={clients}", spec, result,
                            f"{_raw_name(spec)} txn/write", ["o0"], records,
                            values[0], body)

    def _lone_put(self, spec: BackendSpec) -> Step:
        cfg = self.config
        values = payload_ring(TARGET_VALUE)
        per_call = 20
        result = Result("lone-put", spec.label, 1, 1, TARGET_VALUE, mode="in-object",
                        note=f"await storage.put() one at a time, {per_call} per stub call; "
                        "baseline: the raw commit awaited through a loop-to-thread handoff")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            stub = stubs[0]
            store = self._raw_store(spec, "lone-put")
            handoff = ThreadHandoff()
            try:
                raw_i = [0]

                def one_put() -> None:
                    i = raw_i[0]
                    raw_i[0] += 1
                    store.put("o0", key_name(i % 1000), values[i % len(values)])

                base = self._async_slices([[("put", 0, "")]],
                                          lambda _c, _op: handoff.run(one_put))
                duro_i = [0]

                def call(_c: int, _op: Op) -> Awaitable[object]:
                    first = duro_i[0]
                    duro_i[0] += per_call
                    idx = range(first, first + per_call)
                    return stub.put_loop(  # type: ignore[no-any-return]
                        [key_name(i % 1000) for i in idx], [values[i % len(values)] for i in idx])

                duro_side = self._async_slices([[("put", 0, "")]], call, ops_per_call=per_call)
                self._baselines[key], m = await self._paired(cfg.target_duration, base,
                                                             duro_side)
                return m
            finally:
                handoff.close()
                self._discard(store)

        return self._target(f"lone-put {spec.label}", spec, result,
                            f"{_raw_name(spec)} txn/write via thread", ["o0"], 0, b"", body)

    def _stub_floor(self, clients: int) -> Step:
        """Stub calls against the floor design (:class:`~duro.bench.many.FloorStub`)."""
        cfg = self.config
        spec = BackendSpec.embedded("memory")
        result = Result("stub-floor", spec.label, clients, 1, 0,
                        note="noop() by value; baseline: one worker per object, one Future, "
                        "msgpack copy of arguments and result")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            from duro.bench.objects import PlainObject

            stub, floor = stubs[0], FloorStub(PlainObject())
            try:
                pools: list[list[Op]] = [[("get", 0, "")]] * clients
                base = self._async_slices(pools, lambda _c, _op: floor.call("noop"))
                duro_side = self._async_slices(pools, lambda _c, _op: stub.noop())
                self._baselines[key], m = await self._paired(cfg.target_duration, base,
                                                             duro_side)
                return m
            finally:
                floor.close()

        return self._target(f"stub-floor memory clients={clients}", spec, result,
                            "floor design", ["o0"], 0, b"", body)

    def _many_objects(self, spec: BackendSpec, n: int) -> Step:
        """64 callers over *n* objects: cold (first write to each) and warm durable puts."""
        cfg = self.config
        clients = 64
        values = payload_ring(TARGET_VALUE)
        cold = Result("many-objects-cold", spec.label, clients, n, TARGET_VALUE,
                      note="first durable put to each object (activation + lease + batch)")
        warm = Result("many-objects-warm", spec.label, clients, n, TARGET_VALUE,
                      note="durable puts to random resident objects")
        key: tuple[Any, ...] = ("many", spec.label, n)

        async def run() -> None:
            import duro
            from duro.bench.objects import BenchObject

            names = [f"o{i}" for i in range(n)]
            store = self._raw_store(spec, "many") if spec.has_baseline else None
            if store is not None:
                self._baseline_names[key] = f"{_raw_name(spec)} txn/write"
                self._expect_baseline(cold, key)
                self._expect_baseline(warm, key)
                stream = OpStream(WRITES, objects=n, records=1, seed=cfg.seed)

                def base() -> Measurement:
                    assert store is not None
                    return run_sync_ops(store, stream, values=values, scan_length=0,
                                        obj_names=names, duration=cfg.target_duration / 2,
                                        max_ops=cfg.max_ops)

            case_dir = self._case_dir("many")
            try:
                parts = [base()] if store is not None else []
                async with duro.App(backend=spec.case_url(case_dir)) as app:
                    ns = app.namespace(BenchObject, name=self._namespace())
                    stubs = [ns.get_by_name(f"m{i}") for i in range(n)]
                    got = await asyncio.wait_for(
                        many_objects(stubs, clients, values, cfg.target_duration,
                                     cfg.max_ops, cfg.seed), cfg.step_timeout)
                if store is not None:
                    parts.append(base())
                    self._baselines[key] = Measurement.combine(parts)
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the report
                cold.error = warm.error = f"{type(exc).__name__}: {exc}"[:500]
            else:
                cold.set_measurement(got[0])
                warm.set_measurement(got[1])
            finally:
                if store is not None:
                    self._discard(store)
                if spec.fresh and not cfg.keep_data:
                    shutil.rmtree(case_dir, ignore_errors=True)
            self.results.extend([cold, warm])

        return Step(f"many-objects {spec.label} objects={n}", run)

    def _resident_memory(self, spec: BackendSpec) -> Step:
        """RSS per resident object, and idle eviction while many new objects are touched."""
        cfg = self.config
        touched = TOUCHED_QUICK if cfg.quick else TOUCHED_FULL
        result = Result("idle-eviction", spec.label, 1, touched, 0, mode="objects/s")

        async def run() -> None:
            import duro
            from duro.bench.objects import BenchObject

            case_dir = self._case_dir("resident")
            try:
                async with duro.App(backend=spec.case_url(case_dir), idle_timeout=0.5,
                                    lease_ttl=10.0) as app:
                    ns = app.namespace(BenchObject, name=self._namespace())
                    got = await asyncio.wait_for(resident_memory(app, ns, touched),
                                                 cfg.step_timeout * 4)
                    bound = app.config.storage_limits.cache_bytes
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the report
                result.error = f"{type(exc).__name__}: {exc}"[:500]
            else:
                result.set_measurement(Measurement(int(got["touched"]),
                                                   got["touched"] / got["evictions_per_s"],
                                                   Histogram()))
                self._resident = dict(got, cache_bytes=float(bound))
                result.note = (
                    f"{got['kb_per_object']:.1f} KB heap per resident object; peak "
                    f"{got['peak_resident']:,.0f} resident, peak RSS {got['peak_rss_mb']:.0f} MB "
                    f"(base {got['base_rss_mb']:.0f} MB); ops/s = objects touched and evicted "
                    "per second (idle_timeout 0.5 s)")
            finally:
                if spec.fresh and not cfg.keep_data:
                    shutil.rmtree(case_dir, ignore_errors=True)
            self.results.append(result)

        return Step(f"idle-eviction {spec.label} objects={touched}", run)

    def _diskcache(self, spec: BackendSpec, clients: int) -> Step:
        cfg = self.config
        records = 1000
        values = payload_ring(TARGET_VALUE)
        result = Result("diskcache-set", spec.label, clients, 1, TARGET_VALUE,
                        note="durable put vs diskcache set, both synchronous=NORMAL")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            store = DiskCachePeer(self._raw_path(spec, "diskcache"))
            store.pad(PAD_COUNT, PAD_SIZE)
            try:
                store.load("o0", records, values[0])
                base = self._sync_slices(store, WRITES, values, records)
                pools = self._pools(WRITES, clients, 1, records)
                duro_side = self._async_slices(pools, self._dispatch(stubs, values, 0))
                self._baselines[key], m = await self._paired(cfg.target_duration, base,
                                                             duro_side)
                return m
            finally:
                store.close()
                remove_tree(store.path)

        return self._target(f"diskcache-set {spec.label} clients={clients}", spec, result,
                            "diskcache set", ["o0"], records, values[0], body)

    def _s3_group_commit(self, spec: BackendSpec) -> Step:
        cfg = self.config
        values = payload_ring(TARGET_VALUE)
        records = min(cfg.records, cfg.s3_records)
        duration = max(cfg.target_duration, S3_MIN_DURATION)
        result = Result("s3-group-commit", spec.label, 64, 1, TARGET_VALUE,
                        note="64 callers, durable puts, one object")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            store = self._raw_store(spec, "s3-group-commit")
            try:
                base = self._sync_slices(store, WRITES, values, records)
                pools = self._pools(WRITES, 64, 1, records)
                duro_side = self._async_slices(pools, self._dispatch(stubs, values, 0))
                self._baselines[key], m = await self._paired(duration, base, duro_side)
                return m
            finally:
                store.close()

        return self._target("s3-group-commit", spec, result, "boto3 PUT/write", ["o0"],
                            0, b"", body)

    def _s3_objects(self, spec: BackendSpec, n: int = 32) -> Step:
        cfg = self.config
        values = payload_ring(TARGET_VALUE)
        records = min(cfg.records, cfg.s3_records)
        duration = max(cfg.target_duration, S3_MIN_DURATION)
        names = [f"o{i}" for i in range(n)]
        result = Result("s3-objects", spec.label, n, n, TARGET_VALUE,
                        note="one caller per object, durable puts")

        async def body(stubs: list[Any], key: tuple[Any, ...]) -> Measurement:
            pools = [[(op[0], i, op[2]) for op in pool]
                     for i, pool in enumerate(self._pools(WRITES, n, 1, records))]
            call = self._dispatch(stubs, values, 0)
            base = self._async_slices(pools[:1], call)
            duro_side = self._async_slices(pools, call)
            self._baselines[key], m = await self._paired(duration, base, duro_side)
            return m

        return self._target(f"s3-objects {n}", spec, result, "duro s3 1 object",
                            names, 0, b"", body)

    # ---------------------------------------------------------------- putting it together

    def plan(self) -> list[Step]:
        """Every step of this run, in order."""
        steps: list[Step] = []
        if self.config.targets:
            steps.extend(self._target_steps())
        steps.extend(self._sweep_steps())
        return steps

    def _targets(self) -> list[Target]:
        def row(workload: str, backend: str, clients: int | None = None) -> Result | None:
            for r in self.results:
                if r.workload == workload and r.backend == backend and (
                        clients is None or r.clients == clients) and r.error is None:
                    return r
            return None

        def ratio(r: Result | None) -> float | None:
            return None if r is None else r.ratio

        out: list[Target] = []
        if not self.config.targets:
            return out
        r = row("cached-get", "sqlite")
        out.append(Target("cached-get", "cached get (in-object) vs sqlite3 point SELECT",
                          "ratio", ratio(r), ">=", 10.0))
        r = row("stub-call", "memory")
        note = None
        if r is not None and r.baseline_ops_per_s:
            note = (f"plain async call {r.baseline_ops_per_s:,.0f}/s; "
                    f"ratio {r.ratio or 0:.3f}")
        out.append(Target("stub-call", "stub calls/s, one object, in-process, no storage",
                          "calls/s", None if r is None else r.ops_per_s, ">=", 20_000.0,
                          note=note))
        for backend, needed in (("sqlite", 5.0), ("lmdb", 10.0)):  # one row per backend
            r = row("group-commit", backend)
            out.append(Target(f"group-commit-{backend}-{needed:g}x",
                              f"{backend} sync=full: 64 callers on one object vs raw "
                              "commit per write", "ratio", ratio(r), ">=", needed))
        for backend in ("sqlite", "lmdb"):
            r = row("lone-put", backend)
            time_ratio = None if r is None or not r.ratio else round(1.0 / r.ratio, 4)
            out.append(Target(f"lone-put-{backend}",
                              f"{backend} sync=full: lone awaited put vs raw commit through "
                              "the same thread handoff", "time ratio (duro/raw)", time_ratio,
                              "<=", 1.2))
        for clients in (1, 64):
            r = row("stub-floor", "memory", clients)
            time_ratio = None if r is None or not r.ratio else round(1.0 / r.ratio, 4)
            out.append(Target(f"stub-floor-{clients}",
                              f"stub call, {clients} caller(s), vs the floor design",
                              "time ratio (duro/floor)", time_ratio, "<=", 1.5))
        for phase, needed in (("warm", 8.0), ("cold", 5.0)):
            for backend in ("sqlite", "lmdb"):
                r = next((x for x in self.results if x.workload == f"many-objects-{phase}"
                          and x.backend == backend and x.objects == 1000
                          and x.error is None), None)
                out.append(Target(f"many-objects-{phase}-{backend}",
                                  f"{backend} sync=full: 64 callers over 1,000 objects, "
                                  f"{phase}, vs raw commit per write", "ratio", ratio(r), ">=",
                                  needed))
        res = self._resident
        if res is not None:
            growth = res["peak_rss_mb"] * 2**20 - res["base_rss_mb"] * 2**20
            bound = res["peak_resident"] * res["cache_bytes"]
            out.append(Target(
                "resident-memory",
                f"{res['touched']:,.0f} objects touched: RSS growth vs resident x cache_bytes",
                "RSS growth / bound",
                round(growth / bound, 6) if bound else None, "<=", 1.0,
                note=f"{res['kb_per_object']:.1f} KB per resident object; "
                     f"peak {res['peak_resident']:,.0f} resident"))
        r = row("diskcache-set", "sqlite sync=normal", 64)
        out.append(Target("diskcache", "sqlite sync=normal, 64 callers vs diskcache set",
                          "ratio", ratio(r), ">=", 3.0))
        if any(s.kind == "s3" for s in self.specs):
            r = row("s3-group-commit", "s3")
            latency = (f" ({self.config.s3_latency * 1000:g} ms added latency)"
                       if self.config.s3 else "")
            out.append(Target("s3-group-commit", f"s3: 64 callers vs one PUT per write{latency}",
                              "ratio", ratio(r), ">=", 20.0))
            r = row("s3-objects", "s3")
            out.append(Target("s3-objects", "s3: 32 objects vs 1 object (1 caller each)",
                              "ratio", ratio(r), ">=", 8.0))
        return out

    async def run(self, on_step: Callable[[int, int, str], None] | None = None) -> Report:
        """Run every step; *on_step(index, total, description)* is called before each."""
        config_json = self.config.to_json()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fs = filesystem_type(self.run_dir)
        config_json["data_filesystem"] = fs
        if fs in ("tmpfs", "ramfs"):
            config_json["warning"] = "data dir is on tmpfs: durable figures are not meaningful"
        config_json["backends"] = [
            {"label": s.label, "kind": s.kind, "sync": s.sync, "given": not s.fresh}
            for s in self.specs
        ]
        try:
            if any(s.kind == "s3" and s.url is None for s in self.specs):
                self._start_moto()
            steps = self.plan()
            for i, step in enumerate(steps):
                if on_step is not None:
                    on_step(i, len(steps), step.description)
                await step.run()
            if on_step is not None:
                on_step(len(steps), len(steps), "done")
        finally:
            if not self.config.keep_data:
                for url in self.config.backends:  # a store the user named: leave it as it was
                    await drop_namespaces(url, self._made)
            self._cleanup()
        for result, key in self._pending:
            m = self._baselines.get(key)
            name = self._baseline_names.get(key, "baseline")
            if m is not None and m.ops:
                result.set_baseline(name, m)
            else:
                result.note = ((result.note + "; ") if result.note else "") + \
                    f"baseline {name} failed"
        return Report(machine=machine_info(), versions=versions(), config=config_json,
                      results=self.results, targets=self._targets())


def _raw_name(spec: BackendSpec) -> str:
    base = {"sqlite": "sqlite3", "lmdb": "lmdb", "s3": "boto3"}.get(spec.kind, spec.kind)
    return f"{base} {spec.sync}" if spec.kind in ("sqlite", "lmdb") else base


def run_bench(config: BenchConfig,
              on_step: Callable[[int, int, str], None] | None = None) -> Report:
    """Run a whole benchmark in a new event loop (the synchronous entry point)."""
    return asyncio.run(Runner(config).run(on_step))
