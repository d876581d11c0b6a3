"""``broken-s3-gc://bucket/prefix?...``: the S3 backend as it was before issue 20's GC fix.

Two defects together, as the bug was found: garbage collection is not fenced (an owner deletes
log records below its checkpoint even after a newer owner bumped the epoch), and a slot that a
create-only PUT found taken (412) and then gone (404) is taken as free and PUT again. A new
owner's fence can then land in a slot the old owner's GC already collected, below a checkpoint
where no loader looks: the new owner's acknowledged writes are lost and the old owner is never
fenced. Only a race of a zombie owner against a takeover while GC runs shows it: ``duro
check``'s ``gc-race`` fault.
"""

from __future__ import annotations

from typing import ClassVar

from duro.backends._s3 import S3Backend, _Obj
from duro.backends._s3_log import Record
from duro.backends._s3_store import Outcome, PutResult
from duro.errors import BackendUnavailable, Fenced

__all__ = ["UnfencedGcS3"]


class UnfencedGcS3(S3Backend):
    """S3 with unfenced GC and 412-then-404 taken as a free slot (see the module docs)."""

    scheme: ClassVar[str] = "broken-s3-gc"

    def _write_checkpoint(self, o: _Obj, seq: int, body: bytes, old: list[int],
                          epoch: int) -> None:
        key = o.snap_key(seq)
        res = self._store.put_conditional(key, body)
        if res.outcome not in (Outcome.OK, Outcome.PRECONDITION_FAILED):
            raise BackendUnavailable(f"could not write checkpoint {key}")
        # the defect: no CAS of the GC boundary under our epoch before deleting
        doomed = [o.log_key(s) for s in old if s < seq]
        doomed += [k for k in self._store.list_keys(o.snap_folder)
                   if self._layout.parse_seq(k, o.snap_folder) < seq]
        for k in doomed:
            self._store.delete(k)

    def _land(self, o: _Obj, seq: int, body: bytes, wid: str, res: PutResult) -> Record:
        for _ in range(8):
            try:
                return super()._land(o, seq, body, wid, res)
            except Fenced as exc:
                if "collected" not in str(exc):
                    raise
                # the defect: taken, then gone, is "free": PUT into the collected slot again
                res = self._store.put_conditional(o.log_key(seq), body)
        raise BackendUnavailable(f"slot {seq} kept changing")
