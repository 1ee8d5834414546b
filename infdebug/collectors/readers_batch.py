"""OpenAI Batch API files into contract requests: output (and error) files joined with their
input file.

The shapes (OpenAI's Batch API; vLLM's ``run_batch``, ``vllm/entrypoints/openai/run_batch.py``
with ``BatchRequestInput`` / ``BatchRequestOutput`` / ``BatchResponseData``):

- input line: ``{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {…}}``
- output line: ``{"id": "batch_req_…" | "vllm-…", "custom_id": "r1", "response": {"status_code":
  200, "request_id": "…", "body": {…chat.completion or text_completion…}}, "error": null}``;
  a failed request has ``"error": "…" | {…}`` and/or a ``status_code`` other than 200 (vLLM:
  400 and no body; OpenAI: ``"response": null``, or a body ``{"error": {…}}``).

One request per custom_id. ``request_id`` is the ``custom_id``: it is what the user chose, what
pairs an output with its input, and all an input line has (the response's own ``id`` differs
between OpenAI and vLLM and is absent from inputs and errors). A failed line is a request with
``finish_reason`` error and the error text (``HTTP 400: …``).

Files are read one at a time, so pairing is by the directory, the same way from either side:

- an output file's input file is, among the Batch *input* files in its directory, the one
  named like it (``…output…`` ↔ ``…input…``, ``results`` ↔ ``requests``, ``out`` ↔ ``in``) if
  that one shares custom_ids with it, else the one sharing the most of the output's first
  ``SAMPLE`` custom_ids (ties: the first by name); none if no file shares any.
- an output file yields every line, with the messages and sampling parameters of its input
  joined in by custom_id.
- an input file yields only the lines that no output file paired with it answers (requests
  with no output), and counts the others in the notes as read from that output file. So
  ingesting both files, or a whole directory, counts each request once; an input file alone
  still yields all of its requests. Unanswered lines of a paired input take the output
  file's replica name (unless ``--replica`` was given), so one batch is one replica.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from infdebug.collectors.ingestor import JSONL_SUFFIXES
from infdebug.collectors.readers_base import (
    Context,
    ReaderSpec,
    build_request,
    json_lines,
    replica_from_path,
)
from infdebug.collectors.readers_openai import record_fields
from infdebug.schema import LineError, Request, open_bytes

SAMPLE = 256  # custom_ids of an output file compared with each candidate input file
_KIND_LINES = 50  # non-blank lines looked at to tell an input file from an output file
_NAME_PAIRS = (
    ("outputs", "inputs"),
    ("output", "input"),
    ("results", "requests"),
    ("result", "request"),
    ("responses", "requests"),
    ("response", "request"),
    ("out", "in"),
)
_cache: dict[tuple[Any, ...], Any] = {}


def line_kind(obj: Any) -> str | None:
    """``input`` / ``output`` for a Batch API line, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        return None
    if {"method", "url", "body"} <= obj.keys():
        return "input"
    if "response" in obj or "error" in obj:
        return "output"
    return None


def _objects(path: str, limit: int | None = None) -> Iterator[Any]:
    with open_bytes(path) as fh:
        seen = 0
        for raw in fh:
            if not raw.strip():
                continue
            seen += 1
            if limit is not None and seen > limit:
                return
            try:
                yield json.loads(raw)
            except ValueError:
                continue


def _key(path: str) -> tuple[str, int, float]:
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime


def file_kind(path: str) -> str | None:
    """``input`` / ``output`` from a file's first Batch API line; None if it has none."""
    try:
        k = ("kind", *_key(path))
        if k not in _cache:
            _cache[k] = next(
                (kind for o in _objects(path, _KIND_LINES) if (kind := line_kind(o))), None
            )
        return str(_cache[k]) if _cache[k] else None
    except (OSError, EOFError):
        return None


def _ids(path: str, limit: int | None = None) -> list[str]:
    return [o["custom_id"] for o in _objects(path, limit) if line_kind(o)]


def _siblings(path: str) -> list[str]:
    d = os.path.dirname(os.path.abspath(path))
    me = os.path.realpath(path)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    return [
        p
        for n in names
        if n.endswith(JSONL_SUFFIXES)
        and not n.startswith(".")
        and os.path.isfile(p := os.path.join(d, n))
        and os.path.realpath(p) != me
    ]


def _renamed(name: str) -> list[str]:
    """``name`` with its output word swapped for the input word (``batch_output`` →
    ``batch_input``)."""
    out = []
    for a, b in _NAME_PAIRS:

        def swap(m: re.Match[str], b: str = b) -> str:
            w = m.group(0)
            return b.upper() if w.isupper() else b.capitalize() if w[0].isupper() else b

        new = re.sub(rf"(?<![A-Za-z]){a}(?![A-Za-z])", swap, name, flags=re.IGNORECASE)
        if new != name:
            out.append(new)
    return out


def pair_input(output_path: str) -> str | None:
    """The input file paired with a Batch output file (see the module doc), or None."""
    try:
        k = ("pair", *_key(output_path))
    except OSError:
        return None
    if k in _cache:
        hit: str | None = _cache[k]
        return hit
    if len(_cache) > 10_000:
        _cache.clear()
    sample = set(_ids(output_path, SAMPLE))
    inputs = [p for p in _siblings(output_path) if file_kind(p) == "input"]
    scores = {p: sum(1 for i in _ids(p) if i in sample) for p in inputs} if sample else {}
    by_name = {os.path.basename(p): p for p in inputs}
    named = [by_name[n] for n in _renamed(os.path.basename(output_path)) if n in by_name]
    best: str | None = next((p for p in named if scores.get(p)), None)
    if best is None and scores and max(scores.values()) > 0:
        top = max(scores.values())
        best = next(p for p in inputs if scores[p] == top)
    _cache[k] = best
    return best


