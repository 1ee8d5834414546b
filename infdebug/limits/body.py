"""Request bodies: the size cap (from ``Content-Length`` and from the bytes themselves) and
strict JSON decoding: UTF-8 only, no ``NaN``/``Infinity`` literals (nor numbers that
overflow to them), integers of at most 20 digits, at most ``max_depth`` nested containers,
and no lone UTF-16 surrogates in any string or key; the error names the field."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from infdebug.limits.base import MAX_INT_DIGITS, SURROGATE, Limits, RequestError, kind_of


def too_large(limits: Limits, size: int | None = None) -> RequestError:
    got = f" ({size} bytes)" if size is not None else ""
    return RequestError(
        413,
        f"the request body{got} is larger than this server accepts "
        f"({limits.max_body_bytes} bytes; see --max-body-mb)",
        code="request_too_large",
    )


def content_length(header: str | None, limits: Limits) -> int | None:
    """The declared body size, refused (413) when it is over the cap before a byte is read."""
    if header is None:
        return None
    h = header.strip()
    if not h.isdigit() or len(h) > MAX_INT_DIGITS:
        raise RequestError(400, f"the Content-Length header is not a size: {header[:40]!r}")
    n = int(h)
    if n > limits.max_body_bytes:
        raise too_large(limits, n)
    return n


class _BadJson(Exception):
    pass


def _no_constant(name: str) -> Any:
    raise _BadJson(f"{name} is not valid JSON (numbers must be finite)")


def _finite(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise _BadJson(f"the number {s[:24]} is out of range (numbers must be finite)")
    return v


def _bounded_int(s: str) -> int:
    if len(s) - s.startswith("-") > MAX_INT_DIGITS:
        raise _BadJson(f"the integer {s[:24]}… has more than {MAX_INT_DIGITS} digits")
    return int(s)


def decode_json(raw: bytes, limits: Limits) -> Any:
    """The JSON value of a request body, decoded strictly (see the module docstring)."""
    if len(raw) > limits.max_body_bytes:
        raise too_large(limits, len(raw))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(
            400, f"the request body is not UTF-8 (byte {e.start}: {e.reason})"
        ) from None
    text = text.removeprefix("\ufeff")
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded_int
        )
    except _BadJson as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise RequestError(
            400, f"the request body nests deeper than {limits.max_depth} levels"
        ) from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a huge literal
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None
    _check_tree(value, limits)
    return value


def json_object(raw: bytes, limits: Limits) -> dict[str, Any]:
    value = decode_json(raw, limits)
    if not isinstance(value, dict):
        raise RequestError(
            400, f"the request body must be a JSON object, got {kind_of(value)}", code=None
        )
    return value


def _check_tree(value: Any, limits: Limits) -> None:
    """Depth and lone surrogates, iteratively (no recursion on hostile input); the second,
    slower walk that names the field runs only when something is wrong."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    bad = isinstance(value, str) and SURROGATE.search(value) is not None
    while stack and not bad:
        v, depth = stack.pop()
        if depth > limits.max_depth:
            bad = True
            break
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, x in items:
            if isinstance(k, str) and SURROGATE.search(k):
                bad = True
                break
            if isinstance(x, dict | list):
                stack.append((x, depth + 1))
            elif isinstance(x, str) and SURROGATE.search(x):
                bad = True
                break
    if bad:
        _explain(value, limits)


def _top(path: str) -> str | None:
    """The request field a JSON path is under: ``messages[0].content`` → ``messages``."""
    return re.split(r"[.\[]", path, maxsplit=1)[0] or None


def _explain(value: Any, limits: Limits) -> None:
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        v, depth, path = stack.pop()
        if isinstance(v, str):
            if SURROGATE.search(v):
                raise RequestError(
                    400,
                    f"{path or 'the request body'}: the string holds a lone UTF-16 surrogate "
                    "(invalid Unicode)",
                    _top(path),
                )
            continue
        if not isinstance(v, dict | list):
            continue
        if depth > limits.max_depth:
            raise RequestError(
                400,
                f"{path or 'the request body'}: JSON nests deeper than {limits.max_depth} levels",
                _top(path),
            )
        if isinstance(v, dict):
            for k, x in v.items():
                if SURROGATE.search(k):
                    raise RequestError(
                        400,
                        f"{path or 'the request body'}: a key holds a lone UTF-16 surrogate",
                        _top(path),
                    )
                stack.append((x, depth + 1, f"{path}.{k}" if path else k))
        else:
            stack.extend((x, depth + 1, f"{path}[{i}]") for i, x in enumerate(v))
