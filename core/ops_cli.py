"""The ``duro inspect``, ``export``, ``import``, ``migrate`` and ``unseal`` commands.

- ``duro inspect [--backend URL] [NAMESPACE [NAME|ID]] [--prefix P] [--limit N] [--json]``:
  namespaces; a namespace's objects; or one object's keys with decoded values, its alarm, lease
  owner and epoch and its size. Read-only: it never takes a lease and never writes.
- ``duro export [--backend URL] [--namespace N]... [--output FILE]``: the JSON-lines dump
  (:mod:`duro.dump`) on stdout or to FILE.
- ``duro import [--backend URL] [--input FILE] [--wait S] [--check]``: load a dump, each object
  atomically; ``--check`` only validates the dump.
- ``duro migrate SRC_URL DST_URL [--namespace N]... [--no-seal] [--wait S]``: copy every object,
  fencing live writers on the source (:mod:`duro.migrate`), with a progress bar and a summary.
- ``duro unseal [--backend URL]``: release the leases ``duro migrate`` left on a source.

Exit codes: 0 done, 1 the data was refused or could not be moved (bad dump, live owners,
verification), 2 usage or setup error (bad URL, newer storage format, missing driver).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from duro.backends import Backend, ObjectInfo
from duro.config import resolve_backend
from duro.console import err_console, out_console
from duro.console import table as new_table
from duro.dump import DumpError, DumpObject, ImportStats, check_header, dump_to, import_dump
from duro.errors import DuroError
from duro.migrate import MigrateError, migrate, unseal
from duro.ops import (
    ObjectDetail,
    info_json,
    inspect_backend,
    inspect_namespace,
    inspect_object,
    open_existing,
)

__all__ = ["register"]

EXIT_DATA, EXIT_USAGE = 1, 2
WIDE_TABLE = 150
"""Console width from which ``duro inspect NAMESPACE`` prints a table (IDs are 64 characters)."""

BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", "-b", help="Backend URL (default: DURO_BACKEND, else the nearest "
                 "duro.toml or \\[tool.duro] in pyproject.toml here or in a parent folder, "
                 "else sqlite:///.duro/duro.db)."),
]
NamespacesOpt = Annotated[
    list[str] | None,
    typer.Option("--namespace", "-n", help="Only this namespace (repeatable)."),
]


def _err() -> Console:
    return err_console()


def _out() -> Console:
    return out_console()


@contextmanager
def _errors() -> Iterator[None]:
    """Print duro errors on stderr and exit 1 (data) or 2 (usage/setup)."""
    try:
        yield
    except (DumpError, MigrateError) as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_DATA) from None
    except DuroError as exc:
        _err().print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None


def _resolve(backend: str | None) -> str:
    """The backend URL; says on stderr which file (or env, or default) chose it."""
    resolved = resolve_backend(backend)
    if resolved.source != "argument":
        _err().print(f"[dim]backend: {escape(str(resolved))}[/dim]")
    return resolved.url


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, ValueError, OSError):
        return repr(t)


def pretty(value: Any) -> str:
    """A decoded value as Python-like text that keeps its type visible (bytes, datetime, str)."""
    if isinstance(value, dt.datetime):
        return f"datetime({value.isoformat()})"
    if isinstance(value, list):
        return "[" + ", ".join(pretty(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {pretty(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _clip(text: str, n: int = 2000) -> str:
    if len(text) <= n:
        return text
    return f"{text[:n]} [{len(text) - n:,} more characters: --json shows all]"


def _print_detail(detail: ObjectDetail) -> None:
    info = detail.info
    out = _out()
    meta = Table.grid(padding=(0, 2))
    meta.add_column(no_wrap=True)
    meta.add_column(overflow="fold")
    meta.add_row("namespace", escape(info.ref.namespace))
    meta.add_row("id", info.ref.id)
    meta.add_row("name", escape(info.name) if info.name is not None else "-")
    meta.add_row("keys / size", f"{info.keys} keys, {info.size:,} bytes")
    meta.add_row("alarm", _when(info.alarm) + (f"  ({info.alarm!r})" if info.alarm else ""))
    live = info.owner is not None
    meta.add_row("lease", f"epoch {info.epoch}, "
                 + (f"owner {escape(info.owner or '')} at {info.address or '-'} until "
                    f"{_when(info.lease_until)}" if live else "not held"))
    meta.add_row("last active", _when(info.last_active))
    out.print(meta)
    table = new_table("key", "type", "bytes", "value", right=("bytes",))
    for row in detail.rows:
        if row.error is not None:
            table.add_row(escape(row.key), "[red]undecodable[/red]", str(len(row.raw)),
                          escape(_clip(row.error)))
        else:
            table.add_row(escape(row.key), type(row.value).__name__, str(len(row.raw)),
                          escape(_clip(pretty(row.value))))
    out.print(table)
    if detail.truncated:
        out.print(f"[yellow]… more keys: raise --limit (showing {len(detail.rows)})[/yellow]")


def _print_objects(out: Console, namespace: str, infos: list[ObjectInfo]) -> None:
    """A table of objects when the whole ID fits beside the rest, else one block per object;
    either way every ID is printed whole on one line."""
    cells = [(i.ref.id, escape(i.name or "-"), str(i.keys), f"{i.size:,}", _when(i.alarm),
              str(i.epoch), escape(i.owner or "-"), _when(i.last_active)) for i in infos]
    names = ("id", "name", "keys", "bytes", "alarm", "epoch", "owner", "last active")
    if out.width >= WIDE_TABLE:
        table = new_table(*names, title=escape(namespace), whole=("id",),
                          right=("keys", "bytes", "epoch"))
        for row in cells:
            table.add_row(*row)
        out.print(table)
        return
    out.print(f"[bold]{escape(namespace)}[/bold]: {len(cells)} object(s)")
    for row in cells:
        out.print(row[0], soft_wrap=True)
        out.print("  " + "  ".join(f"{k} {v}" for k, v in zip(names[1:], row[1:], strict=True)))


def inspect_cmd(
    namespace: Annotated[str | None, typer.Argument(help="Namespace (class name).")] = None,
    obj: Annotated[str | None, typer.Argument(metavar="[NAME|ID]",
                                              help="Object name or 64-hex ID.")] = None,
    backend: BackendOpt = None,
    prefix: Annotated[str | None, typer.Option(
        "--prefix", "-p", help="Only keys (of an object) or names/IDs (of a namespace) "
        "starting with this.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List namespaces and objects, or show one object. Read-only: takes no lease."""
    with _errors():
        url = _resolve(backend)
        with open_existing(url) as b:
            if namespace is None:
                summaries = inspect_backend(b)
                if as_json:
                    print(json.dumps([s.as_json() for s in summaries], indent=2))
                    return
                table = new_table("namespace", "objects", "keys", "bytes",
                                  right=("objects", "keys", "bytes"))
                for s in summaries:
                    table.add_row(escape(s.name), str(s.objects), str(s.keys), f"{s.size:,}")
                _out().print(table)
                return
            if obj is None:
                infos = inspect_namespace(b, namespace, prefix=prefix, limit=limit + 1)
                more = len(infos) > limit
                infos = infos[:limit]
                if as_json:
                    print(json.dumps({"namespace": namespace, "truncated": more,
                                      "objects": [info_json(i) for i in infos]}, indent=2))
                    return
                _print_objects(_out(), namespace, infos)
                if more:
                    _out().print(f"[yellow]… more objects: raise --limit ({limit})[/yellow]")
                return
            detail = inspect_object(b, namespace, obj, prefix=prefix, limit=limit)
            if as_json:
                print(json.dumps(detail.as_json(), indent=2))
            else:
                _print_detail(detail)