def outputs_of(input_path: str) -> list[str]:
    """The Batch output files in ``input_path``'s directory that are paired with it."""
    me = os.path.realpath(input_path)
    return [
        p
        for p in _siblings(input_path)
        if file_kind(p) == "output"
        and (q := pair_input(p)) is not None
        and os.path.realpath(q) == me
    ]


# --- reading -----------------------------------------------------------------------------------


def _error_text(err: Any, body: Any, status: Any) -> str:
    parts: list[str] = []
    for e in (
        err,
        body.get("error") if isinstance(body, dict) else None,
        body if isinstance(body, dict) and body.get("object") == "error" else None,
    ):
        if isinstance(e, str) and e:
            parts.append(e)
        elif isinstance(e, dict) and e:
            inner: dict[str, Any] = e["error"] if isinstance(e.get("error"), dict) else e
            msg = inner.get("message")
            code = (
                inner.get("code") if isinstance(inner.get("code"), str) else inner.get("type")
            )  # not the HTTP status
            text = str(msg) if msg else json.dumps(inner)[:500]
            parts.append(f"{code}: {text}" if code and str(code) not in text else text)
    text = parts[0] if parts else "the request failed (no error text)"
    return f"HTTP {status}: {text}" if isinstance(status, int) and status != 200 else text


def _output(obj: dict[str, Any], body_in: dict[str, Any] | None, ctx: Context) -> dict[str, Any]:
    resp, err = obj.get("response"), obj.get("error")
    if resp is not None and not isinstance(resp, dict):
        raise LineError("'response' is not an object", "response")
    if resp is None and err in (None, "", {}):
        raise LineError("batch output line with neither a response nor an error", "response")
    resp = resp or {}
    body = resp.get("body")
    status = resp.get("status_code")
    f = record_fields(
        {"request": body_in or {}, "response": body if isinstance(body, dict) else None}
    )
    f["request_id"] = obj["custom_id"]
    if str(obj.get("id", "")).startswith("vllm-"):
        f["engine"] = "vllm"  # vLLM's run_batch names its lines vllm-<uuid>
    failed = (
        err not in (None, "", {})
        or (isinstance(status, int) and status != 200)
        or isinstance(body, dict)
        and (isinstance(body.get("error"), dict | str) or body.get("object") == "error")
    )
    if failed:
        f["finish_reason"] = "error"
        f["error"] = _error_text(err, body, status)
    return f


def _input(obj: dict[str, Any]) -> dict[str, Any]:
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("batch input line: 'body' is not an object", "body")
    f = record_fields({"request": body, "response": None})
    f["request_id"] = obj["custom_id"]
    return f


def _load_inputs(path: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for o in _objects(path):
        if line_kind(o) == "input" and isinstance(o.get("body"), dict):
            out.setdefault(o["custom_id"], o["body"])
    return out


def read_batch(
    lines: Iterable[tuple[int, str]], ctx: Context
) -> Iterator[tuple[int, Request | LineError]]:
    kind = file_kind(ctx.path)
    inputs: dict[str, dict[str, Any]] = {}
    answered: dict[str, str] = {}  # custom_id -> the output file that yields it
    if kind == "output":
        src = pair_input(ctx.path)
        if src is not None:
            inputs = _load_inputs(src)
            ctx.meta["_batch_input"] = src
    elif kind == "input":
        outs = outputs_of(ctx.path)
        for out in outs:
            for cid in _ids(out):
                answered.setdefault(cid, os.path.basename(out))
        if outs and ctx.replica == replica_from_path(ctx.path):
            ctx.replica = replica_from_path(outs[0])
    joined = outputs = 0
    for n, obj in json_lines(lines, ctx):
        if isinstance(obj, LineError):
            yield n, obj
            continue
        lk = line_kind(obj)
        if lk is None:
            ctx.stats.ignored += 1
            continue
        try:
            if lk == "output":
                body_in = inputs.get(obj["custom_id"])
                joined += body_in is not None
                outputs += 1
                f = _output(obj, body_in, ctx)
            elif obj["custom_id"] in answered:
                ctx.stats.ignored += 1
                ctx.stats.notes[
                    f"batch input lines answered in {answered[obj['custom_id']]}: "
                    "read from that file"
                ] += 1
                continue
            else:
                f = _input(obj)
                ctx.stats.notes["batch input lines with no output: requests without an answer"] += 1
        except LineError as e:
            yield n, e
            continue
        yield n, build_request(ctx, n, f)
    if kind == "output":
        src = ctx.meta.get("_batch_input")
        if src is None:
            ctx.stats.notes[
                "no batch input file in the directory: messages and sampling unknown"
            ] += 1
        else:
            if joined:
                ctx.stats.notes[f"joined with batch input {os.path.basename(src)}"] += joined
            missing = outputs - joined
            if missing > 0:
                ctx.stats.notes[f"output lines with no line in {os.path.basename(src)}"] += missing


READER = ReaderSpec(
    "openai-batch",
    'OpenAI Batch API {"custom_id", …} JSONL',
    read=read_batch,
    json_line=lambda obj: line_kind(obj) is not None,
    order=20,  # before "openai": an output line has a "response" too
    engine="openai",
    variant_of="openai",
)
