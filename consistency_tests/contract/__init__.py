"""The contract stage of ``duro check``: the storage contract, check by check.

Each ``checks_*`` module holds the checks of one contract area as plain functions of a
:class:`CheckContext`. The same functions serve ``duro check`` (stage 1, through
:func:`run_contract`) and the pytest suite :class:`duro.consistency.conformance.BackendConformance`.
They are deterministic: each drives the :class:`~duro.backends.Backend` API directly, with
explicit times, against a model of what the contract says the backend holds.
"""

import importlib

from duro.consistency.contract.context import (
    CHECKS,
    DEPTHS,
    T0,
    TRICKY_KEYS,
    CheckContext,
    ContractCheck,
    ContractViolation,
    RawErrorEscaped,
)
from duro.consistency.contract.run import CheckOutcome, ContractReport, run_contract

AREA_MODULES = ("reads", "batches", "leases", "registry", "durability", "concurrency", "errors")
"""The ``checks_*`` modules, in run order (importing one registers its checks)."""

for _module in AREA_MODULES:
    importlib.import_module(f"duro.consistency.contract.checks_{_module}")

__all__ = [
    "AREA_MODULES",
    "CHECKS",
    "DEPTHS",
    "T0",
    "TRICKY_KEYS",
    "CheckContext",
    "CheckOutcome",
    "ContractCheck",
    "ContractReport",
    "ContractViolation",
    "RawErrorEscaped",
    "run_contract",
]
