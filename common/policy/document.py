"""The policy file: TOML text to a validated, compiled :class:`Policy`, or one PolicyError.

Every check an operator could trip over is made here, at load, with a location: unknown keys
(with a "did you mean"), wrong types, bad names and networks, rules that do not compile or
read what they may not. A process should refuse to start on a bad file rather than enforce
something other than what the operator meant.

Choices where the format leaves room: ``[superusers] rule = ""`` is refused (it would make
every token a superuser; remove the section instead); ``networks = []`` is refused (it would
refuse every sender; remove the key instead); ``hidden`` may not name ``id`` (clients need
it) nor a field the filter reads (the filter runs on the stored record, without it).
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any, Final, NoReturn, cast

from common.layout import InvalidName, check_name
from common.policy.claims import ClaimMap
from common.policy.compile import Rule, RuleKind, compile_rule
from common.policy.errors import PolicyError, RuleError
from common.policy.locate import Path, SourceMap
from common.policy.model import (
    CollectionRules,
    Network,
    OnDelete,
    Policy,
    Unlisted,
    WebhookRules,
)
from common.policy.records import RecordShaper
from common.policy.view import Filter

_TOP: Final = ("version", "defaults", "claims", "superusers", "collection", "webhooks")
_COLLECTION: Final = (
    "database", "name", "subscribe", "filter", "groups", "hidden", "on_delete", "proxy",
)  # fmt: skip
_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_RE: Final = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_TOML_POS: Final = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


class _Loader:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.src = SourceMap(text)
        self.claims = ClaimMap()

    # --- errors -------------------------------------------------------------------------

    def fail(self, where: tuple[int, int], message: str) -> NoReturn:
        raise PolicyError(self.path, where[0], where[1], message)

    def at_key(self, path: Path, message: str) -> NoReturn:
        self.fail(self.src.key(path), message)

    def at_value(self, path: Path, message: str) -> NoReturn:
        self.fail(self.src.value(path), message)

    def table(self, data: Any, path: Path, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(data, dict):
            self.at_key(path, f"{_show(path)} must be a table ([{_show(path)}])")
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                where = f" in {_show(path)}" if path else ""
                self.at_key(
                    (*path, key),
                    f"unknown key {key!r}{where}{extra} (allowed: {', '.join(allowed)})",
                )
        return data

    def string(self, data: Mapping[str, Any], path: Path, key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            self.at_value((*path, key), f"{key} must be a string, not {_kind(value)}")
        return value

    def choice(
        self, data: Mapping[str, Any], path: Path, key: str, options: tuple[str, ...], default: str
    ) -> str:
        value = self.string(data, path, key)
        if value is None:
            return default
        if value not in options:
            shown = " or ".join(repr(o) for o in options)
            self.at_value((*path, key), f"{key} must be {shown}, not {value!r}")
        return value

    def rule(
        self, data: Mapping[str, Any], path: Path, key: str, kind: RuleKind, proxy: bool = False
    ) -> Rule | None:
        source = self.string(data, path, key)
        if source is None:
            return None
        try:
            return compile_rule(source, kind=kind, proxy=proxy)
        except RuleError as exc:
            self.fail(self.src.in_string((*path, key), exc.offset), f"{key}: {exc.message}")

    # --- sections -----------------------------------------------------------------------

    def load(self, data: dict[str, Any]) -> Policy:
        self.table(data, (), _TOP)
        if "version" not in data:
            self.fail((1, 1), "version = 1 is missing: a policy file starts with version = 1")
        version = data["version"]
        if type(version) is not int or version != 1:
            self.at_value(("version",), f"version must be 1, not {version!r}")
        defaults = self.table(data.get("defaults", {}), ("defaults",), ("unlisted",))
        unlisted = self.choice(
            defaults, ("defaults",), "unlisted", ("deny", "authenticated"), "deny"
        )
        self.claims = self.claim_map(data.get("claims", {}))
        supers = self.table(data.get("superusers", {}), ("superusers",), ("rule",))
        superusers = self.rule(supers, ("superusers",), "rule", "access")
        if superusers is not None and superusers.is_empty:
            self.at_value(
                ("superusers", "rule"),
                "an empty superusers rule would make every "
                "token a superuser: write a rule, or remove [superusers]",
            )
        collections = self.collections(data.get("collection", []))
        webhooks = self.webhooks(data["webhooks"]) if "webhooks" in data else None
        return Policy(
            source=self.path,
            unlisted=cast(Unlisted, unlisted),
            claims=self.claims,
            superusers=superusers,
            collections=collections,
            webhooks=webhooks,
        )

    def claim_map(self, data: Any) -> ClaimMap:
        if not isinstance(data, dict):
            self.at_key(("claims",), "claims must be a table ([claims])")
        table: dict[str, list[str]] = {}
        for name, value in data.items():
            path: Path = ("claims", name)
            if not _NAME_RE.match(name):
                self.at_key(
                    path,
                    f"claim name {name!r} cannot be read as @request.auth."
                    f"{name}: use letters, digits and _ (not starting with a digit)",
                )
            paths = [value] if isinstance(value, str) else value
            if not isinstance(paths, list) or not paths:
                self.at_value(
                    path,
                    f"claims.{name} must be a claim path or a non-empty list "
                    'of them, e.g. ["id", "sub"]',
                )
            for i, p in enumerate(paths):
                if not isinstance(p, str) or not _PATH_RE.match(p):
                    where = (
                        self.src.element(path, i)
                        if isinstance(value, list)
                        else self.src.value(path)
                    )
                    self.fail(
                        where,
                        f"claims.{name}: {p!r} is not a claim path (names of "
                        'letters, digits and _, joined by dots: "meta.team")',
                    )
            table[name] = paths
        return ClaimMap.from_lists(table)

    def collections(self, data: Any) -> dict[tuple[str, str], CollectionRules]:
        if not isinstance(data, list):
            self.at_key(
                ("collection",),
                "collection entries are written [[collection]] (an array of tables)",
            )
        out: dict[tuple[str, str], CollectionRules] = {}
        for i, item in enumerate(data):
            entry = self.collection(item, ("collection", i))
            key = (entry.database, entry.name)
            if key in out:
                self.at_key(
                    ("collection", i),
                    f"collection {entry.name!r} of database "
                    f"{entry.database!r} is listed twice: merge the entries",
                )
            out[key] = entry
        return out

    def collection(self, data: Any, path: Path) -> CollectionRules:
        data = self.table(data, path, _COLLECTION)
        if "name" not in data:
            self.at_key(path, "a [[collection]] needs a name")
        name = self.name(data, path, "name", "collection")
        database = self.name(data, path, "database", "database", default="*")
        proxy = data.get("proxy", False)
        if not isinstance(proxy, bool):
            self.at_value((*path, "proxy"), f"proxy must be true or false, not {proxy!r}")
        on_delete = self.choice(data, path, "on_delete", ("filter", "all"), "filter")
        hidden = self.hidden(data.get("hidden", []), (*path, "hidden"))
        subscribe = self.rule(data, path, "subscribe", "access")
        groups = self.rule(data, path, "groups", "access") if "groups" in data else subscribe
        filter_rule = self.rule(data, path, "filter", "filter", proxy)
        flt = None
        if filter_rule is not None and not filter_rule.is_empty:
            self.filter_sees(filter_rule, hidden, path)
            flt = Filter(filter_rule, self.claims, f"{database}/{name}")
        return CollectionRules(
            database,
            name,
            subscribe,
            groups,
            flt,
            hidden,
            cast(OnDelete, on_delete),
            proxy,
            RecordShaper(hidden, cast(OnDelete, on_delete)),
        )

    def name(
        self, data: Mapping[str, Any], path: Path, key: str, kind: str, default: str | None = None
    ) -> str:
        value = data.get(key, default)
        if value == "*" and kind == "database":
            return "*"
        try:
            return check_name(kind, value)
        except InvalidName as exc:
            extra = ' or "*" for every database' if kind == "database" else ""
            self.at_value((*path, key), f"{exc}{extra}")

    def hidden(self, data: Any, path: Path) -> tuple[str, ...]:
        if not isinstance(data, list):
            self.at_value(path, 'hidden must be a list of field names, e.g. ["notes"]')
        for i, field in enumerate(data):
            if not isinstance(field, str) or not _PATH_RE.match(field):
                self.fail(
                    self.src.element(path, i),
                    f"hidden: {field!r} is not a field name (dots reach into objects)",
                )
            if field == "id":
                self.fail(
                    self.src.element(path, i), "hidden: 'id' cannot be hidden, clients need it"
                )
        return tuple(dict.fromkeys(data))

    def filter_sees(self, rule: Rule, hidden: tuple[str, ...], path: Path) -> None:
        for fpath in rule.fields():
            dotted = ".".join(fpath)
            for h in hidden:
                if dotted == h or dotted.startswith(h + "."):
                    self.at_value(
                        (*path, "filter"),
                        f"filter reads {dotted!r}, which is "
                        "hidden: hidden fields are removed before the filter runs",
                    )

    def webhooks(self, data: Any) -> WebhookRules:
        path: Path = ("webhooks",)
        data = self.table(data, path, ("sender", "networks"))
        sender = self.rule(data, path, "sender", "access")
        nets: list[Network] = []
        if "networks" in data:
            raw = data["networks"]
            if not isinstance(raw, list) or not raw:
                self.at_value(
                    (*path, "networks"),
                    "networks must be a non-empty list of "
                    "addresses or CIDRs (remove the key to allow any address)",
                )
            for i, item in enumerate(raw):
                nets.append(self.network(item, self.src.element((*path, "networks"), i)))
        return WebhookRules(sender, tuple(nets))

    def network(self, item: Any, where: tuple[int, int]) -> Network:
        if not isinstance(item, str):
            self.fail(where, f"networks: {item!r} is not a string")
        try:
            return ipaddress.ip_network(item.strip(), strict=True)
        except ValueError as exc:
            hint = ""
            with contextlib.suppress(ValueError):
                loose = ipaddress.ip_network(item.strip(), strict=False)
                hint = f"; did you mean {str(loose)!r}?"
            self.fail(where, f"networks: {item!r} is not an address or CIDR ({exc}){hint}")


def _show(path: Path) -> str:
    return ".".join(str(p) for p in path if isinstance(p, str)) or "the file"


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def parse_policy(text: str, path: str = "<policy>") -> Policy:
    """Parse and compile policy text; ``path`` is only used in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(text, path, exc) from None
    return _Loader(text, path).load(data)


def _toml_error(text: str, path: str, exc: tomllib.TOMLDecodeError) -> PolicyError:
    message = str(exc)
    m = _TOML_POS.match(message)
    if m:
        return PolicyError(path, int(m["line"]), int(m["col"]), m["msg"])
    if message.endswith(" (at end of document)"):
        lines = text.split("\n")
        return PolicyError(
            path, len(lines), len(lines[-1]) + 1, message[: -len(" (at end of document)")]
        )
    return PolicyError(path, 1, 1, message)


def load_policy(path: str | FsPath) -> Policy:
    """Read and compile the policy file at ``path`` (REALTIME_POLICY)."""
    shown = str(path)
    try:
        raw = FsPath(path).read_bytes()
    except OSError as exc:
        raise PolicyError(
            shown, 1, 1, f"cannot read the policy file: {exc.strerror or exc}"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            shown, 1, 1, f"the policy file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_policy(text, shown)
