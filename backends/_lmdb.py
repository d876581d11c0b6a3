"""``lmdb://``: one LMDB environment (py-lmdb) shared by the processes of one host.

URLs: ``lmdb:///rel/dir`` (relative to the working directory) or ``lmdb:////abs/dir``; the
directory is created if needed and holds LMDB's ``data.mdb`` and ``lock.mdb``.

Options (anything else is a :class:`~duro.errors.ConfigError`):

``map_size``
    Initial map size, e.g. ``64MiB`` or ``1GiB`` (default ``1GiB``). It is only a starting
    point: when a write does not fit, the map doubles and the write is retried, invisibly.
``sync``
    ``full`` (default): every acknowledged commit is flushed, data and meta page (LMDB
    ``sync=True``). ``normal``: one flush per commit without the meta page (``metasync=False``):
    an OS crash may undo the last transaction, but never corrupts. ``off``: no flush
    (``sync=False``): an OS crash may lose recent transactions; a process crash loses nothing.
``max_readers``
    Reader-slot table size (default 126), shared by every process and thread reading at once.
    Fixed by the first process that opens the environment.

Layout: fixed named sub-databases only — ``duro.meta`` (storage format version),
``duro.objects`` (lease, epoch, registry record per object), ``duro.kv`` (rows under a 40-byte
object prefix, see :mod:`duro.backends._lmdb_keys` for keys longer than LMDB's 511 bytes),
``duro.alarms`` (index ``time ‖ object``, so due alarms are found without scanning objects) and
``duro.namespaces`` (live-object count per namespace). An environment created by another
program, or by a newer duro, is refused rather than touched.

Concurrency: write transactions run on one writer thread per environment and process; callers
hand over work and wait (queued commits share one LMDB transaction, each in its own nested
transaction, so they also share one flush). Every write checks the object's fencing epoch in
the same transaction. Reads use short read transactions on the calling thread. Other processes
may open the same directory; slots of dead readers are reclaimed on open, every second by each
process's writer thread, and whenever the table is full (py-lmdb needs a free slot to open an
environment at all, so an open waits up to 5 s for live processes to free dead slots).

Fork: an environment is never used across ``fork()``; a backend inherited by a child raises
:class:`~duro.errors.BackendError`. py-lmdb cannot reopen, in a forked child, an environment
its parent had open, so open ``lmdb://`` backends after forking, or start worker processes
with the ``spawn`` or ``forkserver`` method.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar
from urllib.parse import unquote

import lmdb
import msgpack

from duro.backends import _lmdb_keys as lk
from duro.backends.base import (
    FORMAT_VERSION,
    UNCHANGED,
    AcquireOp,
    Backend,
    BackendURL,
    Batch,
    CommitOp,
    Lease,
    LeaseHeld,
    Loaded,
    ObjectInfo,
    ObjectRef,
    WriteOp,
    check_format_version,
)
from duro.errors import BackendError, BackendUnavailable, ConfigError, DuroError, Fenced

__all__ = ["LMDBBackend"]

T = TypeVar("T")

OPTIONS: Final = ("map_size", "max_readers", "sync")
DEFAULT_MAP_SIZE: Final = 1 << 30
_MIN_MAP_SIZE: Final = 1 << 16
_DB_NAMES: Final = (b"duro.meta", b"duro.objects", b"duro.kv", b"duro.alarms", b"duro.namespaces")
_READER_CHECK_EVERY: Final = 1.0
_OPEN_WAIT: Final = 5.0
_MAX_GROUP: Final = 256
_MAX_GROWS: Final = 48


# -- records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Rec:
    """One object's record in ``duro.objects``."""

    namespace: str
    name: str | None = None
    epoch: int = 0
    owner: str | None = None
    address: str | None = None
    until: float = 0.0
    last_active: float | None = None
    alarm: float | None = None
    deleted: bool = False
    size: int = 0
    keys: int = 0

    def pack(self) -> bytes:
        return msgpack.packb([self.namespace, self.name, self.epoch, self.owner, self.address,
                              self.until, self.last_active, self.alarm, self.deleted,
                              self.size, self.keys])

    @classmethod
    def unpack(cls, data: bytes) -> _Rec:
        return cls(*msgpack.unpackb(data))

    def lease(self) -> Lease:
        return Lease(self.epoch, self.owner, self.address, self.until)


def _fenced(ref: ObjectRef, rec: _Rec | None, epoch: int) -> Fenced:
    current = rec.epoch if rec is not None else 0
    return Fenced(f"object {ref.id[:12]}… is now at epoch {current}; ours was {epoch}")


