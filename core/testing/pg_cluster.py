"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests, CI and benchmarks.

It runs the server binaries of the distribution's ``postgresql`` package (``initdb``,
``pg_ctl``: found on ``PATH`` or under ``/usr/lib/postgresql/<version>/bin``) in a temporary
directory, listening on a free loopback port, with its unix socket inside that directory and
the server's default durability settings (``fsync=on``, ``synchronous_commit=on``). Each
caller gets a fresh database from :meth:`PostgresCluster.new_database`. PostgreSQL refuses to
run as root, so under root the server runs as the ``postgres`` system user.

Usage::

    cluster = start_postgres_cluster()
    url = cluster.new_database()       # postgresql+psycopg://duro@127.0.0.1:PORT/duro_t_...
    ...
    cluster.stop()                     # stops the server and removes the directory

or, in the foreground (for benchmarks)::

    python -m duro.testing.pg_cluster          # prints a fresh database URL, runs until Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from glob import glob
from pathlib import Path
from types import FrameType
from typing import Any, Final

__all__ = [
    "ExternalPostgres",
    "PostgresCluster",
    "PostgresMissing",
    "find_postgres_bin",
    "start_postgres_cluster",
]

INSTALL_HINT: Final = (
    "install the PostgreSQL server package (Debian/Ubuntu: apt-get install postgresql) "
    "and the driver (pip install 'duro[postgres]')"
)
_USER: Final = "duro"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries (or a user to run them as) are not available."""


def find_postgres_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest version first), or ``None``."""
    for name in ("pg_ctl",):
        found = shutil.which(name)
        if found:
            real = Path(found).resolve().parent
            if (real / "initdb").exists():
                return real
    candidates = glob("/usr/lib/postgresql/*/bin/pg_ctl")

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/([\d.]+)/", path)
        return tuple(int(p) for p in m.group(1).split(".") if p) if m else (0,)

    for path in sorted(candidates, key=version, reverse=True):
        bindir = Path(path).parent
        if (bindir / "initdb").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A running throwaway cluster; see :func:`start_postgres_cluster`."""

    def __init__(self, bindir: Path, directory: Path, port: int, run_as: str | None) -> None:
        self.bindir = bindir
        self.directory = directory
        self.port = port
        self.run_as = run_as
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._databases: list[str] = []
        self._stopped = False

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        """The SQLAlchemy/duro URL of *database* on this cluster (psycopg 3 driver), reached
        at *host* (one of the cluster's listen addresses)."""
        return f"postgresql+psycopg://{_USER}@{host}:{self.port}/{database}"

    def _admin(self) -> Any:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise PostgresMissing(
                f"the PostgreSQL driver psycopg is not installed: pip install 'duro[postgres]' "
                f"({exc})"
            ) from exc
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=_USER, dbname="postgres", autocommit=True
        )

    def new_database(self) -> str:
        """Create a fresh, empty database and return its URL."""
        name = "duro_t_" + uuid.uuid4().hex[:16]
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        with self._lock:
            self._databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of *url* (made by :meth:`new_database`), closing its sessions."""
        name = url.rsplit("/", 1)[-1].split("?", 1)[0]
        if not name.startswith("duro_t_") or self._stopped:
            return
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with self._lock, contextlib.suppress(ValueError):
            self._databases.remove(name)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self.run_as, capture_output=True, text=True, check=check,
            stdin=subprocess.DEVNULL, cwd=self.directory,
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory. Idempotent."""
        if self._stopped or os.getpid() != self.pid:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop",
                      check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ExternalPostgres:
    """Fresh databases on an existing server, given a URL with rights to ``CREATE DATABASE``.

    The same :meth:`new_database` / :meth:`drop_database` / :meth:`stop` interface as
    :class:`PostgresCluster`; :meth:`stop` drops the databases it made and leaves the server.
    """

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._url = sa.make_url(url)
        if self._url.get_backend_name() != "postgresql":
            raise PostgresMissing(f"not a PostgreSQL URL: {url!r}")
        self._lock = threading.Lock()
        self._databases: list[str] = []

    def url(self, database: str) -> str:
        """The URL of *database* on this server (psycopg 3 driver)."""
        u = self._url.set(drivername="postgresql+psycopg", database=database)
        return u.render_as_string(hide_password=False)

    def _admin(self) -> Any:
        import psycopg

        u = self._url
        return psycopg.connect(
            host=u.host or None, port=u.port, user=u.username, password=u.password,
            dbname=u.database or "postgres", autocommit=True,
        )

    def new_database(self) -> str:
        """Create a fresh, empty database and return its URL."""
        name = "duro_t_" + uuid.uuid4().hex[:16]
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0')
        with self._lock:
            self._databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of *url* (made by :meth:`new_database`), closing its sessions."""
        name = url.rsplit("/", 1)[-1].split("?", 1)[0]
        if not name.startswith("duro_t_"):
            return
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with self._lock, contextlib.suppress(ValueError):
            self._databases.remove(name)

    def stop(self) -> None:
        """Drop every database this made (the server keeps running)."""
        with self._lock:
            names, self._databases = self._databases, []
        for name in names:
            with contextlib.suppress(Exception):
                self.drop_database(self.url(name))


def _run_as() -> str | None:
    """The user to run the server as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresMissing(
        "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as; "
        "apt-get install postgresql creates one"
    )


