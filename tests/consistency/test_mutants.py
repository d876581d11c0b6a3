"""Every mutant (a deliberately broken duro) must be caught: ``duro check`` exits 1."""

from __future__ import annotations

import pytest
from rich.console import Console

from duro.backends import open_backend
from duro.consistency.mutants import MUTANTS, get_mutant
from duro.consistency.run_cli import check_command

# The settings CI uses for the deterministic histories (see test_workloads.py).
CI = {"seed": 0, "ops": 120, "objects": 2, "clients": 4, "processes": 2,
      "faults": "kill,pause,errors", "mode": "deterministic", "histories": 60}


# moto answers each S3 request in milliseconds and a history makes hundreds of them (about
# 2 s a history against 0.25 s on SQLite). On S3 the histories are shorter and of one object;
# with these settings every mutant is caught within 9 histories (the budget stays 60).
S3 = {**CI, "ops": 60, "objects": 1}


def settings(backend_name: str) -> dict[str, object]:
    return S3 if backend_name == "s3" else CI


def _group_commit(url: str) -> bool:
    with open_backend(url) as backend:
        return backend.group_commit


def fast(url: str) -> str:
    if url.startswith(("sqlite:", "lmdb:")) and "sync=" not in url:
        return url + ("&" if "?" in url else "?") + "sync=off"
    return url


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(name: str, duro_backend_url: str, duro_backend_name: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    console = Console(record=True, width=120)
    rc = check_command(fast(duro_backend_url), mutant=name, console=console, progress=False,
                       **settings(duro_backend_name))  # type: ignore[arg-type]
    text = console.export_text()
    if name == "group-skip-fence" and not _group_commit(duro_backend_url):
        assert rc == 2, text  # the mutant does not apply, and the run says so
        said = text + capsys.readouterr().err
        assert "does not apply" in " ".join(said.split()), said
        return
    assert rc == 1, text
    assert "ANOMALY" in text or "never answered" in text
    assert "replay: duro check" in text


def test_unmutated_run_passes_with_the_same_settings(duro_backend_url: str,
                                                     duro_backend_name: str) -> None:
    same = {**settings(duro_backend_name), "histories": 10}
    assert check_command(fast(duro_backend_url), progress=False,
                         console=Console(record=True), **same) == 0  # type: ignore[arg-type]


def test_usage_errors_exit_2(tmp_path: object) -> None:
    c = Console(record=True)
    assert check_command("memory://", faults="kill,meteor", console=c, progress=False) == 2
    assert check_command("memory://", mutant="nope", console=c, progress=False) == 2
    assert check_command("memory://", clients=9, console=c, progress=False) == 2
    assert check_command("nosuch://x", console=c, progress=False) == 2
    assert get_mutant(None) is None


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_default_run_catches_the_mutant_with_a_small_witness(name: str) -> None:
    """The default settings (probes on, rich workloads): a witness of at most 10 ops."""
    from duro.consistency.runner import WITNESS_GOAL, run_check

    summary = run_check("memory://", mutant=name, progress=False)
    assert summary.verdict == "anomaly", summary.table()
    assert summary.witness_ops is not None and summary.witness_ops <= WITNESS_GOAL, \
        summary.explanation