def export_cmd(
    backend: BackendOpt = None,
    namespace: NamespacesOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the dump here instead of stdout.")] = None,
) -> None:
    """Write every object (or those of --namespace) as a JSON-lines dump."""
    with _errors():
        url = _resolve(backend)
        with open_existing(url) as b, _counting("exporting") as on_object:
            if output is None:
                n = dump_to(b, sys.stdout, namespace, on_object=on_object)
                sys.stdout.flush()
            else:
                with output.open("w", encoding="ascii") as f:
                    n = dump_to(b, f, namespace, on_object=on_object)
        _err().print(f"exported {n} object(s)")


def import_cmd(
    backend: BackendOpt = None,
    input_: Annotated[Path | None, typer.Option(
        "--input", "-i", help="Read the dump from here instead of stdin.")] = None,
    wait: Annotated[float, typer.Option(
        help="Seconds to wait for a live owner of an object on the destination.")] = 30.0,
    check: Annotated[bool, typer.Option(
        "--check", help="Only validate the dump; write nothing.")] = False,
) -> None:
    """Load a dump made by `duro export`; each object is replaced atomically."""
    with _errors():
        stream = sys.stdin if input_ is None else input_.open("r", encoding="utf-8", newline="")
        try:
            first = stream.readline()
            check_header(first)  # a bad header creates no file and opens nothing
            target = None if check else open_existing_or_new(_resolve(backend))
            try:
                stats = _import_with_progress(target, itertools.chain([first], stream), wait)
            finally:
                if target is not None:
                    target.close()
        finally:
            if input_ is not None:
                stream.close()
        verb = "checked" if check else "imported"
        _err().print(f"{verb} {stats.objects} object(s), {stats.keys} key(s), "
                     f"{stats.bytes:,} bytes")


