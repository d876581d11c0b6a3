"""The tunables of an App: :class:`AppConfig` and the per-object :class:`StorageLimits`.

A leaf of the foundation layer (it imports only errors and the cluster-secret check), so every
layer above can name the configuration without importing the App.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from duro.cluster_auth import check_secret
from duro.errors import ConfigError

__all__ = ["UNSAFE_FLAGS", "AppConfig", "StorageLimits"]


@dataclass(frozen=True)
class StorageLimits:
    """Per-object limits: value size, cache size (LRU over clean entries), dirty backpressure."""

    max_value_bytes: int = 128 * 1024
    cache_bytes: int = 16 * 1024 * 1024
    cache_entries: int = 100_000
    dirty_bytes: int = 8 * 1024 * 1024
    preload_keys: int = 256


UNSAFE_FLAGS = frozenset({"skip_lease_check", "ack_before_durable", "drop_coalesced_write",
                          "skip_cluster_auth", "ignore_lost_lease"})



@dataclass(frozen=True)
class AppConfig:
    """Tunables of an :class:`App` (all durations in seconds)."""

    lease_ttl: float = 10.0
    drift_margin: float = 1.0
    idle_timeout: float = 60.0
    max_queue: int = 1000
    call_timeout: float = 60.0
    drain_timeout: float = 30.0
    """How long closing the App waits for running turns before cutting them off."""
    alarm_poll_interval: float = 1.0
    alarm_retry_base: float = 2.0
    alarm_max_retries: int = 6
    io_threads: int = 32
    forward_connections: int = 128
    """Most calls in flight to one other process at a time (its pooled connections)."""
    forward_queue: int = 2048
    """Most calls waiting for one of those connections; beyond, a call is refused at once with
    :class:`~duro.errors.Overloaded` (it was never sent)."""
    forward_wait: float = 5.0
    """Longest wait for a pooled connection before a call is refused with ``Overloaded``."""
    shed_load: bool = True
    """Refuse new calls with :class:`~duro.errors.Overloaded` while lease renewals run late."""
    failover_wait: float = 0.0
    """How long a call waits for an owner that refuses connections to lose its lease before it
    fails with :class:`~duro.errors.BackendUnavailable` (``retry_after`` = the time the lease
    has left). 0: fail at once."""
    storage_limits: StorageLimits = field(default_factory=StorageLimits)
    cluster_secret: str | None = field(
        default_factory=lambda: os.environ.get("DURO_CLUSTER_SECRET")
    )
    """Overrides the cluster key that processes sharing the backend sign forwarded calls with
    (env ``DURO_CLUSTER_SECRET``; at least 16 characters). Unset (the default), the key is a
    random one the backend keeps, so every process that can open the backend is a peer."""
    cluster_max_body_bytes: int = 16 * 1024 * 1024
    """Largest request the cluster listener reads (at least the HTTP body limit plus 64 KiB)."""
    unsafe: frozenset[str] = frozenset()
    """Test-only mutations that break duro on purpose, so the consistency suite can prove it
    catches them: ``skip_lease_check``, ``ack_before_durable``, ``drop_coalesced_write``,
    ``ignore_lost_lease`` (renew as usual, but keep serving from the cache once a lease is
    lost); ``skip_cluster_auth`` (the benchmark's baseline for the cost of authentication)."""

    def __post_init__(self) -> None:
        bad = set(self.unsafe) - UNSAFE_FLAGS
        if bad:
            raise ConfigError(
                f"unknown unsafe flag(s) {sorted(bad)}; known: {sorted(UNSAFE_FLAGS)}"
            )
        if min(self.forward_connections, self.forward_queue + 1) < 1 or min(
            self.forward_wait, self.failover_wait
        ) < 0:
            raise ConfigError("forward_connections must be >= 1; forward_queue, forward_wait "
                              "and failover_wait must be >= 0")
        if self.lease_ttl <= self.drift_margin:
            raise ConfigError("lease_ttl must be greater than drift_margin")
        check_secret(self.cluster_secret)
