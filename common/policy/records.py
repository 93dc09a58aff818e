"""Hidden-field stripping on the raw record JSON, done once at ingest before storage.

Ingest stores records byte-exact, so the common cases must not decode at all: a collection
without ``hidden`` fields gets the very same bytes object back, and so does a record in which
no hidden key can occur (checked on the raw bytes; a backslash anywhere forces a real decode,
since a JSON key may be spelled with ``\\u`` escapes). Only a record that really carries a
hidden field is decoded (msgspec) and re-encoded.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

OnDelete = Literal["filter", "all"]
_NULL: Final = b"null"


class RecordShaper:
    """What ingest does to the record of one collection's events."""

    __slots__ = ("_needles", "hidden", "on_delete")

    def __init__(self, hidden: tuple[str, ...] = (), on_delete: OnDelete = "filter") -> None:
        self.hidden: tuple[tuple[str, ...], ...] = tuple(tuple(h.split(".")) for h in hidden)
        self.on_delete: OnDelete = on_delete
        # a hidden field can only be present if its last key appears quoted in the bytes
        self._needles = tuple({msgspec.json.encode(p[-1]) for p in self.hidden})

    @property
    def is_identity(self) -> bool:
        return not self.hidden and self.on_delete == "filter"

    def shape(self, action: str, record_json: bytes, record_id: str | None) -> bytes:
        """The record to store: hidden fields removed; ``{"id": ...}`` only for a delete
        under ``on_delete = "all"`` (the record's own ``id``, else ``record_id``).

        Raises ValueError if the bytes must be decoded and are not JSON (ingest validated
        them already, so this is a bug upstream, never a reason to store hidden data).
        """
        if action == "delete" and self.on_delete == "all":
            return _id_only(record_json, record_id)
        if not self.hidden:
            return record_json
        if b"\\" not in record_json and not any(n in record_json for n in self._needles):
            return record_json
        record = _decode(record_json)
        if not isinstance(record, dict):
            return record_json
        removed = False
        for path in self.hidden:
            removed = _remove(record, path) or removed
        return msgspec.json.encode(record) if removed else record_json


def _decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"record is not valid JSON: {exc}") from None


def _remove(record: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = record
    for seg in path[:-1]:
        node = node.get(seg) if isinstance(node, dict) else None
        if node is None:
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def _id_only(record_json: bytes, record_id: str | None) -> bytes:
    stripped = record_json.strip()
    record = None if not stripped or stripped == _NULL else _decode(stripped)
    rid = record.get("id") if isinstance(record, dict) else None
    if rid is None:
        rid = record_id
    if rid is None:
        return record_json if record is None else b"{}"
    return msgspec.json.encode({"id": rid})


IDENTITY: Final = RecordShaper()


def strip_record(
    shaper: RecordShaper | None, action: str, record_json: bytes, record_id: str | None
) -> bytes:
    """``shaper.shape(...)``, or the same bytes when the collection has no shaper."""
    if shaper is None or shaper.is_identity:
        return record_json
    return shaper.shape(action, record_json, record_id)
