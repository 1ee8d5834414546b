"""Token sequences made readable: each token a chip with its piece (whitespace and special
tokens made visible) and its ID, two sequences aligned with their first divergence marked,
and rendered prompts diffed. Plain functions returning HTML or text (no Streamlit here);
every piece of logged text is escaped before it reaches the page."""

from __future__ import annotations

import contextlib
import difflib
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ALIGN_WINDOW = 2_000  # tokens aligned past the common prefix (difflib is quadratic at worst)
CSS = """
<style>
.tk{display:inline-block;margin:1px;padding:0 3px;border:1px solid #ccd;border-radius:4px;
    font-family:monospace;font-size:12px;line-height:1.35;background:#f7f8fa;color:#111}
.tk small{color:#778;font-size:10px;margin-left:2px}
.tk.sp{background:#e8e0ff;border-color:#a08be0}
.tk.ch{background:#ffe3e0;border-color:#e57368}
.tk.ins{background:#e2f5e4;border-color:#67b46f}
.tk.gap{background:transparent;border-style:dashed;color:#aab}
.tk.first{outline:2px solid #d62728;outline-offset:1px}
.tkrow{margin:2px 0 8px 0}
</style>
"""
_WS = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


def visible(piece: str) -> str:
    """Whitespace shown as glyphs (a space ␣, a newline ↵, a tab ⇥)."""
    return piece.translate(_WS) if piece else "∅"


def pieces(tokenizer: Any, ids: Sequence[int]) -> list[tuple[str, bool]] | None:
    """(visible piece, is special) per ID with ``tokenizer`` (a ``TextTokenizer``); None
    without one. A token that decodes to nothing on its own (a byte of a longer character)
    shows its vocabulary entry."""
    if tokenizer is None:
        return None
    special = set(getattr(tokenizer, "special_tokens", {}).values() or ())
    for name in ("bos_token", "eos_token"):
        v = getattr(tokenizer, name, None)
        if v:
            special.add(v)
    inner = getattr(tokenizer, "tok", None)  # a TokenizerBundle's tokenizers.Tokenizer
    if inner is not None:
        with contextlib.suppress(Exception):
            added = inner.get_added_tokens_decoder().values()
            special |= {t.content for t in added if t.special}
    out = []
    for i in ids:
        try:
            text = tokenizer.decode([int(i)])
        except Exception:
            text = ""
        raw = tokenizer.piece(int(i)) if hasattr(tokenizer, "piece") else None
        if not text or "\ufffd" in text:
            text = raw or f"<{i}?>"
        out.append((visible(text), text in special or (raw in special if raw else False)))
    return out


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the sequences differ (the shorter one's length when one is a
    prefix of the other); None when they are equal."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return None if len(a) == len(b) else n


@dataclass(frozen=True)
class Cell:
    """One column of an alignment: an index into each side (None: absent there)."""

    a: int | None
    b: int | None
    op: str  # equal | replace | insert | delete


def align(a: Sequence[int], b: Sequence[int], window: int = ALIGN_WINDOW) -> list[Cell]:
    """The two sequences aligned: the common prefix, then ``window`` tokens of each side
    aligned by difflib (longest matching blocks), then the rest side by side, in step from
    the window's last matching block."""
    d = first_divergence(a, b)
    if d is None:
        return [Cell(i, i, "equal") for i in range(len(a))]
    cells = [Cell(i, i, "equal") for i in range(d)]
    ea, eb = min(len(a), d + window), min(len(b), d + window)
    sm = difflib.SequenceMatcher(None, list(a[d:ea]), list(b[d:eb]), autojunk=False)
    ops = sm.get_opcodes()
    if (ea < len(a) or eb < len(b)) and any(op == "equal" for op, *_ in ops):
        # cut at the window's last matching block: the tail goes on in step from there
        last = max(k for k, o in enumerate(ops) if o[0] == "equal")
        ops = ops[: last + 1]
        ea, eb = d + ops[-1][2], d + ops[-1][4]
    for op, i1, i2, j1, j2 in ops:
        if op == "equal":
            cells += [Cell(d + i1 + k, d + j1 + k, "equal") for k in range(i2 - i1)]
            continue
        n = max(i2 - i1, j2 - j1)
        for k in range(n):
            ia = d + i1 + k if i1 + k < i2 else None
            jb = d + j1 + k if j1 + k < j2 else None
            kind = (
                "replace"
                if ia is not None and jb is not None
                else ("delete" if jb is None else "insert")
            )
            cells.append(Cell(ia, jb, kind))
    rest = max(len(a) - ea, len(b) - eb)
    for k in range(rest):
        ia = ea + k if ea + k < len(a) else None
        jb = eb + k if eb + k < len(b) else None
        if ia is not None and jb is not None:
            cells.append(Cell(ia, jb, "equal" if a[ia] == b[jb] else "replace"))
        else:
            cells.append(Cell(ia, jb, "delete" if jb is None else "insert"))
    return cells


