"""The rule language: tokenizer, parser, compiler, refusals with offsets, and fuzzing."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.policy.compile import Rule, compile_rule
from common.policy.errors import RuleError


def rule(src: str, *, kind: str = "filter") -> Rule:
    return compile_rule(src, kind="filter" if kind == "filter" else "access", proxy=True)


def ev(src: str, record: Any = None, now: str | None = None, **inputs: Any) -> bool:
    """Evaluate ``src``; keyword ``auth_x`` is @request.auth.x, ``sub_x`` is @sub.x."""
    r = rule(src)
    values = tuple(inputs.get(f"{kind}_{name}") for kind, name in r.refs)
    return r.test(record, values, now)


def refused(src: str, *, kind: str = "filter", proxy: bool = True) -> RuleError:
    with pytest.raises(RuleError) as info:
        compile_rule(src, kind="filter" if kind == "filter" else "access", proxy=proxy)
    return info.value


# --- what evaluates to what -------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    src = "a = 1 || b = 1 && c = 1"
    assert ev(src, {"a": 1})
    assert not ev(src, {"b": 1})
    assert ev(src, {"b": 1, "c": 1})
    assert not ev("(a = 1 || b = 1) && c = 1", {"a": 1})
    assert ev("((a = 1)) && ((b = 2 || (c = 3)))", {"a": 1, "c": 3})


def test_literals_and_comments() -> None:
    rec = {"s": "it's", "d": 'say "hi"', "b": "back\\slash", "i": -5, "f": 2.5, "t": True}
    assert ev("s = 'it\\'s'", rec) and ev('s = "it\'s"', rec)
    assert ev('d = "say \\"hi\\""', rec) and ev("d = 'say \"hi\"'", rec)
    assert ev("b = 'back\\\\slash'", rec)
    assert ev("i = -5 && f = 2.5 && f > 2 && i < -4.5", rec)
    assert ev("t = true && missing = null && missing = '' && missing != false", rec)
    assert ev("i = -5 // the rest is a comment || i = 99\n && f = 2.5", rec)
    assert ev("// only a comment\n s != ''", rec)


def test_null_and_strict_types() -> None:
    assert ev("x = ''", {}) and ev("x = null", {"x": None}) and not ev("x != ''", {})
    assert not ev("x = 1", {"x": True}) and not ev("x = true", {"x": 1})
    assert ev("x = 1", {"x": 1.0}) and not ev("x = '1'", {"x": 1})
    assert not ev("x > 1", {"x": "2"}) and not ev("x < 'b'", {"x": 1})
    assert ev("x = @request.auth.id", {"x": "u1"}, auth_id="u1")
    assert not ev("x = @request.auth.id", {"x": "1"}, auth_id=1)


def test_containers_are_false_except_any_forms() -> None:
    rec = {"tags": ["a", "b"], "meta": {"level": 3}, "n": [1, 5]}
    for op in ("=", "!=", ">", "<", "~", "!~"):
        assert not ev(f"tags {op} 'a'", rec), op
        assert not ev(f"meta {op} 'a'", rec), op
    assert ev("tags ?= 'b'", rec) and not ev("tags ?= 'c'", rec)
    assert ev("tags ?!= 'a'", rec) and ev("n ?> 4", rec) and ev("n ?>= 5", rec)
    assert ev("n ?< 2", rec) and ev("n ?<= 1", rec) and not ev("n ?> 5", rec)
    assert ev("tags ?~ 'B'", rec) and ev("tags ?!~ 'a'", rec)
    assert ev("meta.level = 3", rec) and ev("meta.level ?= 3", rec)
    assert ev("x ?= 'a'", {"x": "a"}) and not ev("x ?= ''", {}) and not ev("x ?!= 'a'", {})
    assert ev("@request.auth.roles ?= 'admin'", {}, auth_roles=["user", "admin"])
    assert not ev("tags = @request.auth.t", rec, auth_t=["a", "b"])


def test_dotted_paths() -> None:
    rec = {"meta": {"a": {"b": "x"}}, "author": "u1", "items": [{"k": 1}, {"k": 2}]}
    assert ev("meta.a.b = 'x'", rec) and ev("meta.missing.deeper = null", rec)
    assert ev("items.1.k = 2", rec) and ev("items.9.k = null", rec)
    # a path through a non-object (e.g. a relation id) is unknown: false even for !=
    assert not ev("author.name != 'x'", rec) and not ev("author.name = null", rec)
    assert not ev("items.k ?= 1", rec)


def test_contains_and_like_literals() -> None:
    rec = {"title": "Hello World", "pct": "100% sure", "u": "a_b"}
    assert ev("title ~ 'o w'", rec) and ev("title !~ 'xyz'", rec)
    assert ev("title ~ 'hello%'", rec) and not ev("title ~ 'world%'", rec)
    assert ev("title ~ '%world'", rec) and ev("title ~ 'h_llo%'", rec)
    assert ev("pct ~ '0\\%'", rec) and not ev("title ~ 'o\\%w'", rec)
    assert ev("p ~ 'a\\b'", {"p": "xa\\by"}) and not ev("p ~ 'a\\b'", {"p": "ab"})
    assert ev("p ~ '%a\\b%'", {"p": "xa\\by"}) and ev("p ~ '%a\\\\b'", {"p": "xa\\b"})
    assert ev("p ~ '%\\%'", {"p": "50%"}) and not ev("p ~ '%\\%'", {"p": "50"})
    assert ev("u ~ 'a_b'", rec) and not ev("title ~ 'l_o'", rec)  # no % → _ is literal
    assert not ev("n ~ '1'", {"n": 12}) and not ev("n !~ '1'", {"n": 12})
    assert not ev("missing !~ 'x'", {})
    # a value on the right is always literal
    assert not ev("title ~ @request.auth.q", rec, auth_q="hello%")
    assert ev("pct ~ @request.auth.q", rec, auth_q="0% s")


def test_now() -> None:
    now = "2024-05-01 12:00:00.000Z"
    assert ev("expires > @now", {"expires": "2024-05-02 00:00:00.000Z"}, now=now)
    assert not ev("expires > @now", {"expires": "2024-04-30 00:00:00.000Z"}, now=now)
    assert rule("x > @now").reads_now and not rule("x > 1").reads_now
    assert ev("@now > '2000-01-01'", {})  # the real clock


def test_empty_rules() -> None:
    for src in ("", "   ", "// nothing\n", "\n\t// a\n// b"):
        r = rule(src)
        assert r.is_empty and r.test(None, ())


@pytest.mark.parametrize(
    "value",
    [
        '" || true || "',
        "' || true || '",
        "\\",
        "\\'",
        '\\"',
        "%",
        "_",
        "%%",
        "a' OR '1'='1",
        "x) || (1 = 1",
        "@request.auth.id",
        "null",
        "",
    ],
)
def test_injection_looking_values_are_plain_data(value: str) -> None:
    # the rule is parsed once; record and claim values are never re-parsed
    assert not ev("status = 'published'", {"status": value})
    assert ev("status = @request.auth.v", {"status": value}, auth_v=value)
    assert not ev("status = @request.auth.v", {"status": value + "x"}, auth_v=value)
    assert ev("status ~ @request.auth.v", {"status": "a" + value + "b"}, auth_v=value)
    assert not ev("status ~ 'published'", {"status": value})
    if value not in ("", "%", "%%", "_"):
        assert not ev("other ~ @request.auth.v", {"other": "plain text"}, auth_v=value)


# --- refused at load, with the offset of the culprit -----------------------------------


@pytest.mark.parametrize(
    ("src", "offset", "words"),
    [
        ("a == 1", 2, "use '='"),
        ("a <> 1", 2, "'!='"),
        ("a = 1 & b = 2", 6, "'&&'"),
        ("a = 1 | b = 2", 6, "'||'"),
        ("!(a = 1)", 0, "no unary not"),
        ("a =~ 'x'", 2, "unknown operator"),
        ("tags:each = 'a'", 4, ":each"),
        ("status:changed = true", 6, ":changed"),
        ("x:isset = true", 1, ":isset"),
        ("tags:length > 1", 4, ":length"),
        ("@request.auth.name:lower = 'x'", 18, ":lower"),
        ("a:foo = 1", 1, "modifier"),
        ("@collection.posts.author = @request.auth.id", 0, "proxy = true"),
        ("comments_via_post.author = @request.auth.id", 0, "back-relation"),
        ("@request.auth.team.owner = 'x'", 0, "[claims]"),
        ("@request.body.x = 1", 0, "request body"),
        ("@request.query.x = 1", 0, "query"),
        ("@request.headers.x = 1", 0, "headers"),
        ("@request.method = 'GET'", 0, "method"),
        ("@request.context = 'x'", 0, "context"),
        ("@request.foo = 1", 0, "@request.auth"),
        ("x > @yesterday", 4, "not supported"),
        ("x > @todayStart", 4, "not supported"),
        ("strftime('%Y', created) = '2024'", 0, "function"),
        ("x = lower (y)", 4, "function"),
        ("a = 'unterminated", 4, "never closed"),
        ("a = 1 b = 2", 6, "expected '&&'"),
        ("a = ", 4, "expected a field"),
        ("(a = 1", 6, "expected ')'"),
        ("a", 1, "expected an operator"),
        ("a = 1)", 5, "expected '&&'"),
        ("a = #", 4, "unexpected character"),
        ("a = 1x", 4, "invalid number"),
        ("a = -", 4, "'-'"),
        ("a = @", 4, "'@'"),
    ],
)
def test_refused_with_offset(src: str, offset: int, words: str) -> None:
    err = refused(src)
    assert err.offset == offset, err
    assert words in err.message, err.message


def test_database_features_point_to_the_proxy() -> None:
    for src in ("@collection.x.y = 1", "tags:each = 'a'", "f(x) = 1", "a_via_b.c = 1"):
        assert "subscribe proxy" in refused(src).message


def test_length_and_nesting_limits() -> None:
    long_rule = "a = '" + "x" * 5000 + "'"
    assert "4096" in refused(long_rule).message
    ok = "(" * 32 + "a = 1" + ")" * 32
    assert rule(ok).test({"a": 1}, ())
    err = refused("(" * 33 + "a = 1" + ")" * 33)
    assert err.offset == 32 and "32" in err.message
    err = refused("(" * 100 + "a = 1" + ")" * 100)
    assert err.offset == 32
    # long flat chains are fine (n-ary nodes, no recursion per operand)
    chain = " || ".join(f"a = {i}" for i in range(300))
    assert len(chain) < 4096 and rule(chain).test({"a": 299}, ())


def test_scope_of_operands() -> None:
    err = refused("@request.auth.id != '' && status = 'x'", kind="access")
    assert err.offset == 26 and "record fields belong in filter" in err.message
    err = refused("@sub.team = 'x'", kind="access")
    assert "only available in filter" in err.message
    err = refused("team = @sub.team", proxy=False)
    assert err.offset == 7 and "proxy = true" in err.message
    assert compile_rule("team = @sub.team", kind="filter", proxy=True).refs == (("sub", "team"),)
    assert compile_rule("@request.auth.id != '' && @now > '2020'", kind="access").refs == (
        ("auth", "id"),
    )
    assert "flat" in refused("@sub.a.b = 1").message


# --- fuzzing ----------------------------------------------------------------------------

_PIECES = ["&&", "||", "@request.auth.", "@sub.", "@now", "true", "null", "a.b", "//", "'x'"]
_ALPHABET = st.sampled_from([*"()=!<>~?&|'\"\\@.:,%_- \n/09azAZ", *_PIECES, "1.5", "?!~"])


def _only_rule_errors(src: str) -> None:
    try:
        r = compile_rule(src, kind="filter", proxy=True)
    except RuleError as exc:
        assert 0 <= exc.offset <= len(src)
        return
    r.test({"a": {"b": [1, "x"]}}, tuple("v" for _ in r.refs), "2024-01-01 00:00:00.000Z")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_random_text(src: str) -> None:
    _only_rule_errors(src)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ALPHABET, max_size=30).map("".join))
def test_fuzz_token_soup(src: str) -> None:
    _only_rule_errors(src)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2000), st.sampled_from(["(", "((a=1)||", "a=1&&("]))
def test_fuzz_deep_input_never_recurses_past_the_limit(n: int, unit: str) -> None:
    src = unit * n
    limit = sys.getrecursionlimit()
    try:
        _only_rule_errors(src)
    finally:
        assert sys.getrecursionlimit() == limit
