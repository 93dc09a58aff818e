"""Where a key, a value or a character of a rule sits in the TOML source (line:col).

tomllib gives values without positions, so errors found after parsing are located by this
small scanner. It runs only on text tomllib accepted, so it can be lenient: it walks
statements (``[table]``, ``[[array]]`` headers and ``key = value`` lines), skips values with
their strings, arrays and inline tables, and records where each key path starts. Paths are
tuples like ``("collection", 2, "filter")`` (the index counts ``[[collection]]`` headers).
Lookups fall back to the nearest enclosing key, then to 1:1: a location is always given.
"""

from __future__ import annotations

from typing import TypeAlias

Path: TypeAlias = tuple[str | int, ...]
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class SourceMap:
    def __init__(self, text: str) -> None:
        self.text = text
        self._line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.keys: dict[Path, int] = {}  # path -> position of the key (or header)
        self.values: dict[Path, int] = {}  # path -> position of the value's first char
        self._scan()

    # --- positions ----------------------------------------------------------------------

    def line_col(self, pos: int) -> tuple[int, int]:
        """1-based line and column of an absolute character position."""
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, pos - self._line_starts[lo] + 1

    def key(self, path: Path) -> tuple[int, int]:
        """Where the key of ``path`` is (or the nearest enclosing one)."""
        while path:
            if path in self.keys:
                return self.line_col(self.keys[path])
            inner = [p for p in self.keys if p[: len(path)] == path]
            if inner:
                return self.line_col(min(self.keys[p] for p in inner))
            path = path[:-1]
        return 1, 1

    def value(self, path: Path) -> tuple[int, int]:
        pos = self.values.get(path)
        return self.key(path) if pos is None else self.line_col(pos)

    def element(self, path: Path, index: int) -> tuple[int, int]:
        """Where element ``index`` of the array at ``path`` starts (best effort)."""
        pos = self.values.get(path)
        if pos is None or pos >= len(self.text) or self.text[pos] != "[":
            return self.value(path)
        i, n, count, text = pos + 1, len(self.text), 0, self.text
        while i < n:
            i = self._skip_blank(i, newlines=True)
            if i >= n or text[i] == "]":
                break
            if count == index:
                return self.line_col(i)
            i = self._skip_value(i)
            i = self._skip_blank(i, newlines=True)
            if i < n and text[i] == ",":
                i += 1
            count += 1
        return self.value(path)

    def in_string(self, path: Path, offset: int) -> tuple[int, int]:
        """Where character ``offset`` of the string value at ``path`` is (escapes counted)."""
        pos = self.values.get(path)
        text = self.text
        if pos is None or pos >= len(text) or text[pos] not in "'\"":
            return self.value(path)
        quote = text[pos]
        multi = text.startswith(quote * 3, pos)
        i = pos + (3 if multi else 1)
        if multi and text.startswith("\n", i):
            i += 1
        elif multi and text.startswith("\r\n", i):
            i += 2
        for _ in range(offset):
            if i >= len(text):
                break
            if quote == '"' and text[i] == "\\":
                i = self._skip_escape(i, multi)
            else:
                i += 1
        return self.line_col(min(i, len(text)))

    def _skip_escape(self, i: int, multi: bool) -> int:
        text = self.text
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if multi and nxt in " \t\r\n":  # line-ending backslash: trims all whitespace after it
            j = i + 1
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            return self._skip_escape(j, multi) if text.startswith("\\", j) else j + 1
        return i + {"u": 6, "U": 10}.get(nxt, 2)

    # --- scanning -----------------------------------------------------------------------

    def _skip_blank(self, i: int, *, newlines: bool) -> int:
        text, n = self.text, len(self.text)
        while i < n:
            c = text[i]
            if c in " \t" or (newlines and c in "\r\n"):
                i += 1
            elif c == "#":
                while i < n and text[i] != "\n":
                    i += 1
            else:
                break
        return i

    def _skip_string(self, i: int) -> int:
        text = self.text
        quote = text[i]
        if text.startswith(quote * 3, i):
            j = i + 3
            while j < len(text):
                if quote == '"' and text[j] == "\\":
                    j += 2
                elif text.startswith(quote * 3, j):
                    j += 3
                    while j < len(text) and text[j] == quote:
                        j += 1
                    return j
                else:
                    j += 1
            return j
        j = i + 1
        while j < len(text) and text[j] not in (quote, "\n"):
            j += 2 if quote == '"' and text[j] == "\\" else 1
        return j + 1

    def _skip_value(self, i: int) -> int:
        text, n = self.text, len(self.text)
        if i >= n:
            return i
        c = text[i]
        if c in "'\"":
            return self._skip_string(i)
        if c in "[{":
            close = "]" if c == "[" else "}"
            i += 1
            while i < n:
                i = self._skip_blank(i, newlines=True)
                if i >= n or text[i] == close:
                    return i + 1
                if text[i] == ",":
                    i += 1
                    continue
                if c == "{":  # key = value inside an inline table
                    _parts, i = self._key(i)
                    i = self._skip_blank(i, newlines=False)
                    if i < n and text[i] == "=":
                        i = self._skip_blank(i + 1, newlines=False)
                i = self._skip_value(i)
            return i
        while i < n and text[i] not in ",]}#\r\n":
            i += 1
        return i

    def _key(self, i: int) -> tuple[list[str], int]:
        text, n = self.text, len(self.text)
        parts: list[str] = []
        while i < n:
            i = self._skip_blank(i, newlines=False)
            if i < n and text[i] in "'\"":
                end = self._skip_string(i)
                raw = text[i + 1 : end - 1]
                parts.append(
                    raw.replace('\\"', '"').replace("\\\\", "\\") if text[i] == '"' else raw
                )
                i = end
            else:
                j = i
                while j < n and text[j] in _BARE:
                    j += 1
                if j == i:
                    break
                parts.append(text[i:j])
                i = j
            i = self._skip_blank(i, newlines=False)
            if i < n and text[i] == ".":
                i += 1
                continue
            break
        return parts, i

    def _scan(self) -> None:
        text, n = self.text, len(self.text)
        prefix: Path = ()
        arrays: dict[Path, int] = {}
        i = 0
        while i < n:
            i = self._skip_blank(i, newlines=True)
            if i >= n:
                break
            start = i
            if text[i] == "[":
                double = text.startswith("[[", i)
                parts, i = self._key(i + (2 if double else 1))
                path: Path = ()
                for part in parts:
                    path = (*path, part)
                    if path in arrays and not (double and len(path) == len(parts)):
                        path = (*path, arrays[path] - 1)
                if double:
                    arrays[path] = arrays.get(path, 0) + 1
                    path = (*path, arrays[path] - 1)
                prefix = path
                self.keys.setdefault(path, start)
            else:
                parts, i = self._key(i)
                if not parts:  # not a statement we understand: skip the line
                    while i < n and text[i] != "\n":
                        i += 1
                    continue
                full = (*prefix, *parts)
                self.keys.setdefault(full, start)
                i = self._skip_blank(i, newlines=False)
                if i < n and text[i] == "=":
                    i = self._skip_blank(i + 1, newlines=False)
                    self.values.setdefault(full, i)
                    i = self._skip_value(i)
            while i < n and text[i] != "\n":  # rest of the line: a comment or the header end
                i += 1
