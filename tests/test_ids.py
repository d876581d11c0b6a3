"""Object IDs: deterministic from names, random when unique, checked when parsed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from duro.errors import InvalidObjectId
from duro.ids import ObjectId, id_from_name, id_from_string, new_unique_id

HEX64 = re.compile(r"[0-9a-f]{64}")


def test_id_from_name_is_deterministic_within_and_across_processes() -> None:
    a = id_from_name("Counter", "alice")
    assert a == id_from_name("Counter", "alice")
    assert HEX64.fullmatch(str(a))
    assert a.name == "alice" and a.namespace == "Counter"
    other = subprocess.run(
        [sys.executable, "-c",
         "from duro.ids import id_from_name; print(id_from_name('Counter', 'alice'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert other == str(a)


def test_names_and_namespaces_give_different_ids() -> None:
    ids = {str(id_from_name(ns, n)) for ns in ("A", "B", "") for n in ("x", "y", "", "é")}
    assert len(ids) == 12


def test_unique_ids_are_distinct_and_well_formed() -> None:
    ids = [new_unique_id("Room") for _ in range(2000)]
    assert len({str(i) for i in ids}) == len(ids)
    assert all(HEX64.fullmatch(str(i)) and i.name is None for i in ids)
    # the random body is not shared: compare the first 24 bytes of two IDs bit by bit
    a, b = (bytes.fromhex(str(i))[:24] for i in ids[:2])
    assert a != b


def test_ids_are_hashable_and_compare_by_namespace_and_hex() -> None:
    a = id_from_name("Counter", "alice")
    parsed = id_from_string("Counter", str(a))
    assert parsed == a and hash(parsed) == hash(a)
    assert parsed.name is None  # a parsed ID does not know its name
    assert {a: 1}[parsed] == 1
    assert isinstance(a, ObjectId)
    assert repr(a).startswith("ObjectId('Counter'")


def test_id_from_string_round_trips_unique_ids() -> None:
    u = new_unique_id("Room")
    assert id_from_string("Room", str(u)) == u


@pytest.mark.parametrize(
    "s",
    ["", "abc", "0" * 63, "0" * 65, "g" * 64, "A" * 64, " " + "0" * 63, "0" * 63 + "\n",
     "\uff10" * 64],
    ids=["empty", "short", "63", "65", "non-hex", "uppercase", "space", "newline", "fullwidth"],
)
def test_id_from_string_rejects_malformed(s: str) -> None:
    with pytest.raises(InvalidObjectId, match="64 lowercase hex"):
        id_from_string("Counter", s)


def test_id_from_string_rejects_uppercase_of_a_real_id() -> None:
    real = str(id_from_name("Counter", "alice"))
    with pytest.raises(InvalidObjectId):
        id_from_string("Counter", real.upper())


@pytest.mark.parametrize("s", [None, 123, b"0" * 64])
def test_id_from_string_rejects_non_str(s: object) -> None:
    with pytest.raises(InvalidObjectId):
        id_from_string("Counter", s)  # type: ignore[arg-type]


def test_id_from_string_rejects_foreign_namespace_ids() -> None:
    foreign = id_from_name("Other", "alice")
    with pytest.raises(InvalidObjectId, match="not minted by namespace 'Counter'"):
        id_from_string("Counter", str(foreign))
    with pytest.raises(InvalidObjectId):
        id_from_string("Counter", str(new_unique_id("Other")))
    assert id_from_string("Other", str(foreign)) == foreign


def test_id_from_string_rejects_tampered_ids() -> None:
    real = str(id_from_name("Counter", "alice"))
    for i in (0, 30, 63):
        flipped = real[:i] + ("0" if real[i] != "0" else "1") + real[i + 1:]
        with pytest.raises(InvalidObjectId):
            id_from_string("Counter", flipped)


def test_invalid_object_id_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        id_from_string("Counter", "nope")


def test_names_must_be_str() -> None:
    with pytest.raises(InvalidObjectId):
        id_from_name("Counter", 42)  # type: ignore[arg-type]
