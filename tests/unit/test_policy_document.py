"""The policy file: validation, and ``path:line:col`` locations of every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.policy import Policy, PolicyError, load_policy, parse_policy
from common.policy.view import View

ROOT = Path(__file__).resolve().parents[2]


def error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    return info.value


def at(text: str) -> tuple[int, int, str]:
    err = error(text)
    assert str(err) == f"p.toml:{err.line}:{err.col}: {err.message}"
    return err.line, err.col, err.message


def test_example_policy_parses() -> None:
    policy = load_policy(ROOT / "devstack" / "example-policy.toml")
    assert not policy.is_open and policy.has_webhooks and not policy.sender_is_open
    assert len(policy.collections) == 5
    assert policy.entry("staging", "posts") is not policy.entry("main", "posts")


def test_minimal_and_defaults() -> None:
    policy = parse_policy("version = 1\n", "p.toml")
    assert policy.unlisted == "deny" and not policy.has_webhooks and policy.sender_is_open
    d = policy.subscribe_decision({"id": "u"}, "db", "any", group=None)
    assert not d.allowed and d.message == "collection 'any' is not listed in the policy"
    open_policy = Policy.open()
    assert open_policy.is_open
    d = open_policy.subscribe_decision({}, "db", "any", group="g")
    assert d.allowed and d.view is View.ALL


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    assert at("") == (1, 1, at("")[2]) and "version = 1 is missing" in at("")[2]
    assert "version = 1 is missing" in at("# only a comment\n[defaults]\n")[2]
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert str(info.value).startswith(f"{missing}:1:1: cannot read the policy file")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"version = 1\n# \xff\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(PolicyError, match=r"empty\.toml:1:1: version = 1 is missing"):
        load_policy(empty)


def test_toml_syntax_errors_are_located() -> None:
    line, col, msg = at("version = 1\n[defaults\n")
    assert (line, col) == (2, 10) and "Expected ']'" in msg
    line, col, msg = at("version = 1\nx = ")
    assert (line, col) == (2, 5) and msg == "Invalid value"
    assert at("version = 1\n[[collection]]\nname='a'\n[collection]\n")[:2] == (4, 12)


def test_version() -> None:
    assert at("version = 2\n")[:2] == (1, 11)
    assert "version must be 1" in at("version = true\n")[2]
    assert "version must be 1" in at('version = "1"\n')[2]


def test_unknown_keys_with_suggestions() -> None:
    assert at("version = 1\nfoo = 2\n")[:2] == (2, 1)
    assert "did you mean 'version'" in at("versoin = 1\n")[2]
    text = (
        'version = 1\n[[collection]]\nname = "a"\n\n[[collection]]\nname = "b"\n  subscibe = ""\n'
    )
    line, col, msg = at(text)
    assert (line, col) == (7, 3) and "did you mean 'subscribe'" in msg
    assert at("version = 1\n[defaults]\nunlisted = 'deny'\nmode = 1\n")[:2] == (4, 1)
    assert at("version = 1\n[webhook]\nsender = ''\n")[:2] == (2, 1)
    assert "did you mean 'webhooks'" in at("version = 1\n[webhook]\n")[2]
    assert at("version = 1\n[webhooks]\nnetwork = []\n")[:2] == (3, 1)
    assert at("version = 1\n[superusers]\nrules = ''\n")[:2] == (3, 1)
    assert at('version = 1\ndefaults.unlisted = "deny"\ndefaults.x = 1\n')[:2] == (3, 1)


def test_duplicate_collection_points_at_the_second_entry() -> None:
    text = (
        'version = 1\n[[collection]]\nname = "a"\n[[collection]]\nname = "b"\n'
        '[[collection]]\ndatabase = "*"\nname = "a"\n'
    )
    line, col, msg = at(text)
    assert (line, col) == (6, 1) and "listed twice" in msg
    ok = 'version = 1\n[[collection]]\nname = "a"\n[[collection]]\ndatabase = "x"\nname = "a"\n'
    assert len(parse_policy(ok, "p").collections) == 2


def test_rule_errors_are_located_inside_the_string() -> None:
    text = "version = 1\n[[collection]]\nname = 'a'\nfilter = 'status = 1 && a == 2'\n"
    line, col, msg = at(text)
    assert (line, col) == (4, 27) and msg.startswith("filter: unknown operator '=='")
    # a basic string with escapes before the culprit: columns count source characters
    text = 'version = 1\n[[collection]]\nname = "a"\nfilter = "t = \\"\\u00e9\\" && a <> 1"\n'
    line, col, msg = at(text)
    assert (line, col) == (4, 31) and "'!='" in msg
    # a multi-line literal string: the first newline is not part of the rule
    text = (
        "version = 1\n[[collection]]\nname = 'a'\nsubscribe = '''\n"
        "@request.auth.id != '' &&\n  @request.auth.x:each = 1'''\n"
    )
    line, col, msg = at(text)
    assert (line, col) == (6, 18) and ":each" in msg
    text = "version = 1\n[superusers]\nrule = '@collection.users.x = 1'\n"
    assert at(text)[:2] == (3, 9) and "subscribe proxy" in at(text)[2]
    assert at("version = 1\n[webhooks]\nsender = 'a = 1'\n")[:2] == (3, 11)


def test_rule_scopes() -> None:
    base = "version = 1\n[[collection]]\nname = 'a'\n"
    line, col, msg = at(base + "subscribe = 'status = \"x\"'\n")
    assert (line, col) == (4, 14) and "record fields belong in filter" in msg
    assert "record fields belong in filter" in at(base + "groups = 'x = 1'\n")[2]
    line, col, msg = at(base + "filter = 'team = @sub.team'\n")
    assert (line, col) == (4, 18) and "proxy = true" in msg
    policy = parse_policy(base + "filter = 'team = @sub.team'\nproxy = true\n", "p")
    assert policy.entry("x", "a") is not None


def test_limits_in_the_file() -> None:
    base = "version = 1\n[[collection]]\nname = 'a'\n"
    long_rule = "x = '" + "y" * 5000 + "'"
    line, col, msg = at(base + f'filter = "{long_rule}"\n')
    assert (line, col) == (4, 11) and "4096" in msg
    nested = "(" * 100 + "x = 1" + ")" * 100
    line, col, msg = at(base + f"filter = '{nested}'\n")
    assert (line, col) == (4, 11 + 32) and "nested deeper than 32" in msg


def test_values_are_validated() -> None:
    base = "version = 1\n[[collection]]\n"
    assert (
        "unlisted must be 'deny' or 'authenticated'"
        in at("version = 1\n[defaults]\nunlisted = 'allow'\n")[2]
    )
    assert at(base + "database = 'a/b'\nname = 'x'\n")[:2] == (3, 12)
    assert "needs a name" in at(base + "database = 'a'\n")[2]
    line, col, msg = at(base + "name = 'a{b}'\n")
    assert (line, col) == (3, 8) and "collection name" in msg
    assert "on_delete must be" in at(base + "name = 'a'\non_delete = 'some'\n")[2]
    assert "proxy must be true or false" in at(base + "name = 'a'\nproxy = 'yes'\n")[2]
    assert "must be a string" in at(base + "name = 'a'\nfilter = 1\n")[2]
    line, col, msg = at(base + "name = 'a'\nhidden = ['ok', 'bad name']\n")
    assert (line, col) == (4, 17) and "not a field name" in msg
    assert "'id' cannot be hidden" in at(base + "name = 'a'\nhidden = ['id']\n")[2]
    assert "hidden must be a list" in at(base + "name = 'a'\nhidden = 'x'\n")[2]
    line, col, msg = at(base + "name = 'a'\nhidden = ['secret']\nfilter = 'secret.x = 1'\n")
    assert (line, col) == (5, 10) and "hidden" in msg
    assert "[[collection]]" in at("version = 1\n[collection]\nname = 'a'\n")[2]


def test_claims_table() -> None:
    text = "version = 1\n[claims]\nid = ['id', 'sub']\nteam = 'meta.team'\n"
    policy = parse_policy(text, "p")
    assert policy.claims.resolve({"sub": "s"}, "id") == "s"
    assert policy.claims.resolve({"meta": {"team": "t"}}, "team") == "t"
    line, col, msg = at("version = 1\n[claims]\nid = ['id', '']\n")
    assert (line, col) == (3, 13) and "not a claim path" in msg
    assert "non-empty list" in at("version = 1\n[claims]\nid = []\n")[2]
    assert "non-empty list" in at("version = 1\n[claims]\nid = 1\n")[2]
    assert "not a claim path" in at("version = 1\n[claims]\nid = [1]\n")[2]
    assert "not a claim path" in at("version = 1\n[claims]\nid = 'a..b'\n")[2]
    assert at('version = 1\n[claims]\n"a.b" = "x"\n')[:2] == (3, 1)
    assert "claims must be a table" in at("version = 1\nclaims = 1\n")[2]


def test_superusers_rule() -> None:
    assert "every token a superuser" in at("version = 1\n[superusers]\nrule = ''\n")[2]
    policy = parse_policy("version = 1\n[superusers]\n", "p")
    assert policy.superusers is None and not policy.is_superuser({"x": 1})


def test_webhooks_networks() -> None:
    base = "version = 1\n[webhooks]\n"
    line, col, msg = at(base + "networks = ['10.0.0.0/8', '300.1.1.1']\n")
    assert (line, col) == (3, 27) and "not an address or CIDR" in msg
    line, col, msg = at(base + "networks = [\n  '10.0.0.0/8',\n  '10.0.0.1/8',\n]\n")
    assert (line, col) == (5, 3) and "did you mean '10.0.0.0/8'" in msg
    assert "non-empty list" in at(base + "networks = []\n")[2]
    assert "not a string" in at(base + "networks = [1]\n")[2]
    policy = parse_policy(base + "networks = ['10.0.0.0/8', '2001:db8::/32', '127.0.0.1']\n", "p")
    assert policy.has_webhooks and policy.sender_is_open  # no sender: any valid token
    assert policy.source_allowed("10.9.9.9") and policy.source_allowed("2001:db8::1")
    assert policy.source_allowed("127.0.0.1") and not policy.source_allowed("127.0.0.2")
    assert policy.source_allowed("::ffff:10.1.1.1") and policy.source_allowed("[2001:db8::5]")
    for bad in ("", "nope", "10.0.0.0/8", "1.2.3.4.5", "::g"):
        assert not policy.source_allowed(bad), bad
    assert parse_policy("version = 1\n", "p").source_allowed("anything")
    assert parse_policy(base + "sender = ''\n", "p").source_allowed("junk")


def test_docs_examples_parse() -> None:
    text = (ROOT / "docs" / "policy.md").read_text()
    blocks = text.split("```toml\n")[1:]
    assert len(blocks) >= 2
    for block in blocks:
        body = block.split("```", 1)[0]
        source = body if body.lstrip().startswith("version") else "version = 1\n" + body
        policy = parse_policy(source, "docs/policy.md")
        assert policy.collections


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_files_raise_only_policy_errors(text: str) -> None:
    try:
        parse_policy(text, "p")
    except PolicyError as exc:
        assert 1 <= exc.line <= text.count("\n") + 1 and exc.col >= 1


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["subscribe", "filter", "groups"]),
       st.booleans())  # fmt: skip
def test_fuzz_rules_in_a_file(rule: str, key: str, literal: bool) -> None:
    if literal and "'" not in rule and "\n" not in rule and "\r" not in rule:
        quoted = f"'{rule}'"
    else:
        quoted = json.dumps(rule, ensure_ascii=False)
    text = f"version = 1\n[[collection]]\nname = 'a'\n{key} = {quoted}\n"
    try:
        parse_policy(text, "p")
    except PolicyError as exc:
        assert 1 <= exc.line <= text.count("\n") + 1 and exc.col >= 1
        if exc.message.startswith(f"{key}: "):  # a rule error: on the rule's line
            assert exc.line == 4
