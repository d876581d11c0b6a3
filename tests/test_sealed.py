"""After ``duro migrate`` seals the source, an app still pointed at it fails at once with an
error that names the seal and ``duro unseal`` (it used to time out after 5 s, silently)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import duro
from duro.backends import open_backend
from duro.migrate import migrate, unseal


class Counter(duro.DurableObject):
    async def increment(self) -> int:
        n: int = await self.storage.get("n", 0) + 1
        self.storage.put("n", n)
        return n


def test_a_sealed_object_fails_at_once_naming_the_seal(tmp_path: Path) -> None:
    src, dst = f"sqlite:///{tmp_path}/src.db", f"sqlite:///{tmp_path}/dst.db"

    async def write(url: str) -> int:
        async with duro.App(url, listen=None, call_timeout=120) as app:
            return await app.namespace(Counter).get_by_name("a").increment()

    assert asyncio.run(write(src)) == 1
    with open_backend(src) as s, open_backend(dst) as d:
        migrate(s, d, seal=True, wait=10)
    with pytest.raises(duro.BackendUnavailable, match=r"sealed by `duro migrate`.*duro unseal"):
        asyncio.run(write(src))
    assert asyncio.run(write(dst)) == 2  # the new store carries on
    with open_backend(src) as s:
        assert unseal(s) == 1
    assert asyncio.run(write(src)) == 2  # unsealed: the old store takes writes again
