"""A FUSE filesystem that loses power: unsynced writes vanish, as on a machine that loses power.

``kill -9`` of a process does not test durability: whatever it wrote is in the kernel's page
cache and survives. This filesystem keeps every write that was not yet ``fsync``ed in its own
buffer, page by page, and passes it to the backing directory only on ``fsync``/``fdatasync``.
On command it "loses power": the buffered pages are dropped (or, in *torn* mode, a seeded random
subset of them reaches the disk, as a disk that wrote some sectors before the lights went out),
and every later operation fails with ``EIO``, so the process on top sees an I/O failure. A new
mount over the same backing directory then shows exactly what a machine would find after the
reboot. The model is LazyFS's "clear cache" fault, written on mfusepy (libfuse 3).

What it models, and what it does not:

- File data: only what was fsynced survives a crash (all of it, per page).
- Metadata (create, unlink, rename, truncate, mkdir) reaches the backing directory at once:
  this is a journaling filesystem that commits metadata eagerly. Losing a directory entry that
  was never fsynced is not modelled; SQLite and LMDB fsync what they rely on regardless.
- Page cache coherence: the filesystem answers reads from its buffer merged over the backing
  file, so a process sees its own unsynced writes until the crash.

Run it as ``python -m duro.testing.powerloss BACKING MOUNTPOINT [--torn SEED]``. It prints
``ready`` once mounted and reads commands on stdin: ``crash`` drops the unsynced data (answering
``crashed <pages dropped> <pages kept>``), ``stats`` answers ``stats <fsyncs> <dirty pages>``.
:func:`mounted` runs it as a context manager.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("duro.testing.powerloss")

PAGE = 4096
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class _Dirty:
    """The unsynced part of one file: whole pages, plus its logical size."""

    size: int
    pages: dict[int, bytearray] = field(default_factory=dict)


def _guarded(fn: _F) -> _F:
    """Serialize an operation and fail it with EIO after the crash."""

    def wrapper(self: PowerLossFS, *args: Any, **kwargs: Any) -> Any:
        from mfusepy import FuseOSError

        with self.lock:
            if self.crashed:
                raise FuseOSError(errno.EIO)
            try:
                return fn(self, *args, **kwargs)
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from exc

    wrapper.__name__ = fn.__name__
    return wrapper  # type: ignore[return-value]


class PowerLossFS:
    """The filesystem's operations (mfusepy calls them by name on a subclass of Operations)."""

    def __init__(self, root: str, torn_seed: int | None = None) -> None:
        self.root = os.path.realpath(root)
        self.lock = threading.RLock()
        self.crashed = False
        self.torn = None if torn_seed is None else random.Random(torn_seed)
        self.dirty: dict[str, _Dirty] = {}  # by path relative to root
        self.fsyncs = 0

    # -- helpers ---------------------------------------------------------------------------------

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _disk_size(self, path: str) -> int:
        return os.stat(self._full(path)).st_size

    def _size(self, path: str) -> int:
        d = self.dirty.get(path)
        return d.size if d is not None else self._disk_size(path)

    def _disk_page(self, path: str, index: int) -> bytearray:
        with open(self._full(path), "rb") as f:
            f.seek(index * PAGE)
            data = f.read(PAGE)
        return bytearray(data.ljust(PAGE, b"\0"))

    def _flush(self, path: str, pages: dict[int, bytearray], size: int) -> None:
        """Write *pages* of *path* to the backing file, cut to *size*, and fsync it."""
        fd = os.open(self._full(path), os.O_WRONLY)
        try:
            for index in sorted(pages):
                start = index * PAGE
                if start >= size:
                    continue
                os.pwrite(fd, bytes(pages[index][: size - start]), start)
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def crash(self) -> tuple[int, int]:
        """Lose power: drop unsynced pages (or keep a random subset in torn mode); then EIO."""
        with self.lock:
            dropped = kept = 0
            for path, d in self.dirty.items():
                if self.torn is None:
                    dropped += len(d.pages)
                    continue
                survivors = {i: p for i, p in d.pages.items() if self.torn.random() < 0.5}
                kept += len(survivors)
                dropped += len(d.pages) - len(survivors)
                if survivors and os.path.exists(self._full(path)):
                    size = max(self._disk_size(path),
                               *(min(d.size, (i + 1) * PAGE) for i in survivors))
                    self._flush(path, survivors, size)
            self.dirty.clear()
            self.crashed = True
            return dropped, kept

    # -- metadata: straight to the backing directory ------------------------------------------

    @_guarded
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._full(path))
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid")}
        attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        attrs["st_size"] = self._size(path) if path in self.dirty else st.st_size
        return attrs

    @_guarded
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    @_guarded
    def access(self, path: str, amode: int) -> int:
        if not os.access(self._full(path), amode):
            raise OSError(errno.EACCES, "access")
        return 0

    @_guarded
    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._full(path), mode)
        return 0

    @_guarded
    def rmdir(self, path: str) -> int:
        os.rmdir(self._full(path))
        return 0

    @_guarded
    def unlink(self, path: str) -> int:
        os.unlink(self._full(path))
        self.dirty.pop(path, None)
        return 0

    @_guarded
    def rename(self, old: str, new: str) -> int:
        os.rename(self._full(old), self._full(new))
        self.dirty.pop(new, None)
        if old in self.dirty:
            self.dirty[new] = self.dirty.pop(old)
        return 0

    @_guarded
    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    @_guarded
    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._full(path), uid, gid)
        return 0

    @_guarded
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._full(path))
        else:
            os.utime(self._full(path), ns=times)
        return 0

    @_guarded
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                             "f_favail", "f_ffree", "f_files", "f_flag",
                                             "f_frsize", "f_namemax")}

    @_guarded
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        os.close(os.open(self._full(path), os.O_WRONLY | os.O_CREAT, mode))
        return 0

    @_guarded
    def open(self, path: str, flags: int) -> int:
        if not os.path.exists(self._full(path)):
            raise OSError(errno.ENOENT, "open")
        return 0

    @_guarded
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        d = self.dirty.get(path)
        if d is not None:
            d.size = length
            for index in [i for i in d.pages if i * PAGE >= length]:
                del d.pages[index]
        os.truncate(self._full(path), length)  # metadata: durable at once (see the docstring)
        return 0

    # -- data: buffered until fsync -------------------------------------------------------------

    @_guarded
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        end = min(offset + size, self._size(path))
        if end <= offset:
            return b""
        d = self.dirty.get(path)
        if d is None:
            with open(self._full(path), "rb") as f:
                f.seek(offset)
                return f.read(end - offset)
        out = bytearray()
        pos = offset
        while pos < end:
            index, within = divmod(pos, PAGE)
            page = d.pages.get(index)
            if page is None:
                page = self._disk_page(path, index)
            take = min(PAGE - within, end - pos)
            out += page[within:within + take]
            pos += take
        return bytes(out)

    @_guarded
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        d = self.dirty.get(path)
        if d is None:
            d = self.dirty[path] = _Dirty(self._disk_size(path))
        pos, view = offset, memoryview(data)
        while view:
            index, within = divmod(pos, PAGE)
            page = d.pages.get(index)
            if page is None:
                page = d.pages[index] = (self._disk_page(path, index) if index * PAGE < d.size
                                         else bytearray(PAGE))
            take = min(PAGE - within, len(view))
            page[within:within + take] = view[:take]
            view = view[take:]
            pos += take
        d.size = max(d.size, offset + len(data))
        return len(data)

    @_guarded
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.fsyncs += 1
        d = self.dirty.pop(path, None)
        if d is not None:
            self._flush(path, d.pages, d.size)
        return 0

    @_guarded
    def flush(self, path: str, fh: int) -> int:
        return 0  # close() is not a sync: the data stays buffered

    @_guarded
    def release(self, path: str, fh: int) -> int:
        return 0

    @_guarded
    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0


