"""``duro check --backend URL``: stage 1, the storage contract; then stage 2, linearizability.

:func:`check_backend` checks the options (an empty ``--backend``, unwritable ``--report`` or
``--history-out``, a plugin that cannot load: exit 2 before anything runs), runs the contract
stage (:mod:`duro.consistency.contract`), then the linearizability stage
(:func:`duro.consistency.run_cli.check_command`) unless the contract stage already found a
violation (``keep_going`` runs it anyway), and prints both with what was covered: backend
methods called, with counts, and fault kinds injected.

Without a URL it never touches the application's store: it checks a scratch store of the
same kind in a temporary directory and removes it afterwards.

Exit codes: 0 ok, 1 contract violation or anomaly, 2 usage or setup error, 3 unknown.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from duro.backends import BackendURL, LeaseHeld, open_backend
from duro.backends._proxy import _METHODS
from duro.config import resolve_backend_url
from duro.consistency.contract import CheckOutcome, ContractReport, run_contract
from duro.errors import DuroError

__all__ = ["STAGES", "UsageError", "check_backend", "check_writable", "scratch_store"]

STAGES: Final = ("all", "contract", "linearizability")

EXIT_OK, EXIT_ANOMALY, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input: printed as ``error: ...``, exit 2."""


def check_writable(path: Path, option: str) -> None:
    """Raise :class:`UsageError` unless *path* can be written (tried before the run)."""
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: directory {parent} does not exist")
    existed = path.exists()
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {path} cannot be written: {exc.strerror or exc}") from exc
    if not existed:
        path.unlink()


@contextmanager
def scratch_store(configured: str) -> Iterator[tuple[str, str]]:
    """A scratch backend URL of the configured kind in a temp dir, removed afterwards.

    Yields ``(url, note)``; *note* says what is checked instead of the configured store.
    """
    scheme = BackendURL.parse(configured).scheme
    if scheme == "memory":
        yield "memory://", "no --backend given: checking a fresh memory:// store"
        return
    directory = tempfile.mkdtemp(prefix="duro-check-")
    try:
        kind = scheme if scheme in ("sqlite", "lmdb") else "sqlite"
        name = "scratch.lmdb" if kind == "lmdb" else "scratch.db"
        url = f"{kind}:///{Path(directory).absolute()}/{name}"
        note = (f"no --backend given: checking a scratch {kind} store in a temporary directory, "
                f"removed afterwards (the configured store {configured} is not touched; pass "
                "--backend URL to check a backend)")
        yield url, note
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _preflight(url: str) -> None:
    """Open and close the backend once, so a bad URL or plugin is a usage error (exit 2)."""
    try:
        open_backend(url).close()
    except (DuroError, LeaseHeld) as exc:
        raise UsageError(str(exc)) from exc
    except Exception as exc:  # a plugin's raw error while opening: name it, no traceback
        raise UsageError(f"opening {url} raised a raw {type(exc).__name__}: {exc} (backends "
                         "must raise duro.errors exceptions only)") from exc


@dataclass
class _Outcome:
    contract: ContractReport | None = None
    contract_note: str = ""
    linearizability: dict[str, Any] | None = None
    linearizability_note: str = ""
    linearizability_exit: int | None = None
    notes: list[str] = field(default_factory=list)

    def exit_code(self) -> int:
        if self.contract is not None and self.contract.verdict != "ok":
            return EXIT_ANOMALY
        if self.linearizability_exit is not None:
            return self.linearizability_exit
        return EXIT_OK


def _print_contract(report: ContractReport, console: Console) -> None:
    ok = sum(o.status == "ok" for o in report.outcomes)
    skipped = [o for o in report.outcomes if o.status == "skipped"]
    bad = report.violations
    style = "green" if not bad else "red"
    console.print(f"[bold]stage 1 (contract)[/bold]: [{style}]{report.verdict}[/{style}] — "
                  f"{ok} checks passed, {len(bad)} violated, {len(skipped)} not applicable, "
                  f"{report.seconds:.1f} s ({report.depth})", highlight=False)
    for o in skipped:
        console.print(f"  skipped {o.name}: {escape(o.detail)}", highlight=False)
    for o in bad:
        console.print(f"  [red bold]violation[/red bold] {escape(f'[{o.area}]')} {o.name}: "
                      f"{escape(o.detail)}", highlight=False)
    console.print("stage 1 covered these backend methods:", highlight=False)
    table = Table(box=None)
    table.add_column("method")
    table.add_column("calls", justify="right")
    for name in sorted(set(_METHODS) | {"close"} | set(report.calls)):
        n = report.calls.get(name, 0)
        table.add_row(name if n else f"[yellow]{name}[/yellow]", f"{n:,}")
    console.print(table)
    if report.cleanup_failures:
        console.print(f"  could not remove {len(report.cleanup_failures)} check object(s): "
                      f"{escape('; '.join(report.cleanup_failures[:3]))}", highlight=False)


