"""Human-readable output of the checker: ASCII timelines, witness text, and an HTML report.

* :func:`ascii_timeline` draws ops as Porcupine does, one lane per process::

      P0: |-- put(x, 1) --|
      P1:      |------ get(x) → 2 ------|

  Overlapping boxes are concurrent; an ``info`` op without a bound runs off to the right
  (``?---->``). Columns follow the event order, not the clock, so equal times stay readable.
* :func:`witness_text`: the timeline, the ops with their times, the longest linearizable prefix
  and the model's complaint about each op that could come next.
* :func:`html_report`: one self-contained HTML page (inline CSS + SVG, no scripts or network),
  a section per failing object with a lane per process: all of the object's ops, the witness ops
  outlined, the linearized prefix numbered, refused ops in red; hover an op for its details.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from duro.consistency.history import Operation
from duro.consistency.results import CheckResult, Witness
from duro.consistency.timeline import ascii_timeline, columns, op_times

__all__ = ["ascii_timeline", "html_report", "witness_text"]

def witness_text(w: Witness) -> str:
    """Timeline, ops with times, longest linearizable prefix and the refused next ops."""
    return w.to_text()


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:2em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}
.ok{color:#1a7f37}.bad{color:#cf222e}.unk{color:#9a6700}
svg text{font-family:ui-monospace,monospace;font-size:11px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px}
.legend span{display:inline-block;padding:0 6px;margin-right:8px;border:1px solid #888}
"""

_CHAR = 7
_LANE = 26


def _svg(ops: Sequence[Operation], witness: Witness | None) -> str:
    ops = sorted(ops, key=lambda o: o.call)
    col, last = columns(ops, pad=4)
    wit = {id(o) for o in witness.ops} if witness else set()
    order = {id(o): n for n, (o, _) in enumerate(witness.linearized, 1)} if witness else {}
    refused = {id(o): why for o, why in witness.frontier} if witness else {}
    procs = sorted({o.process for o in ops})
    lane_of = {p: i for i, p in enumerate(procs)}
    left = 60
    w = left + (last + 8) * _CHAR
    h = len(procs) * _LANE + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">']
    for p, i in lane_of.items():
        y = i * _LANE + 18
        parts.append(f'<text x="4" y="{y}">P{p}</text>'
                     f'<line x1="{left}" y1="{y - 4}" x2="{w}" y2="{y - 4}" stroke="#eee"/>')
    for op in ops:
        y = lane_of[op.process] * _LANE + 5
        x1 = left + col[op.call] * _CHAR
        x2 = left + ((col[op.ret] if op.ret is not None else last + 4) * _CHAR)
        fill = {"ok": "#dbeafe", "fail": "#eeeeee", "info": "#fef3c7"}[op.outcome]
        stroke, sw = "#888", 1
        if id(op) in wit:
            stroke, sw = "#1f2937", 2
        if id(op) in order:
            fill = "#bbf7d0"
        if id(op) in refused:
            fill, stroke = "#fecaca", "#cf222e"
        tip = [op.label(), f"process {op.process}", op_times(op)]
        if id(op) in order:
            tip.append(f"linearized #{order[id(op)]}")
        if id(op) in refused:
            tip.append(f"refused: {refused[id(op)]}")
        label = op.label()
        if id(op) in order:
            label = f"{order[id(op)]}. {label}"
        parts.append(
            f'<g><title>{html.escape(chr(10).join(tip))}</title>'
            f'<rect x="{x1}" y="{y}" width="{max(x2 - x1, 4)}" height="{_LANE - 8}" rx="3" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{sw}"'
            f'{" stroke-dasharray=" + chr(34) + "4 2" + chr(34) if op.ret is None else ""}/>'
            f'<text x="{x1 + 4}" y="{y + 13}">{html.escape(label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def html_report(result: CheckResult, *, title: str = "duro check") -> str:
    """A self-contained HTML page: summary, partition table, a timeline per failing object."""
    cls = {"ok": "ok", "anomaly": "bad", "unknown": "unk"}[result.verdict]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}: <span class='{cls}'>{result.verdict}</span></h1>",
           f"<p>{html.escape(result.summary())}</p>",
           "<p class='legend'><span style='background:#bbf7d0'>linearized (numbered)</span>"
           "<span style='background:#fecaca'>refused next</span>"
           "<span style='background:#dbeafe'>ok</span><span style='background:#fef3c7'>info"
           " (dashed: unbounded)</span><span style='background:#eee'>fail</span>"
           "<span style='border:2px solid #1f2937'>in the witness</span></p>"]
    flagged = [p for p in result.partitions if p.verdict != "ok"]
    if flagged:
        out.append("<table><tr><th>object</th><th>keys</th><th>model</th><th>ops</th>"
                   "<th>verdict</th><th>steps</th></tr>")
        for p in flagged:
            out.append(f"<tr><td>{html.escape(p.object)}</td><td>{html.escape(', '.join(p.keys))}"
                       f"</td><td>{p.model}</td><td>{p.ops}</td><td>{p.verdict}</td>"
                       f"<td>{p.steps}</td></tr>")
        out.append("</table>")
    by_obj: dict[str, list[Operation]] = {}
    for op in result.history.ops():
        by_obj.setdefault(op.object, []).append(op)
    seen: set[str] = set()
    for a in result.anomalies:
        out.append(f"<h2>object {html.escape(a.object)} — {html.escape(a.kind)}</h2>")
        out.append(f"<p class='bad'>{html.escape(a.message)}</p>")
        out.append("<h3>witness</h3>")
        out.append(_svg(a.witness.ops, a.witness))
        out.append(f"<pre>{html.escape(witness_text(a.witness))}</pre>")
        if a.object not in seen:
            seen.add(a.object)
            keys = set(a.keys)
            ops = [o for o in by_obj.get(a.object, [])
                   if not keys or o.f in ("list", "txn") or o.key in keys]
            out.append(f"<h3>all {len(ops)} ops of the object on these keys</h3>")
            out.append(f"<div style='overflow-x:auto'>{_svg(ops, a.witness)}</div>")
        out.append("<details><summary>witness history (JSONL)</summary>"
                   f"<pre>{html.escape(a.witness.history.dumps())}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)
