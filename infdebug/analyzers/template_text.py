"""Chat-template text, cut at the level of template markers: what the template analyzers
compare. Pure functions of text (no store): split a rendered prompt into special-token
markers and the text between them, diff two renderings marker by marker, and reduce a prompt
to its skeleton (message contents masked, markers and fixed template lines kept, the clock's
date normalised).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

SHOW = 160  # characters of a segment shown in evidence

# Special-token-like template markers: <|...|>, [INST], <<SYS>>, <s>, Gemma's turn tokens, …
MARKER_RE = re.compile(
    r"<\|[^|<>\n]{1,48}\|>|<｜[^｜\n]{1,48}｜>|\[/?INST\]|\[/?SYS\]|<</?SYS>>|</?s>|<bos>|<eos>"
    r"|<start_of_turn>|<end_of_turn>|<\|?(?:im_start|im_end)\|?>"
)
ROLE_RE = re.compile(
    r"^\s*(system|user|assistant|tool|ipython|developer|model|function)\s*$", re.IGNORECASE
)
# fixed template lines kept when contents are masked from markers alone
FIXED_LINE_RE = re.compile(
    r"^(Cutting Knowledge Date|Today Date|Environment|Tools|Knowledge Cutoff|Current Date):"
)
# dates a template writes from the clock: normalised so the daily change is no skeleton change
DATE_RES = (
    re.compile(r"(Today Date: )[^\n<]*"),
    re.compile(r"((?:Current|Today's) [Dd]ate: )[^\n<]*"),
)


def short(s: str, n: int = SHOW) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# --- marker-level text diff -----------------------------------------------------------------


def split_markers(text: str) -> list[str]:
    """``text`` cut into template markers and the text between them (no empty pieces)."""
    parts: list[str] = []
    pos = 0
    for m in MARKER_RE.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(m.group(0))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


def marker_diff(logged: str, reference: str) -> dict[str, Any]:
    """The first differing marker segment on both sides, with the marker before it."""
    a, b = split_markers(logged), split_markers(reference)
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    char = 0
    while char < min(len(logged), len(reference)) and logged[char] == reference[char]:
        char += 1
    before = next((a[j] for j in range(i - 1, -1, -1) if MARKER_RE.fullmatch(a[j])), None)
    return {
        "segment_index": i,
        "char_offset": char,
        "after_marker": before,
        "logged": short(a[i]) if i < len(a) else None,
        "reference": short(b[i]) if i < len(b) else None,
        "logged_segments": len(a),
        "reference_segments": len(b),
    }


def skeleton_of_markers(text: str) -> list[str]:
    """Markers and the role headers right after them (a one-word first line: ``user`` in
    ``<|im_start|>user\n…`` or ``<|start_header_id|>user<|end_header_id|>``): what
    ``role_marker`` compares."""
    out: list[str] = []
    for p in split_markers(text):
        if MARKER_RE.fullmatch(p):
            out.append(p)
        elif out:
            head = p.split("\n", 1)[0].strip()
            if head and re.fullmatch(r"[A-Za-z_][\w-]{0,31}", head):
                out.append(head)
    return out


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def uses_tools(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("role") in ("tool", "ipython") or m.get("tool_calls") for m in messages)


# --- skeletons ------------------------------------------------------------------------------


def normalise_dates(text: str) -> str:
    for rx in DATE_RES:
        text = rx.sub(lambda m: m.group(1) + "{date}", text)
    return text


def mask_between_markers(text: str) -> str:
    out: list[str] = []
    for part in split_markers(text):
        if MARKER_RE.fullmatch(part) or ROLE_RE.match(part):
            out.append(part)
            continue
        lines = []
        for line in part.split("\n"):
            if FIXED_LINE_RE.match(line):
                lines.append(line)
            elif line.strip():
                lead = line[: len(line) - len(line.lstrip())]
                trail = line[len(line.rstrip()) :]
                lines.append(f"{lead}{{content}}{trail}")
            else:
                lines.append(line)
        masked = "\n".join(lines)
        out.append(re.sub(r"\{content\}(\n*\{content\})+", "{content}", masked))
    return "".join(out)


def skeleton(text: str, messages: list[dict[str, Any]] | None) -> str:
    """``text`` with message contents masked ("{role}"), special tokens and fixed template
    text kept, and the clock's date normalised to "{date}"."""
    if messages:
        out: list[str] = []
        pos = 0
        ok = True
        for m in messages:
            content = content_text(m.get("content"))
            for candidate in (content, content.strip()):
                if not candidate:
                    break
                at = text.find(candidate, pos)
                if at >= 0:
                    out.append(text[pos:at])
                    out.append("{" + str(m.get("role", "?")) + "}")
                    pos = at + len(candidate)
                    break
            else:
                ok = False
        if ok:
            out.append(text[pos:])
            return mask_json(normalise_dates("".join(out)))
    return mask_json(normalise_dates(mask_between_markers(text)))


_JSON = json.JSONDecoder()
_CLOSE = {"{": "}", "[": "]"}


def _python_literal(text: str, i: int) -> tuple[Any, int]:
    """A Python dict/list literal starting at ``i`` (templates that print a tool call without
    ``tojson`` show its repr: ``{'name': 'f', 'arguments': {...}}``), and where it ends."""
    depth, quote, k = 0, "", i
    while k < len(text):
        c = text[k]
        if quote:
            if c == "\\":
                k += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in _CLOSE:
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                try:
                    value = ast.literal_eval(text[i : k + 1])
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    return None, i
                return (value, k + 1) if isinstance(value, dict | list) else (None, i)
        k += 1
    return None, i


def mask_json(text: str) -> str:
    """Every JSON object or array (or Python dict/list literal) in ``text`` as ``{json}``: the
    tool definitions a client sends and the tool calls' names and arguments are content, not
    template, however the template lays them out (Llama-3.1, Qwen2.5, Hermes render them with
    ``tojson``; others print the Python repr)."""
    out: list[str] = []
    pos = i = 0
    while True:
        i = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if i < 0:
            break
        try:
            value, end = _JSON.raw_decode(text, i)
        except ValueError:
            value, end = _python_literal(text, i)
            if value is None:
                i += 1
                continue
        if isinstance(value, dict | list) and value:
            out.append(text[pos:i])
            out.append("{json}")
            pos = i = end
        else:
            i += 1
    out.append(text[pos:])
    return "".join(out)


def family_of(messages: list[dict[str, Any]] | None) -> str:
    """The message-role sequence a prompt was rendered from ("?" where none was logged)."""
    if not messages:
        return "?"
    return ",".join(str(m.get("role", "?")) for m in messages)
