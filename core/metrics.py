"""Prometheus metrics of an :class:`~duro.App` (the optional ``duro[metrics]`` extra).

The collector reads :meth:`duro.App.stats` at scrape time, so the runtime keeps no second set of
counters: per namespace, activations, turns, cache hits and misses, evictions, flushes, flushed
writes (batch sizes: writes ÷ flushes, and the largest batch), output-gate waits, resets,
fenced resets, alarm runs and failures, and forwarded calls.

    server = duro.metrics.start_metrics_server(app, port=9464)  # GET /metrics
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from duro.errors import BackendNotInstalled

if TYPE_CHECKING:
    from duro.app import App

__all__ = ["MetricsServer", "StatsCollector", "start_metrics_server"]

_COUNTERS = {
    "activations": "Object activations",
    "turns": "Turns (events delivered to objects)",
    "cache_hits": "Storage reads answered from the object's cache",
    "cache_misses": "Storage reads that went to the backend",
    "evictions": "Objects evicted (idle or closing)",
    "flushes": "Write batches committed",
    "flushed_writes": "Writes committed (sum of batch sizes)",
    "gate_waits": "Outputs held by the output gate until writes were durable",
    "resets": "Object resets (failed flush, fencing, abort)",
    "fenced": "Resets because another owner took over (a fenced commit or lease)",
    "alarms": "Alarm runs",
    "alarm_failures": "Alarm runs that raised (retried with backoff)",
    "forwarded": "Calls forwarded to the owning process",
}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise BackendNotInstalled(
            "metrics need prometheus_client: pip install 'duro[metrics]'") from None
    return prometheus_client


class StatsCollector:
    """A prometheus_client collector over ``app.stats()`` (one label: ``namespace``)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (called by prometheus_client at each scrape)."""
        _prometheus()
        from prometheus_client import core
        stats = self.app.stats()
        for name, doc in _COUNTERS.items():
            family = core.CounterMetricFamily(f"duro_{name}", doc, labels=["namespace"])
            for ns, s in stats.items():
                family.add_metric([ns], getattr(s, name))
            yield family
        largest = core.GaugeMetricFamily("duro_max_batch_size", "Largest write batch committed",
                                         labels=["namespace"])
        for ns, s in stats.items():
            largest.add_metric([ns], s.max_batch)
        yield largest


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`stop` shuts it down."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_address[1]

    def stop(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def start_metrics_server(app: App, port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve *app*'s metrics at ``http://addr:port/metrics`` from a background thread
    (``port=0`` picks a free port: read :attr:`MetricsServer.port`)."""
    prom = _prometheus()
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(app))
    server, thread = prom.start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)
