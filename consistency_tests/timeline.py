"""ASCII timelines of operations, drawn as Porcupine does, one lane per process::

      P0: |-- put(x, 1) --|
      P1:      |------ get(x) → 2 ------|

Overlapping boxes are concurrent; an ``info`` op without a bound runs off to the right
(``?---->``). Columns follow the event order, not the clock, so equal times stay readable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from duro.consistency.history import Operation

__all__ = ["ascii_timeline", "columns", "op_times"]

_MIN_GAP = 2


def columns(ops: Sequence[Operation], pad: int) -> tuple[dict[int, int], int]:
    """Column of every call/return position: increasing, each box wide enough for its label."""
    pos: set[int] = set()
    ends: dict[int, list[tuple[int, int]]] = {}
    for op in ops:
        pos.add(op.call)
        if op.ret is not None:
            pos.add(op.ret)
            ends.setdefault(op.ret, []).append((op.call, len(op.label()) + pad))
    col: dict[int, int] = {}
    c = -_MIN_GAP
    for p in sorted(pos):
        c += _MIN_GAP
        for call, width in ends.get(p, []):
            if call != p:
                c = max(c, col[call] + width)
        col[p] = c
    last = c
    for op in ops:  # room for open-ended info boxes
        if op.ret is None:
            last = max(last, col[op.call] + len(op.label()) + pad + 2)
    return col, last


def ascii_timeline(ops: Iterable[Operation], *, highlight: set[int] | None = None) -> str:
    """One lane per process; boxes span each op's invoke..completion (see module docstring).

    Ops whose ``id()`` is in *highlight* are drawn with ``=`` instead of ``-``.
    """
    ops = sorted(ops, key=lambda o: o.call)
    if not ops:
        return "(no ops)"
    col, last = columns(ops, pad=6)
    lanes: dict[int, list[str]] = {}
    for op in ops:
        lane = lanes.setdefault(op.process, [" "] * (last + 8))
        a = col[op.call]
        dash = "=" if highlight and id(op) in highlight else "-"
        label = f" {op.label()} "
        if op.ret is None:
            b = last + 6
            body = list(label.center(b - a - 1, dash))
            lane[a] = "|"
            lane[a + 1:b] = body
            lane[b - 1] = "?"
            lane[b] = ">"
            continue
        b = col[op.ret]
        inner = b - a - 1
        text = label if len(label) <= inner else label[:inner]
        lane[a] = "|"
        lane[a + 1:b] = list(text.center(inner, dash))
        lane[b] = "|"
    width = max(len(f"P{p}") for p in lanes)
    return "\n".join(f"{f'P{p}':>{width}}: {''.join(lane).rstrip()}"
                     for p, lane in sorted(lanes.items()))


def op_times(op: Operation) -> str:
    """When *op* was invoked and completed, as text."""
    if op.completion_event is None:
        return f"invoke t={op.call_time}, never completed"
    t = f"invoke t={op.call_time}, {op.outcome} t={op.completion_event.time}"
    if op.outcome == "info" and op.ret_time is not None:
        t += f" (bound t={op.ret_time})"
    return t
