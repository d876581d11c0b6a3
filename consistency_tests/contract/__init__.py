"""The contract stage of ``duro check``: the storage contract, check by check.

Each ``checks_*`` module holds the checks of one contract area as plain functions of a
:class:`CheckContext`. The same functions serve ``duro check`` (stage 1, through
:func:`run_contract`) and the pytest suite :class:`duro.consistency.conformance.BackendConformance`.
They are deterministic: each drives the :class:`~duro.backends.Backend` API directly, with
explicit times, against a model of what the contract says the backend holds.
"""

from duro.consistency.contract import (  # noqa: F401  (importing registers the checks)
    checks_reads,
    checks_batches,
    checks_leases,
    checks_registry,
    checks_durability,
    checks_concurrency,
    checks_errors,
)
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

__all__ = [
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
