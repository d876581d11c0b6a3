"""What the checker returns: verdicts, per-partition results, anomalies and their witnesses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from duro.consistency.history import History, Operation
from duro.consistency.timeline import ascii_timeline, op_times

__all__ = ["Anomaly", "CheckResult", "PartitionResult", "Verdict", "Witness"]

Verdict = Literal["ok", "anomaly", "unknown"]
_OK: Final = "ok"
_ILLEGAL: Final = "anomaly"
_UNKNOWN: Final = "unknown"


# ---------------------------------------------------------------------------------------------
# result objects
# ---------------------------------------------------------------------------------------------
@dataclass
class Witness:
    """A (shrunk) non-linearizable sub-history and what the search learnt about it."""

    ops: list[Operation]
    history: History
    linearized: list[tuple[Operation, str]] = field(default_factory=list)
    """Longest linearizable prefix found: each op with the state after it."""
    state: str = ""
    """The state after that prefix."""
    frontier: list[tuple[Operation, str]] = field(default_factory=list)
    """Ops that could come next, each with the model's complaint (or a note)."""

    def timeline(self) -> str:
        """The witness as an ASCII timeline (Porcupine style)."""
        return ascii_timeline(self.ops, highlight={id(o) for o, _ in self.frontier})

    def to_text(self) -> str:
        """Timeline, ops with times, longest linearizable prefix and the refused next ops."""
        out = [self.timeline(), ""]
        for n, op in enumerate(sorted(self.ops, key=lambda o: o.call), 1):
            out.append(f"  [{n}] P{op.process} {op.label()}  ({op_times(op)})")
        if self.linearized or self.frontier:
            out.append("")
            if self.linearized:
                out.append("  longest linearizable prefix:")
                for op, st in self.linearized:
                    out.append(f"    P{op.process} {op.label()}  ⇒ {st}")
            else:
                out.append("  no op can be linearized first")
            if self.state:
                out.append(f"  then the state is {self.state}, and every op that could come "
                           "next is refused:")
            for op, why in self.frontier:
                out.append(f"    ✗ P{op.process} {op.label()}: {why}")
        return "\n".join(out)


@dataclass
class Anomaly:
    """One way the history is not linearizable."""

    kind: str
    """``garbage-read`` | ``aborted-read`` | ``future-read`` | ``not-linearizable``."""
    object: str
    keys: tuple[str, ...]
    message: str
    witness: Witness


@dataclass
class PartitionResult:
    """Verdict on one partition (an object, or a key group within it)."""

    object: str
    keys: tuple[str, ...]
    model: str
    ops: int
    verdict: Verdict
    steps: int = 0
    seconds: float = 0.0
    anomaly: Anomaly | None = None


@dataclass
class CheckResult:
    """The verdict on a whole history."""

    verdict: Verdict
    partitions: list[PartitionResult]
    anomalies: list[Anomaly]
    history: History
    seconds: float
    ops: int
    objects: int

    @property
    def ok(self) -> bool:
        """True iff every partition is linearizable."""
        return self.verdict == _OK

    @property
    def witness(self) -> Witness | None:
        """The first anomaly's witness."""
        return self.anomalies[0].witness if self.anomalies else None

    def unknown(self) -> list[PartitionResult]:
        """Partitions whose search ran out of budget."""
        return [p for p in self.partitions if p.verdict == _UNKNOWN]

    def summary(self) -> str:
        """One line: verdict, ops, objects, partitions, time."""
        n = len(self.partitions)
        bad = sum(p.verdict == _ILLEGAL for p in self.partitions)
        unk = len(self.unknown())
        return (f"{self.verdict}: {self.ops} ops over {self.objects} objects, {n} partitions "
                f"({bad} with anomalies, {unk} unknown), checked in {self.seconds:.3f} s")

    def explain(self, *, max_anomalies: int = 5) -> str:
        """A readable report: the summary and each anomaly's witness."""
        out = [self.summary()]
        for p in self.unknown():
            out.append(f"unknown: object {p.object} keys {', '.join(p.keys) or '-'}: search budget "
                       f"exhausted after {p.steps} steps ({p.ops} ops)")
        for a in self.anomalies[:max_anomalies]:
            out.append("")
            out.append(f"ANOMALY {a.kind} on object {a.object!r}"
                       f"{' keys ' + ', '.join(a.keys) if a.keys else ''}: {a.message}")
            out.append(a.witness.to_text())
        if len(self.anomalies) > max_anomalies:
            out.append(f"... and {len(self.anomalies) - max_anomalies} more anomalies")
        return "\n".join(out)