def _operations(fs: PowerLossFS) -> Any:
    """An mfusepy ``Operations`` subclass that forwards each operation to *fs*."""
    import mfusepy

    names = ("getattr", "readdir", "access", "mkdir", "rmdir", "unlink", "rename", "chmod",
             "chown", "utimens", "statfs", "create", "open", "truncate", "read", "write",
             "fsync", "flush", "release", "fsyncdir")
    ns: dict[str, Any] = {name: (lambda n: lambda _self, *a, **k: getattr(fs, n)(*a, **k))(name)
                          for name in names}
    ns["use_ns"] = True  # times in nanoseconds
    return type("PowerLossOperations", (mfusepy.Operations,), ns)()


def serve(backing: str, mountpoint: str, torn_seed: int | None = None) -> None:
    """Mount, print ``ready``, answer stdin commands; returns once unmounted."""
    import mfusepy

    fs = PowerLossFS(backing, torn_seed)
    mountpoint = os.path.abspath(mountpoint)  # libfuse changes the working directory to /

    def commands() -> None:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("ready" if os.path.ismount(mountpoint) else "not-mounted", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "crash":
                dropped, kept = fs.crash()
                print(f"crashed {dropped} {kept}", flush=True)
            elif cmd == "stats":
                with fs.lock:
                    print(f"stats {fs.fsyncs} {sum(len(d.pages) for d in fs.dirty.values())}",
                          flush=True)

    threading.Thread(target=commands, daemon=True).start()
    try:
        mfusepy.FUSE(_operations(fs), mountpoint, foreground=True, nothreads=True)
    except RuntimeError as exc:
        # A lazy unmount (fusermount3 -u -z) ends the loop with an error code: not a failure.
        if os.path.ismount(mountpoint):
            raise
        log.debug("power-loss filesystem at %s ended: %s", mountpoint, exc)


class Mount:
    """A running power-loss filesystem process; see :func:`mounted`."""

    def __init__(self, proc: subprocess.Popen[str], mountpoint: Path) -> None:
        self.proc = proc
        self.mountpoint = mountpoint

    def _ask(self, command: str, answer: str) -> list[int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if not line or line[0] != answer:
            raise RuntimeError(f"power-loss filesystem answered {line!r} to {command!r}")
        return [int(x) for x in line[1:]]

    def crash(self) -> tuple[int, int]:
        """Lose power now: (pages dropped, pages kept by a torn write)."""
        dropped, kept = self._ask("crash", "crashed")
        return dropped, kept

    def stats(self) -> tuple[int, int]:
        """(fsyncs so far, pages buffered now)."""
        fsyncs, dirty = self._ask("stats", "stats")
        return fsyncs, dirty

    def unmount(self) -> None:
        """Unmount (lazily, so a dead process's open files do not block it) and wait."""
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                       capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("power-loss filesystem at %s did not exit after unmount; killing it",
                        self.mountpoint)
            self.proc.kill()
            self.proc.wait(timeout=30)


def fuse_available() -> str | None:
    """None when a FUSE mount can work here, else the reason it cannot."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse3 is not usable: {exc}"
    if subprocess.run(["which", "fusermount3"], capture_output=True).returncode != 0:
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


@contextlib.contextmanager
def mounted(backing: Path, mountpoint: Path, torn_seed: int | None = None) -> Iterator[Mount]:
    """Mount a power-loss filesystem over *backing* at *mountpoint* for the ``with`` block."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "duro.testing.powerloss", str(backing.resolve()),
           str(mountpoint.resolve())]
    if torn_seed is not None:
        cmd += ["--torn", str(torn_seed)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    mount = Mount(proc, mountpoint)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"the power-loss filesystem did not mount ({ready!r})")
        yield mount
    finally:
        mount.unmount()


def main(argv: list[str] | None = None) -> None:
    """``python -m duro.testing.powerloss BACKING MOUNTPOINT [--torn SEED]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m duro.testing.powerloss")
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--torn", type=int, default=None, help="keep a random subset of pages")
    args = parser.parse_args(argv)
    serve(args.backing, args.mountpoint, args.torn)


if __name__ == "__main__":
    main()
