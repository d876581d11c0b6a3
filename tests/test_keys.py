"""Storage keys: validation, the 2,048-byte limit, and the byte-range helpers behind ``list()``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duro.errors import InvalidKey
from duro.keys import MAX_KEY_BYTES, encode_key, key_range, successor


@pytest.mark.parametrize("key", ["", "a", "é😀", "\x00", "x" * MAX_KEY_BYTES,
                                 "é" * (MAX_KEY_BYTES // 2), "😀" * (MAX_KEY_BYTES // 4)])
def test_valid_keys_encode_as_utf8(key: str) -> None:
    assert encode_key(key) == key.encode("utf-8")


@pytest.mark.parametrize("key", [b"bytes", 1, None, 1.5, ("a",), ["a"]])
def test_keys_must_be_str(key: object) -> None:
    with pytest.raises(InvalidKey, match="must be str") as info:
        encode_key(key)
    assert isinstance(info.value, TypeError)


def test_str_subclass_is_refused() -> None:
    class Sub(str):
        pass

    with pytest.raises(InvalidKey):
        encode_key(Sub("a"))


@pytest.mark.parametrize("key", ["x" * (MAX_KEY_BYTES + 1), "é" * (MAX_KEY_BYTES // 2) + "a",
                                 "😀" * (MAX_KEY_BYTES // 4 + 1), "x" * 2047 + "é"])
def test_limit_is_2048_utf8_bytes(key: str) -> None:
    assert len(key.encode()) > MAX_KEY_BYTES
    with pytest.raises(InvalidKey, match="2,048") as info:
        encode_key(key)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "\udc80" * 3])
def test_lone_surrogates_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey, match="UTF-8"):
        encode_key(key)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [(b"", None), (b"\xff", None), (b"\xff\xff", None), (b"a", b"b"), (b"ab", b"ac"),
     (b"a\xff", b"b"), (b"a\xff\xff", b"b"), (b"\x00", b"\x01"), (b"a\x00", b"a\x01"),
     (b"\xfe", b"\xff"), (b"\xfe\xff", b"\xff"), (b"z\xfe\xff", b"z\xff")],
)
def test_successor(prefix: bytes, expected: bytes | None) -> None:
    assert successor(prefix) == expected


@given(st.binary(max_size=6), st.binary(max_size=6))
def test_successor_bounds_exactly_the_keys_with_the_prefix(prefix: bytes, key: bytes) -> None:
    hi = successor(prefix)
    in_range = key >= prefix and (hi is None or key < hi)
    assert in_range == key.startswith(prefix)


def test_start_and_start_after_together_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="start or start_after"):
        key_range(start="a", start_after="b")


def test_key_range_forms() -> None:
    assert key_range() == (None, None)
    assert key_range(start="b") == (b"b", None)
    assert key_range(start_after="b") == (b"b\x00", None)
    assert key_range(end="c") == (None, b"c")
    assert key_range(prefix="") == (b"", None)
    assert key_range(prefix="ab") == (b"ab", b"ac")
    assert key_range(prefix="ab", start="aa") == (b"ab", b"ac")
    assert key_range(prefix="ab", start="abc", end="abd") == (b"abc", b"abd")
    assert key_range(prefix="ab", end="zz") == (b"ab", b"ac")
    assert key_range(prefix="é") == ("é".encode(), b"\xc3\xaa")


def test_key_range_validates_its_keys() -> None:
    with pytest.raises(InvalidKey):
        key_range(start=b"a")  # type: ignore[arg-type]
    with pytest.raises(InvalidKey):
        key_range(prefix="x" * (MAX_KEY_BYTES + 1))
    with pytest.raises(InvalidKey):
        key_range(end="\ud800")


_texts = st.text(alphabet="ab\x00é\U0010ffff", max_size=4)


@given(st.sets(_texts, max_size=12), st.none() | _texts, st.none() | _texts,
       st.none() | _texts, st.none() | _texts, st.booleans())
def test_key_range_matches_cloudflare_list_semantics(
    keys: set[str], start: str | None, start_after: str | None, end: str | None,
    prefix: str | None, use_after: bool,
) -> None:
    """Filtering encoded keys by ``[lo, hi)`` equals filtering by the documented rules."""
    if use_after:
        start = None
    else:
        start_after = None
    lo, hi = key_range(start=start, start_after=start_after, end=end, prefix=prefix)
    got = sorted(k for k in keys
                 if (lo is None or k.encode() >= lo) and (hi is None or k.encode() < hi))

    def wanted(k: str) -> bool:
        b = k.encode()
        return ((start is None or b >= start.encode())
                and (start_after is None or b > start_after.encode())
                and (end is None or b < end.encode())
                and (prefix is None or k.startswith(prefix)))

    assert got == sorted(k for k in keys if wanted(k))