# -- the shared environment -----------------------------------------------------------------


class _Call:
    """One unit of work for the writer thread; ``done`` is released when it has run."""

    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[lmdb.Transaction[bytes]], object]) -> None:
        self.fn = fn
        self.done = threading.Lock()
        self.done.acquire()
        self.result: object = None
        self.error: BaseException | None = None


def _describe(exc: lmdb.Error) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Resized(Exception):
    """Another process grew the map while this one was opening the environment."""


class _ReadersFull(Exception):
    """The reader table was full while this process was opening the environment."""


class _Env:
    """One open LMDB environment in this process: handles, writer thread, resize gate."""

    def __init__(self, path: str, map_size: int, sync: str, max_readers: int) -> None:
        self.path = path
        self.options = (sync, max_readers)
        self.pid = _pid
        self.refs = 0
        self.closed = False
        try:
            self.env = self._open_env(map_size, sync, max_readers)
        except lmdb.ReadersFullError as exc:
            raise BackendUnavailable(
                f"cannot open the LMDB environment in {path}: all its reader slots are taken "
                f"(by live readers, or by killed processes that another process using it frees "
                f"within {_READER_CHECK_EVERY:g} s); raise max_readers or retry",
                orig=exc) from exc
        except lmdb.InvalidError as exc:
            raise BackendError(
                f"{path}/data.mdb is not a valid LMDB data file (corrupt, truncated, or not "
                f"LMDB at all); restore it from a backup or point lmdb:// at another directory",
                orig=exc) from exc
        except (lmdb.CorruptedError, lmdb.PanicError, lmdb.VersionMismatchError) as exc:
            raise BackendError(f"the LMDB environment in {path} is unusable: {_describe(exc)}",
                               orig=exc) from exc
        except lmdb.Error as exc:
            if "already open" in str(exc):
                raise ConfigError(
                    f"the LMDB environment in {path} is already open in this process outside "
                    "duro, or was open in the process this one was forked from; LMDB cannot "
                    "open one environment twice in a process: open lmdb:// backends only "
                    "after fork (or use the 'spawn' or 'forkserver' start method)",
                    orig=exc) from exc
            raise ConfigError(f"cannot open an LMDB environment in {path}: {exc} (is the "
                              f"directory writable and on a local file system?)",
                              orig=exc) from exc
        try:
            self.env.reader_check()  # free slots of dead processes before our first read
            self._open_dbs()
        except lmdb.Error as exc:
            self.env.close()
            raise BackendError(f"cannot open the LMDB environment in {path}: {_describe(exc)}",
                               orig=exc) from exc
        except BaseException:
            self.env.close()
            raise
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._resizing = False
        self.grown = 0  # times this process doubled the map
        self.adopted = 0  # times it adopted a map grown by another process
        self._last_reader_check = time.monotonic()
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._submit = threading.Lock()
        self._writer_ident = 0
        self._thread = threading.Thread(target=self._run, name=f"duro-lmdb-writer:{path}",
                                        daemon=True)
        self._thread.start()

    # -- opening ---------------------------------------------------------------------------

    def _open_env(self, map_size: int, sync: str, max_readers: int) -> lmdb.Environment:
        # py-lmdb takes a reader slot while opening, so a table full of dead processes' slots
        # blocks the open itself; live duro processes free those within _READER_CHECK_EVERY.
        deadline = time.monotonic() + _OPEN_WAIT
        delay = 0.02
        while True:
            try:
                return lmdb.open(
                    self.path, map_size=map_size, subdir=True, max_dbs=len(_DB_NAMES) + 2,
                    max_readers=max_readers, sync=sync != "off", metasync=sync == "full",
                    lock=True, create=True,
                )
            except lmdb.ReadersFullError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)


    def _open_dbs(self) -> None:
        for _ in range(8):
            try:
                self._open_dbs_once()
                return
            except _Resized:
                self.env.set_mapsize(0)  # another process grew the map; nothing is open yet
            except _ReadersFull:
                self.env.reader_check()
                time.sleep(0.01)
        raise BackendUnavailable(
            f"cannot open the LMDB environment in {self.path}: its map kept changing size or "
            f"all {self.env.max_readers()} reader slots stayed in use (raise max_readers); retry")

    def _open_dbs_once(self) -> None:
        if self.env.max_key_size() < lk.LONG_LEN:
            raise ConfigError(f"this LMDB build allows keys of {self.env.max_key_size()} bytes; "
                              f"duro needs {lk.LONG_LEN}")
        try:
            # (``del txn``: py-lmdb frees a reader slot only when the object goes away.)
            with self.env.begin() as txn:
                names = [k for k, _ in txn.cursor()]
            del txn
            if not names:
                with self.env.begin(write=True) as wtxn:
                    names = [k for k, _ in wtxn.cursor()]
                    if not names:
                        self._create(wtxn)
                        names = list(_DB_NAMES)
                del wtxn
            foreign = sorted(n for n in names if not n.startswith(b"duro."))
            if foreign or b"duro.meta" not in names:
                shown = ", ".join(repr(n)[2:-1] for n in foreign[:5]) or "no duro.meta"
                raise ConfigError(
                    f"{self.path} holds an LMDB environment that duro did not create ({shown}); "
                    "refusing to touch it: point lmdb:// at an empty or duro-owned directory")
            # Handles opened in a read transaction die with it in py-lmdb: open them outside.
            self.meta = self.env.open_db(b"duro.meta", create=False)
            with self.env.begin() as txn:
                fmt = txn.get(b"format", db=self.meta)
                head = txn.get(b"key_head", db=self.meta)
            del txn
            if fmt is None or not fmt.isdigit():
                raise ConfigError(f"{self.path} holds an LMDB environment without a duro format "
                                  "record; refusing to touch it")
            check_format_version(int(fmt), self.path)
            missing = sorted(set(_DB_NAMES) - set(names))
            if missing or head != str(lk.HEAD_LEN).encode():
                raise ConfigError(f"{self.path} holds an incomplete or unknown duro layout "
                                  f"(missing {missing}, key_head={head!r}); refusing to touch it")
            dbs = [self.env.open_db(n, create=False) for n in _DB_NAMES[1:]]
            self.objects, self.kv, self.alarms, self.nss = dbs
        except DuroError:
            raise
        except lmdb.MapResizedError as exc:
            raise _Resized from exc
        except lmdb.ReadersFullError as exc:
            raise _ReadersFull from exc
        except lmdb.Error as exc:
            raise ConfigError(f"{self.path} holds an LMDB environment duro cannot use "
                              f"({_describe(exc)}); refusing to touch it", orig=exc) from exc

    def _create(self, txn: lmdb.Transaction[bytes]) -> None:
        dbs = [self.env.open_db(n, txn=txn, create=True) for n in _DB_NAMES]
        txn.put(b"format", str(FORMAT_VERSION).encode(), db=dbs[0])
        txn.put(b"key_head", str(lk.HEAD_LEN).encode(), db=dbs[0])
        txn.put(b"created_by", b"duro", db=dbs[0])

    # -- fork and lifetime -----------------------------------------------------------------

    def check_usable(self) -> None:
        if self.pid != _pid:
            raise BackendError(
                f"this lmdb:// backend ({self.path}) was opened in process {self.pid} and "
                f"cannot be used after fork() (this is process {os.getpid()}): open lmdb:// "
                "backends only after fork(), or start processes with the 'spawn' or "
                "'forkserver' method")
        if self.closed:
            raise BackendError(f"the lmdb:// backend for {self.path} is closed")

    def shutdown(self) -> None:
        if self.pid != _pid:  # inherited across fork: its locks may be held by dead threads
            if not self.closed:
                self.closed = True
                _inherited.append(self.env)  # never close it here, never let it be collected
            return
        with self._submit:
            if self.closed:
                return
            self.closed = True
            self._queue.put(None)  # after every call already queued; none can follow
        self._thread.join()
        with contextlib.suppress(lmdb.Error):
            if self.options[0] != "full":
                self.env.sync(True)
        self.env.close()

    # -- resize gate: set_mapsize needs every transaction of this process closed -------------

    def _enter(self) -> None:
        with self._lock:  # the lock's C-level context manager: cheaper than the Condition's
            while self._resizing:
                self._cond.wait()
            self._active += 1

    def _exit(self) -> None:
        with self._lock:
            self._active -= 1
            if self._resizing and not self._active:
                self._cond.notify_all()

    def _resize(self, grow_from: int | None) -> None:
        """Grow the map (doubling *grow_from*), or adopt another process's size if None."""
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            if grow_from is None:
                self.env.set_mapsize(0)
                self.adopted += 1
            else:
                current = self.env.info()["map_size"]
                if current <= grow_from:
                    self.env.set_mapsize(max(current * 2, _MIN_MAP_SIZE))
                    self.grown += 1
        except lmdb.Error as exc:
            raise BackendError(f"cannot resize the LMDB map of {self.path}: {_describe(exc)}",
                               orig=exc) from exc
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()

    def reader_check(self) -> int:
        self._last_reader_check = time.monotonic()
        try:
            return self.env.reader_check()
        except lmdb.Error as exc:
            raise BackendError(f"LMDB reader check failed: {_describe(exc)}", orig=exc) from exc

    # -- reads -----------------------------------------------------------------------------

    def read(self, fn: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        """Run *fn* in a short read transaction on this thread."""
        self.check_usable()
        for attempt in range(4):
            self._enter()
            resize = check = False
            try:
                return self._read_once(fn)
            except lmdb.MapResizedError:
                resize = True
            except lmdb.ReadersFullError as exc:
                if attempt >= 2:
                    raise BackendUnavailable(
                        f"all {self.env.max_readers()} LMDB reader slots of {self.path} are in "
                        "use; raise the max_readers URL option", orig=exc) from exc
                check = True
            except lmdb.Error as exc:
                raise BackendError(f"LMDB read failed in {self.path}: {_describe(exc)}",
                                   orig=exc) from exc
            finally:
                self._exit()
            if resize:
                self._resize(None)
            if check:
                self.reader_check()
        raise BackendUnavailable(f"LMDB environment {self.path} kept changing size; retry")

    def _read_once(self, fn: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        # A function of its own: py-lmdb frees the reader slot only when ``txn`` goes away.
        txn = self.env.begin()
        try:
            return fn(txn)
        finally:
            txn.abort()

    # -- writes ----------------------------------------------------------------------------

    def write(self, fn: Callable[[lmdb.Transaction[bytes]], T]) -> T:
        """Run *fn* in a write transaction on the writer thread, committed durably."""
        self.check_usable()
        call = _Call(fn)
        if threading.get_ident() == self._writer_ident:
            self._execute([call])
        else:
            with self._submit:
                self.check_usable()  # closed meanwhile? then the writer is gone
                self._queue.put(call)
            call.done.acquire()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def write_many(self, fns: Sequence[Callable[[lmdb.Transaction[bytes]], object]]) -> list[_Call]:
        """Queue every fn at once (they share the writer's next transaction); wait for all.

        Each ran in its own nested transaction: read ``result`` / ``error`` of each call.
        """
        self.check_usable()
        calls = [_Call(fn) for fn in fns]
        if threading.get_ident() == self._writer_ident:
            self._execute(calls)
            return calls
        with self._submit:
            self.check_usable()
            for call in calls:
                self._queue.put(call)
        for call in calls:
            call.done.acquire()
        return calls

    def _run(self) -> None:
        self._writer_ident = threading.get_ident()
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=_READER_CHECK_EVERY)
            except queue.Empty:  # idle: free the slots of dead readers now and then
                with contextlib.suppress(DuroError):
                    self.reader_check()
                continue
            if first is None:
                break
            calls = [first]
            while len(calls) < _MAX_GROUP:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                calls.append(nxt)
            try:
                self._execute(calls)
            except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting
                for c in calls:
                    if c.error is None:
                        c.error = BackendError(f"LMDB writer failed: {exc!r}", orig=exc)
            for c in calls:
                c.done.release()
            if time.monotonic() - self._last_reader_check > _READER_CHECK_EVERY:
                with contextlib.suppress(DuroError):
                    self.reader_check()

    def _execute(self, calls: list[_Call]) -> None:
        for _ in range(_MAX_GROWS):
            grow: int | None = None
            resize = False
            self._enter()
            try:
                self._attempt(calls)
                return
            except lmdb.MapFullError:
                grow = self.env.info()["map_size"]
            except lmdb.MapResizedError:
                resize = True
            except lmdb.ReadersFullError:
                pass
            finally:
                self._exit()
            try:
                if grow is not None:
                    self._resize(grow)
                elif resize:
                    self._resize(None)
                else:
                    self.reader_check()
            except DuroError as exc:
                for c in calls:
                    c.error = exc
                return
        for c in calls:
            c.error = BackendError(f"the LMDB map of {self.path} cannot grow enough")

    def _attempt(self, calls: list[_Call]) -> None:
        """One try at running *calls* in one transaction; lmdb map errors propagate."""
        for c in calls:
            c.error = None
            c.result = None
        try:
            txn = self.env.begin(write=True)
        except (lmdb.MapFullError, lmdb.MapResizedError, lmdb.ReadersFullError):
            raise
        except lmdb.Error as exc:
            for c in calls:
                c.error = BackendError(f"cannot begin an LMDB write transaction in {self.path}: "
                                       f"{_describe(exc)}", orig=exc)
            return
        try:
            if len(calls) == 1:
                self._run_call(calls[0], txn)
                if calls[0].error is not None:
                    txn.abort()
                    return
            else:
                for c in calls:
                    child = self.env.begin(write=True, parent=txn)
                    self._run_call(c, child)
                    if c.error is None:
                        child.commit()
                    else:
                        child.abort()
            try:
                txn.commit()
            except lmdb.MapFullError:
                raise
            except lmdb.Error as exc:
                for c in calls:
                    if c.error is None:
                        c.error = BackendUnavailable(
                            f"LMDB commit in {self.path} failed, outcome unknown: "
                            f"{_describe(exc)}", orig=exc)
        except BaseException:
            with contextlib.suppress(lmdb.Error):
                txn.abort()
            raise

    @staticmethod
    def _run_call(call: _Call, txn: lmdb.Transaction[bytes]) -> None:
        try:
            call.result = call.fn(txn)
        except (lmdb.MapFullError, lmdb.MapResizedError):
            raise
        except lmdb.Error as exc:
            call.error = BackendError(f"LMDB write failed: {_describe(exc)}", orig=exc)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            call.error = exc


# -- process-wide registry: one _Env per directory ------------------------------------------

_envs: dict[str, _Env] = {}
_envs_lock = threading.Lock()
_inherited: list[lmdb.Environment] = []


_pid = os.getpid()


def _after_fork_in_child() -> None:
    # Environments opened by the parent stay referenced (never closed) and unused here.
    global _envs_lock, _pid
    _pid = os.getpid()
    _envs_lock = threading.Lock()
    _inherited.extend(e.env for e in _envs.values())
    _envs.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve_path(url: BackendURL) -> str:
    if url.netloc:
        raise ConfigError(
            f"lmdb URLs name a directory, not a host: use lmdb:///relative/dir or "
            f"lmdb:////absolute/dir, not {url.raw!r:.200}")
    path = unquote(url.path)
    if not path:
        raise ConfigError("an lmdb URL needs a directory: lmdb:///relative/dir or "
                          "lmdb:////absolute/dir")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"lmdb:// path {path} is a file, not a directory: LMDB keeps "
                          "data.mdb and lock.mdb in a directory of their own")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the lmdb:// directory {path}: {exc.strerror or exc}",
                          orig=exc) from exc
    if not os.access(path, os.W_OK):
        raise ConfigError(f"the lmdb:// directory {path} is not writable")
    return os.path.realpath(path)


