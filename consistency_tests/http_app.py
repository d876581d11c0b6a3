"""The App that ``duro serve`` runs in the consistency suite's ``http`` mode.

:mod:`duro.consistency.http_mode` starts two (or more) processes of
``python -m duro.serve_cli duro.consistency.http_app:make_app --port 0`` (the code behind
``duro serve``) on one shared backend. Each serves :class:`~duro.consistency.target.KV`
(namespace ``KV``) over HTTP through its ``fetch``; a request for an object another process
owns is forwarded there by duro. The served App is configured by environment variables:

``DURO_CHECK_URL``
    the backend URL (required; ``duro serve --backend`` is not used, so the backend can be
    wrapped for faults and mutants);
``DURO_CHECK_SERVER``
    this server's tag, echoed as ``"server"`` in every KV response (``env["server"]``), so a
    client can tell a forwarded request from a local one;
``DURO_CHECK_LEASE_TTL``
    the lease time in seconds (default 1.0; the drift margin is a quarter of it);
``DURO_CHECK_IDLE``
    idle eviction in seconds (default 0.5);
``DURO_CHECK_MUTANT``
    a name from :data:`duro.consistency.mutants.MUTANTS`: the served runtime or backend is
    broken on purpose (test-only);
``DURO_CHECK_ERROR_RATE`` / ``DURO_CHECK_SEED``
    inject backend errors and latency (:class:`~duro.consistency.faults.FaultyBackend`);
``DURO_CHECK_STATS``
    a file to which the process appends, when it exits normally, one JSON line
    ``{"server", "injected", "calls"}`` (a ``kill -9`` leaves none).
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

from duro.app import App
from duro.backends import Backend, open_backend
from duro.consistency.faults import FaultyBackend
from duro.consistency.mutants import get_mutant
from duro.consistency.target import KV
from duro.errors import ConfigError

__all__ = ["make_app"]


def make_app() -> App:
    """The served App (configured by the environment, see the module docstring)."""
    env = os.environ
    url = env.get("DURO_CHECK_URL")
    if not url:
        raise ConfigError("DURO_CHECK_URL must name the backend of the consistency run")
    server = env.get("DURO_CHECK_SERVER", "0")
    ttl = float(env.get("DURO_CHECK_LEASE_TTL", "1.0"))
    mutant = get_mutant(env.get("DURO_CHECK_MUTANT"), cluster=True)  # its callers checked it
    backend: Backend = open_backend(url)
    faulty: FaultyBackend | None = None
    rate = float(env.get("DURO_CHECK_ERROR_RATE", "0") or 0)
    if rate > 0:
        faulty = FaultyBackend(backend, rate=rate, seed=int(env.get("DURO_CHECK_SEED", "0")),
                               latency=0.002)
        backend = faulty
    if mutant is not None and mutant.wrap is not None:
        backend = mutant.wrap(backend)
    app = App(backend, env={"server": server}, lease_ttl=ttl, drift_margin=ttl / 4,
              idle_timeout=float(env.get("DURO_CHECK_IDLE", "0.5")), call_timeout=30.0,
              alarm_poll_interval=1.0,
              unsafe=mutant.unsafe if mutant is not None else frozenset())
    app.namespace(KV)
    stats = env.get("DURO_CHECK_STATS")
    if stats:
        def report() -> None:
            line = {"server": server, "injected": faulty.total_injected if faulty else 0,
                    "calls": faulty.calls if faulty else 0}
            with Path(stats).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")

        atexit.register(report)
    return app
