"""A parser for Python ``repr()`` text as engines log it: string literals (any quote
style, escapes, prefixes), numbers, None/True/False, lists, tuples, dicts, ``array('l', …)``
and keyword calls like ``SamplingParams(n=1, …)``, plus the ``'…' ... '…'`` an engine's
logger leaves where it shortened a field. It never evaluates anything but literals."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any


class ReprError(ValueError):
    """Text that is not the Python repr it should be; ``pos`` is the character offset."""

    def __init__(self, reason: str, pos: int) -> None:
        super().__init__(f"{reason} at column {pos + 1}")
        self.pos = pos


@dataclass(frozen=True)
class Call:
    """``Name(arg, key=value, …)`` as printed by a dataclass or a custom ``__repr__``."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)


@dataclass(frozen=True)
class Truncated:
    """A value a logger shortened (SGLang prints ``'head' ... 'tail'``, ``[1, 2] ... [8, 9]``)."""

    head: Any
    tail: Any


_STR_RE = {
    "'": re.compile(r"'(?:[^'\\\n]|\\.)*'", re.S),
    '"': re.compile(r'"(?:[^"\\\n]|\\.)*"', re.S),
}
_STR_PREFIX_RE = re.compile(r"[bBrRuU]{0,2}(?=['\"])")
_INT_LIST_RE = re.compile(r"\[\s*(?:-?\d+\s*(?:,\s*-?\d+\s*)*,?\s*)?\]")
_NAME_CALL_RE = re.compile(r"([A-Za-z_][\w.]*)\(")
_KWARG_RE = re.compile(r"\s*([A-Za-z_]\w*)=(?!=)")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)")
_OPEN = {"(": ")", "[": "]", "{": "}", "<": ">"}
_BARE = {"None": None, "True": True, "False": False}


class ReprParser:
    """Recursive-descent reader of Python reprs: literals, lists, tuples, dicts, sets,
    ``Name(k=v)`` calls, ``<…>`` reprs, and bare words (``finish_reason=stop``,
    ``request_id=cmpl-3f-0``, ``stop_reason=</s>``) that run to the next separator."""

    def __init__(self, text: str) -> None:
        self.s = text

    def skip(self, pos: int) -> int:
        s = self.s
        while pos < len(s) and s[pos] in " \t":
            pos += 1
        return pos

    def value(self, pos: int, stops: str) -> tuple[Any, int]:
        v, pos = self._one(pos, stops)
        # SGLang's truncation: `'head' ... 'tail'` or `[1, 2] ... [8, 9]`
        if self.s.startswith(" ... ", pos) and isinstance(v, str | list | tuple):
            tail, pos = self._one(pos + 5, stops)
            return Truncated(v, tail), pos
        return v, pos

    def _one(self, pos: int, stops: str) -> tuple[Any, int]:
        s = self.s
        pos = self.skip(pos)
        if pos >= len(s):
            raise ReprError("expected a value, found the end of the line", pos)
        c = s[pos]
        pm = _STR_PREFIX_RE.match(s, pos)
        if pm is not None:
            q = s[pm.end()]
            m = _STR_RE[q].match(s, pm.end())
            if m is None:
                raise ReprError(f"unterminated string starting {s[pos : pos + 30]!r}", pos)
            try:
                return ast.literal_eval(s[pos : m.end()]), m.end()
            except (ValueError, SyntaxError) as e:
                raise ReprError(f"bad string literal ({e})", pos) from None
        if c == "[":
            m = _INT_LIST_RE.match(s, pos)
            if m is not None:  # fast path: token IDs
                body = s[pos + 1 : m.end() - 1].strip().rstrip(",")
                return ([int(x) for x in body.split(",")] if body else []), m.end()
            items, pos = self._seq(pos + 1, "]")
            return items, pos
        if c == "(":
            items, pos = self._seq(pos + 1, ")")
            return tuple(items), pos
        if c == "{":
            return self._dict_or_set(pos + 1)
        if c == "<":
            end = self._match_close(pos)
            return s[pos:end], end
        m = _NAME_CALL_RE.match(s, pos)
        if m is not None:
            return self._call(m.group(1), m.end())
        return self._bare(pos, stops)

    def _match_close(self, pos: int) -> int:
        depth, s = 0, self.s
        for i in range(pos, len(s)):
            if s[i] == "<":
                depth += 1
            elif s[i] == ">":
                depth -= 1
                if depth == 0:
                    return i + 1
        raise ReprError("unterminated <…> repr", pos)

    def _bare(self, pos: int, stops: str) -> tuple[Any, int]:
        s, depth, i = self.s, 0, pos
        while i < len(s):
            c = s[i]
            if depth == 0 and c in stops:
                break
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
                if depth < 0:
                    break
            i += 1
        word = s[pos:i].strip()
        if not word:
            raise ReprError(f"expected a value, found {s[pos : pos + 20]!r}", pos)
        if word in _BARE:
            return _BARE[word], i
        if _NUMBER_RE.fullmatch(word):
            return (int(word) if re.fullmatch(r"[-+]?\d+", word) else float(word)), i
        return word, i

    def _seq(self, pos: int, close: str) -> tuple[list[Any], int]:
        items: list[Any] = []
        s = self.s
        while True:
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == close:
                return items, pos + 1
            v, pos = self.value(pos, "," + close)
            items.append(v)
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == ",":
                pos += 1
            elif pos < len(s) and s[pos] == close:
                return items, pos + 1
            else:
                raise ReprError(f"expected ',' or '{close}'", pos)

    def _dict_or_set(self, pos: int) -> tuple[Any, int]:
        s = self.s
        out: dict[Any, Any] = {}
        items: list[Any] = []
        while True:
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == "}":
                return (out if out or not items else items), pos + 1
            k, pos = self.value(pos, ":,}")
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == ":":
                v, pos = self.value(pos + 1, ",}")
                out[k if isinstance(k, str | int | float | bool) or k is None else str(k)] = v
            else:
                items.append(k)
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == ",":
                pos += 1
            elif pos < len(s) and s[pos] == "}":
                return (out if out or not items else items), pos + 1
            else:
                raise ReprError("expected ',' or '}'", pos)

    def _call(self, name: str, pos: int) -> tuple[Any, int]:
        s = self.s
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        while True:
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == ")":
                pos += 1
                break
            m = _KWARG_RE.match(s, pos)
            if m is not None:
                kwargs[m.group(1)], pos = self.value(m.end(), ",)")
            else:
                v, pos = self.value(pos, ",)")
                args.append(v)
            pos = self.skip(pos)
            if pos < len(s) and s[pos] == ",":
                pos += 1
            elif pos < len(s) and s[pos] == ")":
                pos += 1
                break
            else:
                raise ReprError(f"expected ',' or ')' in {name}(…)", pos)
        if name == "array" and len(args) == 2 and isinstance(args[1], list):
            return args[1], pos  # array('l', [1, 2, 3]): token IDs in vLLM's sequences
        return Call(name, args, kwargs), pos


def parse_repr(text: str, pos: int = 0, stops: str = ",") -> tuple[Any, int]:
    """One Python-repr value of ``text`` starting at ``pos``; returns it and the end offset."""
    return ReprParser(text).value(pos, stops)
