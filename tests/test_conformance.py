"""Run the backend conformance suite over every backend in ``DURO_TEST_BACKENDS``."""

from __future__ import annotations

import pytest

from duro.consistency.conformance import BackendConformance


class TestBackendConformance(BackendConformance):
    """The suite over the ``duro_backend_url`` fixture of the ``duro.testing`` plugin."""

    @pytest.fixture
    def backend_url(self, duro_backend_url: str) -> str:
        return duro_backend_url