def check_backend(backend: str | None, *, depth: str = "default", stage: str = "all",
                  keep_going: bool = False, as_json: bool = False,
                  report: Path | None = None, history_out: Path | None = None,
                  histories: int | None = None, mutant: str | None = None,
                  stage2: dict[str, Any] | None = None) -> int:
    """Run the stages on *backend* (a scratch store if ``None``); returns the exit code.

    *stage2* holds :func:`~duro.consistency.run_cli.check_command`'s keyword options.
    """
    out = Console(stderr=True) if as_json else Console()
    err = Console(stderr=True)
    try:
        if stage not in STAGES:
            raise UsageError(f"--stage must be one of {', '.join(STAGES)}; got {stage!r}")
        if backend is not None and not backend.strip():
            raise UsageError("--backend '' is empty: give a backend URL such as "
                             "'sqlite:///data/duro.db', or leave --backend out to check a "
                             "scratch store")
        for path, option in ((report, "--report"), (history_out, "--history-out")):
            if path is not None:
                check_writable(path, option)
        configured = resolve_backend_url(None) if backend is None else backend
        with _target(backend, configured) as (url, note):
            if note:
                out.print(note, highlight=False)
            _preflight(url)
            result = _run(url, depth, stage, keep_going, report, history_out, histories,
                          mutant, stage2 or {}, out)
    except UsageError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except (DuroError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    code = result.exit_code()
    if as_json:
        print(json.dumps({
            "exit_code": code, "backend": url,
            "scratch": backend is None,
            "stage1": result.contract.to_json() if result.contract else
            {"skipped": result.contract_note},
            "stage2": result.linearizability if result.linearizability is not None else
            {"skipped": result.linearizability_note},
        }, indent=2, default=str))
    return code


@contextmanager
def _target(backend: str | None, configured: str) -> Iterator[tuple[str, str]]:
    if backend is not None:
        yield backend, ""
        return
    with scratch_store(configured) as target:
        yield target


def _run(url: str, depth: str, stage: str, keep_going: bool, report: Path | None,
         history_out: Path | None, histories: int | None, mutant: str | None,
         stage2: dict[str, Any], out: Console) -> _Outcome:
    from duro.consistency.run_cli import check_command, validate_options

    validate_options(**{k: v for k, v in stage2.items()
                        if k in ("ops", "objects", "clients", "processes", "faults", "mode")})
    result = _Outcome()
    err = Console(stderr=True)
    if stage == "linearizability" or mutant is not None:
        result.contract_note = ("a --mutant breaks duro, not the backend" if mutant else
                                "--stage linearizability")
    else:
        def progress(o: CheckOutcome) -> None:
            if o.status == "violation":
                err.print(f"  [red]✗[/red] {o.name}", highlight=False)

        err.print(f"[bold]duro check[/bold] stage 1 (contract) on {escape(url)} …",
                  highlight=False)
        result.contract = run_contract(url, depth=depth, on_result=progress)
        _print_contract(result.contract, out)
    if stage == "contract":
        result.linearizability_note = "--stage contract"
    elif result.contract is not None and result.contract.verdict != "ok" and not keep_going:
        result.linearizability_note = ("the backend already breaks the storage contract "
                                       "(pass --keep-going to run stage 2 anyway)")
        out.print(f"[bold]stage 2 (linearizability)[/bold]: skipped: "
                  f"{result.linearizability_note}", highlight=False)
    else:
        from duro.consistency.runner import CheckSummary

        summaries: list[CheckSummary] = []
        out.print("[bold]stage 2 (linearizability)[/bold]:", highlight=False)
        result.linearizability_exit = check_command(
            url, mutant=mutant, histories=histories, depth=depth,
            history_out=None if history_out is None else str(history_out),
            report=None if report is None else str(report), console=out,
            on_summary=summaries.append, **stage2)
        if result.linearizability_exit == EXIT_USAGE:
            raise UsageError("stage 2 could not run (see above)")
        if summaries:
            s = summaries[0]
            result.linearizability = {k: v for k, v in asdict(s).items()
                                      if k != "explanation"} | {"exit_code": s.exit_code}
            kinds = ", ".join(f"{k} {v}" for k, v in s.faults.items()) or "none"
            out.print(f"stage 2 covered: {s.backend_calls:,} backend calls; fault kinds "
                      f"injected: {kinds}", highlight=False)
    if report is not None and result.linearizability is None and result.contract is not None:
        _write_contract_report(result.contract, report)
        out.print(f"report written to {report}", highlight=False)
    return result


def _write_contract_report(report: ContractReport, path: Path) -> None:
    """Stage 1's findings as JSON (``.json``), HTML or text, when stage 2 wrote no report."""
    if path.suffix.lower() == ".json":
        text = json.dumps({"stage1": report.to_json()}, indent=2) + "\n"
    else:
        lines = [f"stage 1 (contract): {report.verdict}"]
        lines += [f"{o.status:9} {o.area:11} {o.name}  {o.detail}".rstrip()
                  for o in report.outcomes]
        text = "\n".join(lines) + "\n"
        if path.suffix.lower() in (".html", ".htm"):
            text = (f"<!doctype html><meta charset=utf-8><title>duro check</title>"
                    f"<pre>{html.escape(text)}</pre>\n")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:  # checked writable before the run; report rather than lose it
        raise UsageError(f"cannot write report {path}: {exc.strerror or exc}") from exc