@contextmanager
def _counting(what: str) -> Iterator[Callable[[DumpObject], None]]:
    """A progress line on stderr (objects so far, elapsed); yields the per-object callback."""
    progress = Progress(TextColumn(what), MofNCompleteColumn(), TextColumn("objects"),
                        TimeElapsedColumn(), console=_err(), transient=True)
    with progress:
        task = progress.add_task(what, total=None)
        yield lambda _obj: progress.update(task, advance=1)


def _import_with_progress(target: Backend | None, lines: Iterable[str], wait: float
                          ) -> ImportStats:
    """Import with a progress line on stderr; on a bad line, say exactly what landed."""
    landed: list[DumpObject] = []
    with _counting("importing") as count:

        def on_object(obj: DumpObject) -> None:
            landed.append(obj)
            count(obj)

        try:
            return import_dump(target, lines, wait=wait, on_object=on_object)
        except DumpError as exc:
            if target is None:
                raise
            last = (f"; the last was {landed[-1].namespace}/{landed[-1].id}" if landed else "")
            raise DumpError(f"{exc}. Imported before it, each whole: {len(landed)} object(s)"
                            f"{last}; nothing of the bad object. Fix the dump and import it "
                            "again: every object is replaced, so that is safe.") from exc


def open_existing_or_new(url: str) -> Backend:
    """Open a destination (created if missing: importing into a new store is normal)."""
    from duro.backends import open_backend

    return open_backend(url)


def migrate_cmd(
    src: Annotated[str, typer.Argument(metavar="SRC_URL", help="Backend to copy from.")],
    dst: Annotated[str, typer.Argument(metavar="DST_URL", help="Backend to copy to.")],
    namespace: NamespacesOpt = None,
    seal: Annotated[bool, typer.Option(
        "--seal/--no-seal", help="Keep each moved source object leased (sealed) so nothing "
        "more can be written there (default), or release it (a plain copy).")] = True,
    wait: Annotated[float, typer.Option(
        help="Seconds to wait for live owners' leases to end.")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Copy every object from SRC_URL to DST_URL, fencing live writers; verify at the end."""
    with _errors():
        with open_existing(src) as s, open_existing_or_new(dst) as d:
            progress = Progress(TextColumn("migrating"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[keys]} keys"), TimeElapsedColumn(),
                                console=_err(), transient=False)
            with progress:
                task = progress.add_task("migrate", total=None, keys=0)
                keys = 0

                def on_total(n: int) -> None:
                    progress.update(task, total=n)

                def on_object(obj: DumpObject) -> None:
                    nonlocal keys
                    keys += len(obj.rows)
                    progress.update(task, advance=1, keys=keys)

                result = migrate(s, d, namespaces=namespace, seal=seal, wait=wait,
                                 on_total=on_total, on_object=on_object)
        if as_json:
            print(json.dumps({"run": result.run, "objects": result.objects, "keys": result.keys,
                              "bytes": result.bytes, "namespaces": result.namespaces,
                              "verified": result.verified, "waited_for_owner": result.waited,
                              "sealed": result.sealed, "seconds": round(result.seconds, 3)}))
            return
        table = new_table("namespace", "objects", title="duro migrate: done, verified",
                          right=("objects",))
        for ns, n in sorted(result.namespaces.items()):
            table.add_row(escape(ns), str(n))
        out = _out()
        out.print(table)
        out.print(f"{result.objects} object(s), {result.keys} key(s), {result.bytes:,} bytes "
                  f"in {result.seconds:.1f} s; {result.verified} verified by checksum; "
                  f"{result.waited} waited for a live owner.")
        if seal:
            out.print("The source objects are sealed (leased to duro-migrate:"
                      f"{result.run}): point your apps at {escape(dst)}. "
                      "`duro unseal --backend SRC_URL` undoes that.")


def unseal_cmd(backend: BackendOpt = None, namespace: NamespacesOpt = None) -> None:
    """Release the leases `duro migrate` left on the objects of a migrated source."""
    with _errors():
        with open_existing(_resolve(backend)) as b:
            n = unseal(b, namespaces=namespace)
        _err().print(f"released {n} sealed object(s)")


def register(app: typer.Typer) -> None:
    """Add ``inspect``, ``export``, ``import``, ``migrate`` and ``unseal`` to the root app."""
    app.command("inspect")(inspect_cmd)
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.command("migrate")(migrate_cmd)
    app.command("unseal")(unseal_cmd)
