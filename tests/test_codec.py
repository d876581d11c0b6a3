"""The value codec: what round-trips, what is refused (and how clearly), and the size limit."""

from __future__ import annotations

import datetime as dt
import math
from collections import OrderedDict
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duro.codec import DEFAULT_MAX_VALUE_BYTES, FORMAT_TAG, decode, encode, encode_value
from duro.errors import DuroError, UnsupportedValue, ValueTooLarge

UTC = dt.UTC
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))

ROUND_TRIPS: list[Any] = [
    None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, -0.0, 1.5, 1e308,
    math.inf, -math.inf, "", "hello", "é😀\x00\uffff", b"", b"\x00\xff" * 10, [], {},
    [1, "a", b"b", None, [2.5, {"k": [True]}]],
    {"nested": {"deeper": {"list": [1, 2, {"x": b"y"}]}}, "": "empty key"},
    dt.datetime(2024, 2, 29, 12, 30, 45, 123456),
    dt.datetime(1970, 1, 1, tzinfo=UTC),
    dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=IST),
    {"when": [dt.datetime(2000, 1, 1, 0, 0), dt.datetime(2000, 1, 1, tzinfo=IST)]},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_round_trip(value: object) -> None:
    data = encode(value)
    assert data[:1] == FORMAT_TAG
    got = decode(data)
    assert got == value
    assert type(got) is type(value)


def test_nan_round_trips() -> None:
    assert math.isnan(decode(encode(math.nan)))


def test_bool_stays_bool_and_int_stays_int() -> None:
    assert decode(encode([True, 1, False, 0])) == [True, 1, False, 0]
    assert [type(x) for x in decode(encode([True, 1]))] == [bool, int]


def test_naive_datetime_stays_naive_and_aware_keeps_its_offset() -> None:
    naive = dt.datetime(2024, 5, 6, 7, 8, 9, 10)
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=IST)
    got_naive, got_aware = decode(encode([naive, aware]))
    assert got_naive.tzinfo is None and got_naive == naive
    assert got_aware.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert got_aware == aware and got_aware.microsecond == 10


def test_tuples_encode_as_lists() -> None:
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]


def test_dict_subclass_is_refused() -> None:
    # only plain containers are values; an OrderedDict is a custom type
    with pytest.raises(UnsupportedValue):
        encode(OrderedDict(a=1))


class _Custom:
    pass


@pytest.mark.parametrize(
    ("value", "where", "what"),
    [
        ({1, 2}, "top level", "set"),
        (frozenset(), "top level", "frozenset"),
        (_Custom(), "top level", "_Custom"),
        (dt.date(2024, 1, 1), "top level", "date"),
        (dt.timedelta(seconds=1), "top level", "timedelta"),
        (bytearray(b"x"), "top level", "bytearray"),
        ([1, 2, {3}], "[2]", "set"),
        ({"a": [1, {"b": _Custom()}]}, "['a'][1]['b']", "_Custom"),
        ((1, (2, {4})), "[1][1]", "set"),
    ],
    ids=["set", "frozenset", "object", "date", "timedelta", "bytearray", "in-list",
         "in-dict", "in-tuple"],
)
def test_unsupported_values_name_where(value: object, where: str, what: str) -> None:
    with pytest.raises(UnsupportedValue) as info:
        encode(value)
    assert where in str(info.value)
    assert what in str(info.value)
    assert isinstance(info.value, TypeError)  # also a TypeError, as documented


@pytest.mark.parametrize("key", [1, None, b"k", (1, 2), 1.5])
def test_non_str_dict_keys_are_refused(key: object) -> None:
    with pytest.raises(UnsupportedValue, match="only str keys"):
        encode({"outer": {key: "v"}})


def test_non_str_dict_key_error_names_where() -> None:
    with pytest.raises(UnsupportedValue) as info:
        encode({"outer": [{1: "v"}]})
    assert "['outer'][0]" in str(info.value)


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_ints_beyond_64_bits_are_refused(value: int) -> None:
    with pytest.raises(UnsupportedValue):
        encode(value)
    with pytest.raises(UnsupportedValue):
        encode({"n": [value]})


def test_int_out_of_range_error_names_where() -> None:
    with pytest.raises(UnsupportedValue) as info:
        encode({"n": [0, 2**64]})
    assert "['n'][1]" in str(info.value)
    assert "64" in str(info.value)


def test_value_too_large_at_the_boundary() -> None:
    overhead = len(encode(b"x" * 70_000)) - 70_000  # tag + bin32 header, fixed from 64 KiB up
    n = DEFAULT_MAX_VALUE_BYTES - overhead
    exactly = encode_value(b"x" * n)
    assert len(exactly) == DEFAULT_MAX_VALUE_BYTES
    with pytest.raises(ValueTooLarge) as info:
        encode_value(b"x" * (n + 1))
    assert f"{DEFAULT_MAX_VALUE_BYTES:,}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_value_limit_is_configurable() -> None:
    data = encode("a" * 10)
    assert encode_value("a" * 10, max_bytes=len(data)) == data
    with pytest.raises(ValueTooLarge):
        encode_value("a" * 10, max_bytes=len(data) - 1)
    big = b"x" * (DEFAULT_MAX_VALUE_BYTES * 2)
    assert decode(encode_value(big, max_bytes=DEFAULT_MAX_VALUE_BYTES * 3)) == big


def test_unsupported_value_is_checked_before_size() -> None:
    with pytest.raises(UnsupportedValue):
        encode_value([b"x" * (DEFAULT_MAX_VALUE_BYTES + 1), {1}])


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x02" + msgpack.packb(1), b"\x80abc",
                                  msgpack.packb({"a": 1})])
def test_decode_refuses_a_foreign_tag(data: bytes) -> None:
    with pytest.raises(UnsupportedValue, match="codec tag"):
        decode(data)


@pytest.mark.parametrize("data", [FORMAT_TAG + b"\xc1", FORMAT_TAG + b"\x92\x01",
                                  FORMAT_TAG + b"\x01\x02",
                                  FORMAT_TAG + msgpack.packb(msgpack.ExtType(9, b"x"))],
                         ids=["reserved-byte", "truncated", "extra-data", "unknown-ext"])
def test_decode_of_corrupt_data_raises_a_duro_error(data: bytes) -> None:
    with pytest.raises(DuroError):
        decode(data)


def test_encoding_is_deterministic() -> None:
    value = {"b": 1, "a": [dt.datetime(2024, 1, 1, tzinfo=UTC), b"x"]}
    assert encode(value) == encode(value)


_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text() | st.binary()
            | st.datetimes(timezones=st.none() | st.timezones()))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=20,
)


@given(_values)
def test_any_supported_value_round_trips(value: object) -> None:
    assert decode(encode(value)) == value
