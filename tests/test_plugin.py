"""The pytest plugin's choice of test backends (duro.testing)."""

from __future__ import annotations

import pytest

from duro.testing import pg_cluster, test_backend_names


def test_ci_never_drops_postgresql_from_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURO_TEST_BACKENDS", raising=False)
    monkeypatch.delenv("DURO_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setattr(pg_cluster, "find_postgres_bin", lambda: None)  # as if not installed
    monkeypatch.setenv("CI", "true")
    # Under CI "all" collects its cases, which fail with the install hint if it is missing.
    assert test_backend_names("all")[-1] == "postgresql"
    monkeypatch.delenv("CI")
    assert "postgresql" not in test_backend_names("all")  # off CI, a missing server is left out
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("DURO_TEST_BACKENDS", "sqlite,lmdb")
    assert test_backend_names() == ["sqlite", "lmdb"]  # an explicit list still restricts