# -- the backend ----------------------------------------------------------------------------


class LMDBBackend(Backend):
    """Durable objects in one LMDB environment; see the module docstring for URL options."""

    scheme = "lmdb"
    group_commit: ClassVar[bool] = True
    persistent: ClassVar[bool] = True
    multi_process: ClassVar[bool] = True
    multi_host: ClassVar[bool] = False

    def __init__(self, url: BackendURL, env: _Env) -> None:
        self.url = url
        self._env = env
        self._closed = False

    @classmethod
    def from_url(cls, url: BackendURL) -> LMDBBackend:
        """Open (creating if needed) the environment in the URL's directory."""
        url.check_options(OPTIONS)
        sync = url.sync_level()
        map_size = int(url.number("map_size", DEFAULT_MAP_SIZE, minimum=_MIN_MAP_SIZE))
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        map_size = -(-map_size // page) * page
        readers = url.number("max_readers", 126, minimum=1)
        if readers != int(readers) or readers > 1 << 20:
            raise ConfigError(f"lmdb URL option max_readers={readers} must be a whole number "
                              "between 1 and 1048576")
        path = _resolve_path(url)
        with _envs_lock:
            env = _envs.get(path)
            if env is not None and env.options != (sync, int(readers)):
                raise ConfigError(
                    f"{path} is already open in this process with sync={env.options[0]}, "
                    f"max_readers={env.options[1]}; open it with the same options")
            if env is None:
                env = _envs[path] = _Env(path, map_size, sync, int(readers))
            else:
                env.reader_check()
            env.refs += 1
        return cls(url, env)

    # -- helpers -----------------------------------------------------------------------------

    def _use(self) -> _Env:
        if self._closed:
            raise BackendError(f"this lmdb:// backend ({self._env.path}) is closed")
        return self._env

    def _objects_rec(self, txn: lmdb.Transaction[bytes], prefix: bytes,
                     ref: ObjectRef) -> _Rec | None:
        raw = txn.get(prefix, db=self._env.objects)
        if raw is None:
            return None
        rec = _Rec.unpack(raw)
        if rec.namespace != ref.namespace:
            raise BackendError(f"namespaces {rec.namespace!r} and {ref.namespace!r} share an "
                               "8-byte hash; rename one of them")
        return rec

    def _checked(self, txn: lmdb.Transaction[bytes], prefix: bytes, ref: ObjectRef,
                 epoch: int) -> _Rec:
        rec = self._objects_rec(txn, prefix, ref)
        if rec is None or rec.epoch != epoch:
            raise _fenced(ref, rec, epoch)
        return rec

    def _set_alarm(self, txn: lmdb.Transaction[bytes], prefix: bytes, ref: ObjectRef,
                   rec: _Rec, at: float | None) -> None:
        if rec.alarm is not None:
            txn.delete(lk.encode_time(rec.alarm) + prefix, db=self._env.alarms)
        rec.alarm = at
        if at is not None:
            txn.put(lk.encode_time(at) + prefix, ref.namespace.encode(), db=self._env.alarms)

    def _count_namespace(self, txn: lmdb.Transaction[bytes], namespace: str, delta: int) -> None:
        key = lk.namespace_hash(namespace)
        raw = txn.get(key, db=self._env.nss)
        name, count = msgpack.unpackb(raw) if raw is not None else (namespace, 0)
        if name != namespace:
            raise BackendError(f"namespaces {name!r} and {namespace!r} share an 8-byte hash; "
                               "rename one of them")
        txn.put(key, msgpack.packb([namespace, max(0, count + delta)]), db=self._env.nss)

    # -- leases ------------------------------------------------------------------------------

    def acquire(
        self,
        ref: ObjectRef,
        *,
        owner: str,
        address: str | None,
        now: float,
        until: float,
        name: str | None = None,
    ) -> Lease:
        """Take ownership under a new epoch (see :meth:`Backend.acquire`)."""
        lease = self._use().write(self._acquire_fn(ref, owner, address, now, until, name, None))
        assert isinstance(lease, Lease)
        return lease

    def _acquire_fn(self, ref: ObjectRef, owner: str, address: str | None, now: float,
                    until: float, name: str | None, load: int | None
                    ) -> Callable[[lmdb.Transaction[bytes]], Lease | Loaded]:
        """The write-transaction body of an acquire; with *load*, also read the alarm and
        the first *load* rows after the epoch bump, in the same transaction."""
        prefix = lk.object_prefix(ref)

        def fn(txn: lmdb.Transaction[bytes]) -> Lease | Loaded:
            rec = self._objects_rec(txn, prefix, ref)
            if rec is not None and rec.owner is not None and rec.owner != owner \
                    and rec.until > now:
                raise LeaseHeld(rec.lease())
            if rec is None or rec.deleted:
                self._count_namespace(txn, ref.namespace, +1)
            if rec is None:
                rec = _Rec(ref.namespace)
            rec.epoch += 1
            rec.owner, rec.address, rec.until, rec.deleted = owner, address, until, False
            if name is not None:
                rec.name = name
            txn.put(prefix, rec.pack(), db=self._env.objects)
            if load is None:
                return rec.lease()
            rows = lk.scan(txn, self._env.kv, prefix, None, None, reverse=False, limit=load) \
                if load > 0 else []
            return Loaded(rec.lease(), rec.alarm, rows)

        return fn

    def renew(self, ref: ObjectRef, epoch: int, until: float) -> None:
        """Extend the lease; :class:`Fenced` if *epoch* is stale."""
        prefix = lk.object_prefix(ref)

        def fn(txn: lmdb.Transaction[bytes]) -> None:
            rec = self._checked(txn, prefix, ref, epoch)
            rec.until = until
            txn.put(prefix, rec.pack(), db=self._env.objects)

        self._use().write(fn)

    def release(self, ref: ObjectRef, epoch: int) -> None:
        """Give the lease up if *epoch* is still current."""
        self._use().write(self._release_fn(ref, epoch))

    def _release_fn(self, ref: ObjectRef,
                    epoch: int) -> Callable[[lmdb.Transaction[bytes]], None]:
        prefix = lk.object_prefix(ref)

        def fn(txn: lmdb.Transaction[bytes]) -> None:
            rec = self._objects_rec(txn, prefix, ref)
            if rec is not None and rec.epoch == epoch:
                rec.owner, rec.address, rec.until = None, None, 0.0
                txn.put(prefix, rec.pack(), db=self._env.objects)

        return fn

    def read_lease(self, ref: ObjectRef) -> Lease | None:
        """The lease record, or ``None`` if the object was never owned."""
        prefix = lk.object_prefix(ref)

        def fn(txn: lmdb.Transaction[bytes]) -> Lease | None:
            rec = self._objects_rec(txn, prefix, ref)
            return rec.lease() if rec is not None and rec.epoch else None

        return self._use().read(fn)

    # -- reads -------------------------------------------------------------------------------

    def get_many(self, ref: ObjectRef, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist."""
        prefix = lk.object_prefix(ref)
        db = self._env.kv

        def fn(txn: lmdb.Transaction[bytes]) -> dict[bytes, bytes]:
            out: dict[bytes, bytes] = {}
            for k in keys:
                v = lk.get_value(txn, db, prefix, k)
                if v is not None:
                    out[k] = v
            return out

        return self._use().read(fn)

    def scan(
        self,
        ref: ObjectRef,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Rows with ``lo <= key < hi`` in byte order, or reversed."""
        prefix = lk.object_prefix(ref)
        db = self._env.kv
        return self._use().read(
            lambda txn: lk.scan(txn, db, prefix, lo, hi, reverse=reverse, limit=limit))

    def get_alarm(self, ref: ObjectRef) -> float | None:
        """The alarm time, or ``None``."""
        prefix = lk.object_prefix(ref)

        def fn(txn: lmdb.Transaction[bytes]) -> float | None:
            rec = self._objects_rec(txn, prefix, ref)
            return rec.alarm if rec is not None else None

        return self._use().read(fn)

    # -- writes ------------------------------------------------------------------------------

    def commit(self, ref: ObjectRef, epoch: int, batch: Batch) -> None:
        """Apply *batch* atomically with the epoch check (see :meth:`Backend.commit`)."""
        self._use().write(self._commit_fn(ref, epoch, batch, False))

    def commit_many(self, ops: Sequence[WriteOp]) -> list[object]:
        """Hand every op to the writer thread at once: one LMDB transaction, one flush.

        Each op runs in its own nested transaction of the shared one, checking its own epoch:
        a fenced op is aborted alone (its error is its result) and the others commit.
        """
        env = self._use()
        skip = self._mutant_group_skip_fence
        fns: list[Callable[[lmdb.Transaction[bytes]], object]] = []
        for op in ops:
            if isinstance(op, CommitOp):
                fns.append(self._commit_fn(op.ref, op.epoch, op.batch, skip))
            elif isinstance(op, AcquireOp):
                fns.append(self._acquire_fn(op.ref, op.owner, op.address, op.now, op.until,
                                            op.name, op.load))
            else:
                fns.append(self._release_fn(op.ref, op.epoch))
        return [c.error if c.error is not None else c.result for c in env.write_many(fns)]

    def _commit_fn(self, ref: ObjectRef, epoch: int, batch: Batch,
                   skip_fence: bool) -> Callable[[lmdb.Transaction[bytes]], None]:
        """The write-transaction body of a commit (*skip_fence*: the test-only mutant)."""
        prefix = lk.object_prefix(ref)
        env = self._env
        kv = env.kv

        def fn(txn: lmdb.Transaction[bytes]) -> None:
            if skip_fence:
                rec = self._objects_rec(txn, prefix, ref) or self._checked(txn, prefix, ref,
                                                                           epoch)
            else:
                rec = self._checked(txn, prefix, ref, epoch)
            before = (rec.size, rec.keys, rec.alarm, rec.last_active, rec.until)
            if batch.delete_all:
                lk.delete_prefix(txn, kv, prefix)
                rec.size = rec.keys = 0
                if rec.alarm is not None:
                    self._set_alarm(txn, prefix, ref, rec, None)
            for k in batch.deletes:
                old = lk.delete_value(txn, kv, prefix, k)
                if old is not None:
                    rec.size -= len(k) + len(old)
                    rec.keys -= 1
            for k, v in batch.puts.items():
                old = lk.put_value(txn, kv, prefix, k, v)
                if old is None:
                    rec.size += len(k) + len(v)
                    rec.keys += 1
                else:
                    rec.size += len(v) - len(old)
            if batch.alarm is not UNCHANGED and batch.alarm != rec.alarm:
                self._set_alarm(txn, prefix, ref, rec, batch.alarm)  # type: ignore[arg-type]
            if batch.active_at is not None:
                rec.last_active = batch.active_at
            if batch.lease_until is not None:
                rec.until = batch.lease_until
            if (rec.size, rec.keys, rec.alarm, rec.last_active, rec.until) != before:
                txn.put(prefix, rec.pack(), db=env.objects)

        return fn

    def delete_object(self, ref: ObjectRef, epoch: int) -> None:
        """Remove state, alarm and registry metadata; keep the epoch as a tombstone."""
        prefix = lk.object_prefix(ref)

        def fn(txn: lmdb.Transaction[bytes]) -> None:
            rec = self._checked(txn, prefix, ref, epoch)
            lk.delete_prefix(txn, self._env.kv, prefix)
            self._set_alarm(txn, prefix, ref, rec, None)
            if not rec.deleted:
                self._count_namespace(txn, ref.namespace, -1)
            rec.name = rec.last_active = None
            rec.size = rec.keys = 0
            rec.deleted = True
            txn.put(prefix, rec.pack(), db=self._env.objects)

        self._use().write(fn)

    # -- alarms and registry -----------------------------------------------------------------

    def due_alarms(self, now: float, limit: int = 100) -> list[tuple[ObjectRef, float]]:
        """Objects whose alarm is due, earliest first, from the ``time ‖ object`` index."""
        if limit <= 0:
            return []

        def fn(txn: lmdb.Transaction[bytes]) -> list[tuple[float, str, str]]:
            out: list[tuple[float, str, str]] = []
            cur = txn.cursor(self._env.alarms)
            ok = cur.first()
            while ok:
                k = cur.key()
                at = lk.decode_time(k)
                # Past the limit, keep reading only ties with the last time (sorted below).
                if at > now or (len(out) >= limit and at != out[-1][0]):
                    break
                out.append((at, cur.value().decode(), k[8 + lk.NS_HASH_LEN:].hex()))
                ok = cur.next()
            return out

        due = self._use().read(fn)
        due.sort()
        return [(ObjectRef(ns, oid), at) for at, ns, oid in due[:limit]]

    def list_objects(
        self, namespace: str, *, after: str | None = None, limit: int = 100
    ) -> list[ObjectInfo]:
        """Live objects of *namespace* with ID greater than *after*, by ID."""
        if limit <= 0:
            return []
        nsh = lk.namespace_hash(namespace)

        def fn(txn: lmdb.Transaction[bytes]) -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            cur = txn.cursor(self._env.objects)
            start = nsh
            if after is not None and lk.is_object_id(after):
                start = nsh + bytes.fromhex(after)
            ok = cur.set_range(start)
            while ok and len(out) < limit:
                k = cur.key()
                if k[:lk.NS_HASH_LEN] != nsh:
                    break
                oid = k[lk.NS_HASH_LEN:].hex()
                if after is None or oid > after:
                    rec = _Rec.unpack(cur.value())
                    if not rec.deleted and rec.epoch and rec.namespace == namespace:
                        out.append(ObjectInfo(
                            ObjectRef(namespace, oid), rec.name, rec.epoch, rec.owner,
                            rec.address, rec.until, rec.last_active, rec.alarm, rec.size,
                            rec.keys))
                ok = cur.next()
            return out

        return self._use().read(fn)

    def namespaces(self) -> list[str]:
        """Namespaces that hold live objects, sorted."""

        def fn(txn: lmdb.Transaction[bytes]) -> list[str]:
            out = []
            for _, raw in txn.cursor(self._env.nss):
                name, count = msgpack.unpackb(raw)
                if count > 0:
                    out.append(name)
            return out

        return sorted(self._use().read(fn))

    def cluster_key(self, proposed: bytes) -> bytes:
        """The cluster key kept in ``duro.meta`` (put once; see :meth:`Backend.cluster_key`)."""
        env = self._use()

        def fn(txn: lmdb.Transaction[bytes]) -> bytes:
            stored = txn.get(b"cluster_key", db=env.meta)
            if stored is None:
                txn.put(b"cluster_key", proposed, db=env.meta)
                return proposed
            return bytes(stored)

        return env.write(fn)

    # -- maintenance -------------------------------------------------------------------------

    def check_readers(self) -> int:
        """Free the reader slots of dead processes now; return how many were freed.

        This also happens on open, every few seconds while writing, and whenever the reader
        table is full, so calling it is never required.
        """
        env = self._use()
        env.check_usable()
        return env.reader_check()

    def close(self) -> None:
        """Release this handle; the environment closes with its last handle. Idempotent."""
        if self._closed:
            return
        self._closed = True
        env = self._env
        with _envs_lock:
            env.refs -= 1
            if env.refs > 0:
                return
            if _envs.get(env.path) is env:
                del _envs[env.path]
        env.shutdown()