def _chip(id_: int | None, piece: tuple[str, bool] | None, cls: str) -> str:
    if id_ is None:
        return '<span class="tk gap">·</span>'
    classes = ["tk", cls] if cls else ["tk"]
    if piece is not None and piece[1]:
        classes.append("sp")
    label = html.escape(piece[0]) if piece is not None else ""
    sep = " " if label else ""
    cls = " ".join(classes)
    return f'<span class="{cls}" title="ID {id_}">{label}{sep}<small>{id_}</small></span>'


def chips(
    ids: Sequence[int],
    tokenizer: Any = None,
    *,
    limit: int | None = None,
    mark: int | None = None,
) -> str:
    """One sequence as chips (at most ``limit``; ``mark``: the index outlined)."""
    shown = list(ids[:limit] if limit is not None else ids)
    ps = pieces(tokenizer, shown)
    out = [
        _chip(int(i), ps[k] if ps else None, "first" if k == mark else "")
        for k, i in enumerate(shown)
    ]
    more = len(ids) - len(shown)
    tail = f' <span class="tk gap">… {more:,} more</span>' if more > 0 else ""
    return f'<div class="tkrow">{"".join(out)}{tail}</div>'


def aligned_chips(
    a: Sequence[int],
    b: Sequence[int],
    tokenizer: Any = None,
    *,
    context: int = 8,
    limit: int = 120,
) -> tuple[str, str, int | None]:
    """Both sequences as two rows of aligned chips, from ``context`` tokens before the first
    divergence, at most ``limit`` columns: (row A, row B, first divergence)."""
    d = first_divergence(a, b)
    cells = align(a, b)
    start = max(0, (d or 0) - context)
    view = cells[start : start + limit]
    pa = pieces(tokenizer, [a[c.a] for c in view if c.a is not None])
    pb = pieces(tokenizer, [b[c.b] for c in view if c.b is not None])
    ra, rb, ka, kb = [], [], 0, 0
    cls = {"equal": "", "replace": "ch", "insert": "ins", "delete": "ins"}
    first_col = next((k for k, c in enumerate(view) if c.op != "equal"), None)
    for k, c in enumerate(view):
        style = (cls[c.op] + (" first" if k == first_col else "")).strip()
        if c.a is not None:
            ra.append(_chip(int(a[c.a]), pa[ka] if pa else None, style))
            ka += 1
        else:
            ra.append(_chip(None, None, ""))
        if c.b is not None:
            rb.append(_chip(int(b[c.b]), pb[kb] if pb else None, style))
            kb += 1
        else:
            rb.append(_chip(None, None, ""))
    pre = '<span class="tk gap">…</span>' if start else ""
    post = '<span class="tk gap">…</span>' if start + limit < len(cells) else ""
    return (
        f'<div class="tkrow">{pre}{"".join(ra)}{post}</div>',
        f'<div class="tkrow">{pre}{"".join(rb)}{post}</div>',
        d,
    )


def text_diff(a: str, b: str, a_name: str, b_name: str, limit: int = 400) -> str:
    """A unified diff of two rendered prompts, line by line (whitespace made visible on the
    lines that differ, so a stray space or newline shows), at most ``limit`` lines."""
    al = a.splitlines(keepends=True)
    bl = b.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(al, bl, a_name, b_name, n=2):
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
            line = line[0] + visible(line[1:].rstrip("\n")) + "\n"
        out.append(line if line.endswith("\n") else line + "\n")
        if len(out) >= limit:
            out.append(f"… (diff cut at {limit} lines)\n")
            break
    return "".join(out)
