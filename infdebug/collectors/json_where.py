"""Which field of a JSON line a byte offset falls in, for malformed-JSON rejects.

msgspec names the field of a type error (``$.prompt_ids[1]``) but only the byte of a syntax
error (``invalid character (byte 81)``). ``field_at`` walks the line up to that byte, the
way a JSON parser would, and names the field being read there in msgspec's style
(``prompt_text``, ``messages[0].content``): the value of ``"ttft_s":+1`` or of a string
with a raw control character in it. Nothing is named for an offset outside the record
(``{…}{…}``: trailing characters) or inside a field name.
"""

from __future__ import annotations

import json
import re

_BYTE = re.compile(r"\(byte (\d+)\)")


def field_at(line: bytes, offset: int) -> str | None:
    """The path of the field whose value holds byte ``offset`` of ``line``, or None."""
    # One frame per open container: [is_object, key or index, reading a value].
    stack: list[list[object]] = []
    in_str = esc = False
    key_start = -1  # where the field name being read starts, -1 inside a value string
    for i in range(min(offset, len(line))):
        c = line[i]
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:  # closing quote
                in_str = False
                if key_start >= 0:
                    stack[-1][1] = _name(line[key_start : i + 1])
                    key_start = -1
        elif c == 0x22:
            in_str = True
            is_key = bool(stack) and stack[-1][0] is True and stack[-1][2] is False
            key_start = i if is_key else -1
        elif c in (0x7B, 0x5B):  # { [
            stack.append([c == 0x7B, None if c == 0x7B else 0, c == 0x5B])
        elif c in (0x7D, 0x5D):  # } ]
            if stack:
                stack.pop()
            if not stack:
                return None  # past the end of the record
        elif c == 0x3A and stack and stack[-1][0] is True:  # ':'
            stack[-1][2] = True
        elif c == 0x2C and stack:  # ','
            top = stack[-1]
            if top[0] is True:
                top[1], top[2] = None, False
            elif isinstance(top[1], int):
                top[1] += 1
    return _path(stack)


def malformed_field(line: bytes, reason: str) -> str | None:
    """The field a ``… (byte N)`` malformed-JSON reason points into, or None."""
    m = _BYTE.search(reason)
    return field_at(line, int(m.group(1))) if m else None


def _name(token: bytes) -> str:
    try:
        name = json.loads(token)
    except ValueError:
        return token[1:-1].decode("utf-8", "replace")
    return name if isinstance(name, str) else str(name)


def _path(stack: list[list[object]]) -> str | None:
    parts: list[str] = []
    for is_obj, where, in_value in stack:
        if is_obj:
            if not in_value or where is None:
                break
            parts.append(f".{where}")
        else:
            parts.append(f"[{where}]")
    path = "".join(parts).lstrip(".")
    return path if path and not path.startswith("[") else None
