"""Audience plans and the Audience helper, checked against brute force.

For random filters, subscribers and records, ``Audience.match`` must return exactly the Views
for which ``View.matches`` holds (plus every View for a delete under ``on_delete = "all"``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from common.policy.audience import Audience
from common.policy.claims import ClaimMap
from common.policy.compile import compile_rule
from common.policy.plan import MAX_TERMS, build_plan
from common.policy.values import index_key
from common.policy.view import Filter, View

NOW = "2024-05-01 12:00:00.000Z"
CLAIMS = ClaimMap.from_lists({"x": ["x", "alt"], "y": ["y"]})

# few values, so that subscribers and records often agree (and the index is exercised)
COMMON: list[Any] = ["u1", "u2", "", None, 1, True]
RARE: list[Any] = [1.0, 2, False, 0, ["u1", 2], {"k": 1}, "U1", NOW, "2024-06-01 00:00:00.000Z"]
pool = st.one_of(st.sampled_from(COMMON), st.sampled_from(COMMON), st.sampled_from(RARE))
FIELDS = ["a", "b", "tags", "meta.x"]
INPUTS = ["@request.auth.x", "@request.auth.y", "@sub.z"]
LITERALS = ["'u1'", "''", "null", "1", "1.0", "true", "'u%'", "'%1'", "'U1'", "@now"]
OPS = ["=", "!=", ">", ">=", "<", "<=", "~", "!~", "?=", "?!=", "?>", "?~"]


def _compare(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["index", "index_rev", "index_lit", "any", "any"]))
    field = draw(st.sampled_from(FIELDS))
    inp = draw(st.sampled_from(INPUTS))
    if kind == "index":
        return f"{field} = {inp}"
    if kind == "index_rev":
        return f"{inp} = {field}"
    if kind == "index_lit":  # an indexable term whose residual reads no input
        other = draw(st.sampled_from(FIELDS))
        lit = draw(st.sampled_from(LITERALS))
        return f"{field} = {inp} && {other} {draw(st.sampled_from(OPS))} {lit}"
    left = draw(st.sampled_from([*FIELDS, *INPUTS]))
    right = draw(st.sampled_from([*FIELDS, *INPUTS, *LITERALS]))
    return f"{left} {draw(st.sampled_from(OPS))} {right}"


@st.composite
def filters(draw: st.DrawFn, depth: int = 3) -> str:
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return _compare(draw)
    items = draw(st.lists(filters(depth - 1), min_size=2, max_size=3))
    joined = f" {draw(st.sampled_from(['&&', '||']))} ".join(items)
    return f"({joined})" if draw(st.booleans()) else joined


@st.composite
def records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([None, [], "str"]))
    rec: dict[str, Any] = {}
    for name in ("a", "b", "tags"):
        if draw(st.integers(0, 3)):
            rec[name] = draw(st.one_of(pool, st.lists(pool, max_size=3)))
    if draw(st.booleans()):
        rec["meta"] = draw(st.one_of(st.fixed_dictionaries({"x": pool}), pool))
    return rec


@st.composite
def subscribers(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    claims = {k: draw(pool) for k in ("x", "alt", "y") if draw(st.integers(0, 3))}
    return claims, ({"z": draw(pool)} if draw(st.booleans()) else {})


def brute(views: set[View], record: Any, action: str, on_delete: str) -> set[View]:
    if action == "delete" and on_delete == "all":
        return set(views)
    return {v for v in views if v.matches(record, action=action, now=NOW)}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(filters(), min_size=1, max_size=2),
    st.lists(st.tuples(st.integers(0, 2), subscribers()), min_size=2, max_size=12),
    st.lists(
        st.tuples(records(), st.sampled_from(["create", "update", "delete"])),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["filter", "all"]),
    st.booleans(),
)
def test_audience_matches_brute_force(
    sources: list[str],
    subs: list[tuple[int, tuple[dict[str, Any], dict[str, Any]]]],
    events: list[tuple[Any, str]],
    on_delete: str,
    with_all: bool,
) -> None:
    flts = [Filter(compile_rule(s, kind="filter", proxy=True), CLAIMS) for s in sources]
    audience = Audience(on_delete)  # type: ignore[arg-type]
    views: set[View] = set()
    for which, (claims, sub_vars) in subs:
        view = flts[which % len(flts)].view(claims, sub_vars)
        audience.add(view)
        views.add(view)
    if with_all:
        audience.add(View.ALL)
        views.add(View.ALL)
    assert len(audience) == len(views)
    for record, action in events:
        if action == "delete" and record == []:
            record = None
        assert audience.match(record, action, now=NOW) == brute(views, record, action, on_delete)
    # the plan is the filter: OR over terms of (index conjunct && residual)
    for flt in flts:
        for record, _action in events:
            for v in {v for v in views if v.filter is flt}:
                expected = flt.rule.test(record, v.inputs, NOW)
                got = False
                for term in flt.plan.terms:
                    if term.index is not None:
                        rk = term.index.record_key(record)
                        if rk is None or rk != term.index.view_key(v.inputs):
                            continue
                    got = got or term.residual(record, v.inputs, NOW)
                assert got == expected, (flt.rule.source, record, v.inputs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), subscribers()), max_size=30), records())
def test_add_remove_counts(
    ops: list[tuple[bool, tuple[dict[str, Any], dict[str, Any]]]], record: Any
) -> None:
    flt = Filter(
        compile_rule("a = @request.auth.x || b ?= @sub.z", kind="filter", proxy=True), CLAIMS
    )
    audience = Audience()
    counts: dict[View, int] = {}
    for add, (claims, sub_vars) in ops:
        view = flt.view(claims, sub_vars)
        if add:
            audience.add(view)
            counts[view] = counts.get(view, 0) + 1
        else:
            audience.remove(view)
            if counts.get(view):
                counts[view] -= 1
                if not counts[view]:
                    del counts[view]
    assert set(audience) == set(counts)
    assert audience.match(record, "create") == brute(set(counts), record, "create", "filter")
    for view, n in list(counts.items()):
        for _ in range(n):
            audience.remove(view)
    assert len(audience) == 0 and audience.match({"a": "u1"}, "create") == set()


def _plan(src: str) -> Any:
    return build_plan(compile_rule(src, kind="filter", proxy=True))


def test_plan_shapes() -> None:
    plan = _plan("status = 'published' || author = @request.auth.id")
    assert plan.exact and plan.reads_inputs and not plan.reads_now
    first, second = plan.terms
    assert first.index is None and not first.reads_inputs
    assert second.index is not None and second.index.path == ("author",)
    assert second.index.ref == ("auth", "id") and not second.reads_inputs
    plan = _plan("(@sub.team = meta.team || owner = @request.auth.id) && created > @now")
    assert len(plan.terms) == 2 and plan.reads_now
    assert plan.terms[0].index is not None and plan.terms[0].index.path == ("meta", "team")
    assert plan.terms[0].index.ref == ("sub", "team") and plan.terms[0].conjuncts == 2
    plan = _plan("a ?= @request.auth.x && b != @request.auth.y")
    assert plan.terms[0].index is None and plan.terms[0].reads_inputs
    assert not _plan("a = 1 && b = 'x'").reads_inputs


def test_plan_falls_back_beyond_max_terms() -> None:
    src = " && ".join(f"(f{i} = 1 || g{i} = @request.auth.x)" for i in range(7))  # 2**7 terms
    plan = _plan(src)
    assert not plan.exact and len(plan.terms) == 1 and plan.terms[0].index is None
    assert plan.terms[0].reads_inputs
    assert _plan(" && ".join(f"(f{i} = 1 || g{i} = 2)" for i in range(6))).exact  # 64 terms
    assert MAX_TERMS == 64


def test_index_lookup_uses_language_equality() -> None:
    flt = Filter(compile_rule("a = @request.auth.x", kind="filter"), CLAIMS)
    audience = Audience()
    views = {flt.view({"x": v}) for v in ("u1", 1, True, "", None, ["u1"])}
    for v in views:
        audience.add(v)
    got = audience.match({"a": 1.0}, "create")
    assert {v.inputs for v in got} == {(1,)}
    got = audience.match({"a": ""}, "create")
    assert {v.inputs for v in got} == {("",), (None,)}
    assert {v.inputs for v in audience.match({}, "create")} == {("",), (None,)}
    assert {v.inputs for v in audience.match({"a": True}, "create")} == {(True,)}
    assert audience.match({"a": ["u1"]}, "create") == set()
    assert index_key(["u1"]) is None


def test_deletes() -> None:
    flt = Filter(compile_rule("a = @request.auth.x", kind="filter"), CLAIMS)
    v1, v2 = flt.view({"x": "u1"}), flt.view({"x": "u2"})
    audience = Audience()
    for v in (v1, v2, View.ALL):
        audience.add(v)
    assert audience.match({"a": "u1"}, "delete") == {v1, View.ALL}
    assert audience.match(None, "delete") == {View.ALL}
    assert not v1.matches(None, action="delete") and View.ALL.matches(None, action="delete")
    audience.on_delete = "all"
    assert audience.match(None, "delete") == {v1, v2, View.ALL}
    assert audience.match({"a": "u1"}, "update") == {v1, View.ALL}


def test_every_matching_view_is_returned() -> None:
    # non-indexable terms that read inputs: each distinct View is evaluated
    flt = Filter(
        compile_rule("a != @request.auth.x || b ?= @request.auth.y", kind="filter"), CLAIMS
    )
    views = [flt.view({"x": x, "y": y}) for x in ("u1", "u2", "u3") for y in ("p", "q")]
    audience = Audience()
    for v in views:
        audience.add(v)
    record = {"a": "u1", "b": ["q"]}
    expected = {v for v in views if v.inputs[0] != "u1" or v.inputs[1] == "q"}
    assert len(expected) == 5
    assert audience.match(record, "update") == expected == brute(set(views), record, "x", "")
    # an indexable term selecting several Views, then a residual that reads no input
    flt2 = Filter(compile_rule("team = @request.auth.x && level > 2", kind="filter"), CLAIMS)
    views2 = [flt2.view({"x": "t", "y": str(i)}) for i in range(3)] + [flt2.view({"x": "s"})]
    for v in views2:
        audience.add(v)
    got = audience.match({"team": "t", "level": 3, "a": "u1"}, "create")
    assert {v for v in got if v.filter is flt2} == {views2[0]}  # y is not read: one View
    assert audience.match({"team": "t", "level": 1, "a": "u1"}, "create") & set(views2) == set()


def test_filter_flags() -> None:
    f1 = Filter(compile_rule("a = 1", kind="filter"), CLAIMS)
    f2 = Filter(compile_rule("a = @request.auth.x && b < @now", kind="filter"), CLAIMS)
    assert not f1.reads_inputs and not f1.reads_now
    assert f2.reads_inputs and f2.reads_now and f2.plan.reads_now
    assert f1.view({"x": 1}) == f1.view({"x": 2}) and f2.view({"x": 1}) != f2.view({"x": 2})