_PREFIX: Final = "duro-pg-"
_CREATOR: Final = "creator.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(bindir: Path, run_as: str | None) -> int:
    """Stop and remove throwaway clusters whose creating process is gone (killed before it
    could stop them); return how many."""
    n = 0
    for creator in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*/{_CREATOR}"):
        try:
            pid = int(creator.read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue
        orphan = PostgresCluster(bindir, creator.parent, 0, run_as)
        orphan.pid = os.getpid()
        orphan.stop()
        n += 1
    return n


def start_postgres_cluster(*, max_connections: int = 300, listen: tuple[str, ...] = (),
                           trust: tuple[str, ...] = ()) -> PostgresCluster:
    """Initialize and start a throwaway cluster in a new temporary directory.

    It listens on 127.0.0.1 and the extra *listen* addresses, and lets clients from the *trust*
    networks (CIDR, e.g. a test network's subnet) in without a password.
    """
    bindir = find_postgres_bin()
    if bindir is None:
        raise PostgresMissing(f"PostgreSQL's initdb/pg_ctl were not found: {INSTALL_HINT}")
    run_as = _run_as()
    with contextlib.suppress(Exception):
        reap_orphans(bindir, run_as)
    directory = Path(tempfile.mkdtemp(prefix=_PREFIX))
    (directory / _CREATOR).write_text(str(os.getpid()))
    if run_as is not None:
        user = pwd.getpwnam(run_as)
        os.chown(directory, user.pw_uid, user.pw_gid)
    last_error = ""
    cluster = PostgresCluster(bindir, directory, 0, run_as)
    try:
        done = cluster._run(
            "initdb", "-D", str(cluster.datadir), "-U", _USER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", check=False,
        )
        if done.returncode != 0:
            raise PostgresMissing(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        if trust:
            with (cluster.datadir / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                for network in trust:
                    hba.write(f"host all all {network} trust\n")
        for _attempt in range(5):
            cluster.port = _free_port()
            options = (
                f"-c listen_addresses={','.join(('127.0.0.1', *listen))} -p {cluster.port} "
                f"-c unix_socket_directories={directory} -c max_connections={max_connections} "
                "-c shared_buffers=64MB"
            )
            done = cluster._run(
                "pg_ctl", "-D", str(cluster.datadir), "-l", str(directory / "server.log"),
                "-o", options, "-w", "-t", "60", "start", check=False,
            )
            if done.returncode == 0:
                return cluster
            last_error = (done.stderr or done.stdout).strip()
            with contextlib.suppress(OSError):
                last_error += "\n" + (directory / "server.log").read_text()[-2000:]
        raise PostgresMissing(f"the PostgreSQL server did not start: {last_error}")
    except BaseException:
        cluster.stop()
        raise


def _main() -> None:  # pragma: no cover - manual use
    cluster = start_postgres_cluster()
    print(cluster.new_database(), flush=True)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stop.wait()
    finally:
        cluster.stop()
        sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    _main()
