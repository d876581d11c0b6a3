"""A new user's script, type-checked with ``mypy --strict`` after the README's own install.

The README installs duro editable with ``editable_mode=strict`` (a link tree that type checkers
follow; the default editable finder hides the ``package-dir`` mapping from mypy). This test runs
in the environment that install made, from a folder outside the checkout, so mypy finds duro
only as an installed package.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import duro

SCRIPT = '''
import duro


class Counter(duro.DurableObject):
    async def increment(self, by: int = 1) -> int:
        n: int = await self.storage.get("n", 0)
        self.storage.put("n", n + by)
        return n + by


async def main() -> None:
    async with duro.App("memory://", listen=None, lease_ttl=5) as app:
        counters: duro.Namespace[Counter] = app.namespace(Counter)
        stub = counters.get(counters.id_from_name("alice"))
        total: int = await stub.increment(2)
        print(stub.id, total)
        {mistake}
'''


def mypy(tmp_path: Path, mistake: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(SCRIPT.format(mistake=mistake))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )


def test_a_correct_script_passes(tmp_path: Path) -> None:
    done = mypy(tmp_path, "pass")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


@pytest.mark.parametrize(("mistake", "expected"), [
    ("await stub.incremnt()", r'"Counter" has no attribute "incremnt"'),
    ('await stub.increment("two")', r'Argument 1 to "increment" of "Counter" has incompatible '
                                    r'type "str"; expected "int"'),
    ('name: str = await stub.increment(1)', r'Incompatible types in assignment \(expression has '
                                            r'type "int", variable has type "str"\)'),
    ("duro.App(lease_tll=5)", r'Unexpected keyword argument "lease_tll" for "App"'),
])
def test_mypy_strict_catches_the_mistake(tmp_path: Path,
                                         mistake: str, expected: str) -> None:
    done = mypy(tmp_path, mistake)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(expected, done.stdout), done.stdout
    assert "Cannot find implementation" not in done.stdout, done.stdout


def test_a_misspelled_app_option_fails_at_run_time_too() -> None:
    with pytest.raises(TypeError, match="lease_tll"):
        duro.App("memory://", lease_tll=5)  # type: ignore[call-arg]


def test_the_stub_is_a_stub_at_run_time() -> None:
    class Counter(duro.DurableObject):
        async def increment(self) -> int:
            return 1

    app = duro.App("memory://", listen=None)
    stub = app.namespace(Counter).get_by_name("a")
    assert isinstance(stub, duro.Stub)
    with pytest.raises(AttributeError, match="incremnt is not a public async method"):
        stub.incremnt  # type: ignore[attr-defined]  # noqa: B018
