"""Run the contract stage: every registered check against one backend URL, with results.

:func:`run_contract` runs the checks in order, each on the run's private namespaces, deletes
what each check created, and returns a :class:`ContractReport`: per check its name, area,
verdict, detail and seconds, plus how often each backend method was called.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duro.consistency.contract.context import (
    CHECKS,
    CheckContext,
    ContractCheck,
    ContractViolation,
    RawErrorEscaped,
)

__all__ = ["CheckOutcome", "ContractReport", "run_contract"]

log = logging.getLogger("duro.consistency.contract")
_HERE = Path(__file__).parent


@dataclass
class CheckOutcome:
    """One check's result: ``status`` is ``ok``, ``violation`` or ``skipped``."""

    name: str
    area: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Not a violation (passed or not applicable)."""
        return self.status != "violation"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"name": self.name, "area": self.area, "status": self.status, "ok": self.ok,
                "detail": self.detail, "seconds": round(self.seconds, 4)}


@dataclass
class ContractReport:
    """What the contract stage found."""

    url: str
    depth: str
    outcomes: list[CheckOutcome] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    cleanup_failures: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``ok`` or ``violation``."""
        return "ok" if all(o.ok for o in self.outcomes) else "violation"

    @property
    def violations(self) -> list[CheckOutcome]:
        """The checks that found the backend breaking the contract."""
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"verdict": self.verdict, "depth": self.depth, "seconds": round(self.seconds, 3),
                "checks": [o.to_json() for o in self.outcomes],
                "backend_calls": dict(sorted(self.calls.items())),
                "cleanup_failures": self.cleanup_failures}


def _detail(exc: BaseException) -> str:
    """The violation's message, with the check line that found it."""
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).parent == _HERE and Path(frame.filename).name != "context.py":
            where = f" [{Path(frame.filename).stem}:{frame.lineno}: {(frame.line or '').strip()}]"
            break
    if isinstance(exc, RawErrorEscaped):
        return f"{exc}{where}"
    if isinstance(exc, AssertionError):
        msg = str(exc) or "assertion failed"
        return f"{msg}{where}"
    return f"unexpected {type(exc).__name__}: {exc}{where}"


def run_contract(url: str, *, depth: str = "default", checks: Sequence[ContractCheck] | None = None,
                 on_result: Callable[[CheckOutcome], None] | None = None) -> ContractReport:
    """Run *checks* (default: all) against *url*; raises ``ConfigError`` if it cannot open."""
    ctx = CheckContext(url, depth=depth)
    report = ContractReport(url, depth, calls=ctx.calls)
    t0 = time.monotonic()
    try:
        for check in checks if checks is not None else CHECKS:
            start = time.monotonic()
            ctx.next_check()
            reason = check.skip_reason(ctx)
            if reason is not None:
                outcome = CheckOutcome(check.name, check.area, "skipped", reason)
            else:
                try:
                    check.fn(ctx)
                    outcome = CheckOutcome(check.name, check.area, "ok")
                except (AssertionError, ContractViolation) as exc:
                    outcome = CheckOutcome(check.name, check.area, "violation", _detail(exc))
                except Exception as exc:  # noqa: BLE001 - a duro error where none is allowed: a violation too
                    outcome = CheckOutcome(check.name, check.area, "violation", _detail(exc))
                report.cleanup_failures += ctx.cleanup()
            outcome.seconds = time.monotonic() - start
            report.outcomes.append(outcome)
            if on_result is not None:
                on_result(outcome)
    finally:
        try:
            ctx.close_backend()
        except Exception as exc:  # noqa: BLE001 - the close itself is a contract call: report, don't mask
            log.warning("closing %s after the contract stage failed: %s", url, exc)
            report.outcomes.append(CheckOutcome("close", "errors", "violation", _detail(exc)))
        report.seconds = time.monotonic() - t0
    return report
