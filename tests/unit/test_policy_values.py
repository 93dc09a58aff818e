"""Operator semantics of the rule language (PocketBase-compatible, strict types)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.policy.values import (
    UNKNOWN,
    any_of,
    contains,
    eq,
    freeze,
    ge,
    gt,
    index_key,
    le,
    like_matcher,
    lt,
    ne,
    not_contains,
    now_string,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.0**53, float("inf"), float("nan")]),
    st.integers(),
    st.floats(),
    st.sampled_from(["", "a", "A", "1", "true", "null"]),
    st.text(max_size=4),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=2), scalars, max_size=2),
    st.just(UNKNOWN),
)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (None, "", True),
        ("", None, True),
        (None, None, True),
        (None, 0, False),
        (None, False, False),
        (1, 1.0, True),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (True, True, True),
        ("1", 1, False),
        ("a", "A", False),
        ([1], [1], False),
        ({}, {}, False),
        (UNKNOWN, UNKNOWN, False),
        (UNKNOWN, None, False),
        (float("nan"), float("nan"), False),
    ],
)
def test_eq(a: Any, b: Any, expected: bool) -> None:
    assert eq(a, b) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (None, "", False),
        (None, "x", True),
        ("a", "b", True),
        (True, 1, True),
        (1, 1.0, False),
        ([1], 2, False),  # containers: deny by default, != included
        (1, [2], False),
        ({"a": 1}, "x", False),
        (UNKNOWN, "x", False),
    ],
)
def test_ne(a: Any, b: Any, expected: bool) -> None:
    assert ne(a, b) is expected


def test_ordering_is_strict() -> None:
    assert gt(2, 1.5) and ge(2, 2.0) and lt(-1, 0) and le(1.0, 1)
    assert gt("b", "a") and lt("2024-01-01 00:00:00.000Z", "2024-01-02 00:00:00.000Z")
    for a, b in [("2", 1), (1, "0"), (True, False), (None, ""), ("", None), ([2], 1), (2, [1])]:
        assert not (gt(a, b) or ge(a, b) or lt(a, b) or le(a, b)), (a, b)


def test_contains_is_case_insensitive_on_strings_only() -> None:
    assert contains("Hello World", "o w") and not_contains("Hello", "xyz")
    for a, b in [(None, "a"), ("a", None), (12, "1"), (["a"], "a"), (True, "t")]:
        assert not contains(a, b) and not not_contains(a, b)
    # values are literal: % and _ are plain characters
    assert not contains("abc", "a%c") and contains("50%", "0%")
    assert not contains("abc", "a_c") and contains("a_c", "a_c")


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("abc%", "ABCdef", True),
        ("abc%", "xabc", False),
        ("%def", "abcDEF", True),
        ("a%c", "abbbc", True),
        ("a%c", "abbbcd", False),
        ("a_c", "abc", True),
        ("a_c", "abbc", False),
        ("%a%b%c%", "xaybzc", True),
        ("%a%b%c%", "xcybza", False),
        ("a\\%%", "a%xyz", True),
        ("a\\%%", "abxyz", False),
        ("%\\_%", "a_b", True),
        ("%\\_%", "ab", False),
        ("%", "", True),
        ("_%", "", False),
        ("%aa", "aaa", True),
        ("aa%aa", "aaa", False),
    ],
)
def test_like_patterns(pattern: str, text: str, expected: bool) -> None:
    assert like_matcher(pattern)(text) is expected


def test_like_is_linear_on_hostile_input() -> None:
    pattern = "%a" * 1000 + "%b"
    assert like_matcher(pattern)("a" * 200_000) is False  # a backtracking regex would hang


def test_any_form() -> None:
    any_eq = any_of(eq)
    assert any_eq(["a", "b"], "b") and not any_eq(["a"], "b")
    assert any_eq("b", "b")  # a scalar is a one-element list
    assert not any_eq(None, "") and not any_eq([], "") and not any_eq(UNKNOWN, "")
    assert any_eq([None], "")
    assert any_of(ne)(["a", "b"], "a") and not any_of(ne)(["a"], "a")
    assert not any_eq([[1]], 1)


@given(values, values)
def test_index_key_agrees_with_eq(a: Any, b: Any) -> None:
    ka, kb = index_key(a), index_key(b)
    if ka is not None and kb is not None:
        assert eq(a, b) == (ka == kb)
        if ka == kb:
            assert hash(ka) == hash(kb)
    else:
        assert not eq(a, b)


def test_index_key_examples() -> None:
    assert index_key(None) == index_key("")
    assert index_key(1) == index_key(1.0)
    assert index_key(True) != index_key(1)
    assert index_key(False) != index_key(0)
    assert index_key([1]) is None and index_key({}) is None and index_key(UNKNOWN) is None
    assert index_key(float("nan")) is None


@given(values, values)
def test_freeze_never_merges_values_an_operator_tells_apart(a: Any, b: Any) -> None:
    if freeze(a) != freeze(b):
        return
    probes: list[Any] = [None, "", "a", 0, 1, 1.5, True, False, [1], UNKNOWN, a, b]
    for op in (eq, ne, gt, ge, lt, le, contains, not_contains, any_of(eq), any_of(gt)):
        for p in probes:
            if not (isinstance(p, float) and p != p):
                assert op(a, p) == op(b, p), (op, a, b, p)
                assert op(p, a) == op(p, b), (op, a, b, p)


def test_freeze_is_type_exact_and_flat() -> None:
    assert freeze(True) != freeze(1)
    assert freeze(None) != freeze("")
    assert freeze(1) == freeze(1.0)
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    assert freeze(deep) == freeze([[]])  # nested containers compare false anyway: no recursion
    hash(freeze({"a": [1, {"b": 2}]}))


def test_now_string_format() -> None:
    s = now_string()
    assert len(s) == 24 and s[4] == "-" and s[10] == " " and s[19] == "." and s.endswith("Z")
