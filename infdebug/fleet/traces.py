"""Real serving workload traces, read and scaled to what this machine can serve.

Two public formats (see ``../shared/data/traces/``):

- Azure LLM inference 2023, CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` with wall-clock
  timestamps such as ``2023-11-16 18:17:03.9799600``.
- Mooncake FAST'25, JSONL: ``{"timestamp": ms, "input_length", "output_length", "hash_ids"}``
  where each hash id names one 512-token prompt block; requests that share a hash id share
  that block of prompt, which is what makes a prefix cache hit.

:func:`plan` turns a trace into a schedule: arrival offsets (the trace's gaps, scaled by a
stated factor or rescaled to a target mean rate), prompt/output lengths (scaled, clamped to
the model's context) and, for Mooncake, the shared prefix blocks.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from dataclasses import dataclass

from infdebug.errors import InputError

MOONCAKE_BLOCK_TOKENS = 512
FORMATS = ("azure", "mooncake")


class TraceFormatError(InputError):
    """A trace file that is not what its format says; the message names file:line."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: when it arrived (seconds after the trace's first request) and
    how long its prompt and output were, in tokens."""

    t_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a load schedule, after scaling and clamping."""

    index: int
    at_s: float  # offset from the start of the run
    prompt_tokens: int  # target prompt length in tokens (approximate once rendered to words)
    output_tokens: int  # max_tokens, sent with ignore_eos so the output is this long
    blocks: tuple[tuple[int, int], ...]  # (hash id, tokens of that block used); () = unique prompt
    source_line: int


def detect_format(path: str) -> str:
    """``azure`` for .csv, ``mooncake`` for .jsonl, else by the first byte of the file."""
    low = path.lower()
    if low.endswith(".csv"):
        return "azure"
    if low.endswith((".jsonl", ".ndjson")):
        return "mooncake"
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(64).lstrip()
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read the trace: {e.strerror}") from None
    if head.startswith("{"):
        return "mooncake"
    if head.upper().startswith("TIMESTAMP"):
        return "azure"
    raise TraceFormatError(
        f"{path}:1: expected an Azure LLM CSV (TIMESTAMP,ContextTokens,GeneratedTokens) "
        f"or Mooncake JSONL, found {head[:30]!r}"
    )


def _int_field(value: object, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TraceFormatError(f"{where}: expected an integer {name}, found {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise TraceFormatError(f"{where}: expected an integer {name}, found {value!r}") from None
    if n < 0:
        raise TraceFormatError(f"{where}: expected {name} >= 0, found {n}")
    return n


def _azure_time(value: str, where: str) -> float:
    # 7 fractional digits ("18:17:03.9799600"): parse the seconds' fraction ourselves.
    head, dot, frac = value.strip().partition(".")
    try:
        t = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp()
        return t + (float("0." + frac) if dot and frac else 0.0)
    except ValueError:
        raise TraceFormatError(
            f"{where}: expected TIMESTAMP like 2023-11-16 18:17:03.9799600, found {value!r}"
        ) from None


def read_azure(path: str, limit: int | None = None) -> list[TraceRequest]:
    """Rows of an Azure LLM 2023 CSV, times relative to the first row."""
    out: list[TraceRequest] = []
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read the trace: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        want = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        if header is None or [h.strip() for h in header] != want:
            raise TraceFormatError(
                f"{path}:1: expected the header {','.join(want)}, found {header!r}"
            )
        t0: float | None = None
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 3:
                raise TraceFormatError(f"{where}: expected 3 fields, found {len(row)}: {row!r}")
            t = _azure_time(row[0], where)
            t0 = t if t0 is None else t0
            out.append(
                TraceRequest(
                    t - t0,
                    _int_field(row[1].strip(), "ContextTokens", where),
                    _int_field(row[2].strip(), "GeneratedTokens", where),
                    (),
                    reader.line_num,
                )
            )
            if limit is not None and len(out) >= limit:
                break
    return out


def read_mooncake(path: str, limit: int | None = None) -> list[TraceRequest]:
    """Lines of a Mooncake JSONL trace (timestamps in ms), times relative to the first line."""
    out: list[TraceRequest] = []
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read the trace: {e.strerror}") from None
    with f:
        t0: float | None = None
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise TraceFormatError(
                    f"{where}: expected a JSON object, found a syntax error: {e.msg}"
                ) from None
            if not isinstance(obj, dict):
                raise TraceFormatError(
                    f"{where}: expected a JSON object, found {type(obj).__name__}"
                )
            for key in ("timestamp", "input_length", "output_length"):
                if key not in obj:
                    raise TraceFormatError(
                        f"{where}: expected the field {key!r}, found keys {sorted(obj)}"
                    )
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float):
                raise TraceFormatError(f"{where}: expected a number timestamp (ms), found {ts!r}")
            hashes = obj.get("hash_ids", [])
            if not isinstance(hashes, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hashes
            ):
                raise TraceFormatError(
                    f"{where}: expected hash_ids to be a list of integers, found {hashes!r}"
                )
            t = float(ts) / 1000.0
            t0 = t if t0 is None else t0
            out.append(
                TraceRequest(
                    t - t0,
                    _int_field(obj["input_length"], "input_length", where),
                    _int_field(obj["output_length"], "output_length", where),
                    tuple(hashes),
                    n,
                )
            )
            if limit is not None and len(out) >= limit:
                break
    return out


def read_trace(path: str, fmt: str = "auto", limit: int | None = None) -> list[TraceRequest]:
    """A trace of either format; ``fmt`` is azure, mooncake or auto (by suffix, then content)."""
    if not os.path.isfile(path):
        raise TraceFormatError(f"{path}: no such trace file")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind not in FORMATS:
        raise TraceFormatError(f"--format: expected one of azure, mooncake, auto, found {fmt!r}")
    reqs = read_azure(path, limit) if kind == "azure" else read_mooncake(path, limit)
    if not reqs:
        raise TraceFormatError(f"{path}: expected at least one request, found none")
    return reqs


def arrival_gaps(reqs: list[TraceRequest]) -> list[float]:
    """Gaps between consecutive arrivals (sorted by time; out-of-order rows count as 0)."""
    return [max(0.0, b.t_s - a.t_s) for a, b in zip(reqs, reqs[1:], strict=False)]


def plan(
    reqs: list[TraceRequest],
    *,
    duration_s: float,
    rate: float | None = None,
    time_scale: float | None = None,
    length_scale: float = 1.0,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    max_model_len: int | None = None,
    reserve_tokens: int = 32,
    max_requests: int = 100_000,
) -> list[PlannedRequest]:
    """A schedule of requests arriving within ``duration_s``.

    Arrival gaps are the trace's own, multiplied by ``time_scale``, or — with ``rate`` —
    rescaled so that the run sends ``rate`` requests/s on average: ``round(rate ×
    duration_s)`` requests whose gaps keep the trace's shape (its bursts and lulls) and
    together span ``duration_s`` (exactly one of the two). Rescaling by the whole trace's mean
    gap instead would miss the rate wherever the part of the trace replayed is burstier or
    quieter than the whole (the Azure conv trace opens with its longest gap: at 1 request/s
    for 10 s that sent one request). The trace wraps around if the run is longer than it.
    Lengths are multiplied by ``length_scale``, then clamped: output to
    ``max_output_tokens``, prompt to ``max_prompt_tokens``, and prompt + output +
    ``reserve_tokens`` (the chat template's own tokens) to ``max_model_len``.
    """
    if (rate is None) == (time_scale is None):
        raise ValueError(
            "give exactly one of rate (requests/s) and time_scale (factor on the trace's gaps)"
        )
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0, found {rate}")
    if time_scale is not None and time_scale <= 0:
        raise ValueError(f"time_scale must be > 0, found {time_scale}")
    if length_scale <= 0:
        raise ValueError(f"length_scale must be > 0, found {length_scale}")
    if not reqs:
        return []
    gaps = arrival_gaps(reqs) or [0.0]
    gaps.append(gaps[-1])  # the gap after the last request, before the trace wraps
    arrivals = _arrivals(gaps, duration_s, rate, time_scale, max_requests)
    block = max(1, round(MOONCAKE_BLOCK_TOKENS * length_scale))
    out: list[PlannedRequest] = []
    for i, t in enumerate(arrivals):
        r = reqs[i % len(reqs)]
        out_tok = max(1, round(r.output_tokens * length_scale))
        if max_output_tokens is not None:
            out_tok = min(out_tok, max_output_tokens)
        if max_model_len is not None:
            out_tok = max(1, min(out_tok, max_model_len // 2))
        prompt = max(1, round(r.input_tokens * length_scale))
        if max_prompt_tokens is not None:
            prompt = min(prompt, max_prompt_tokens)
        if max_model_len is not None:
            prompt = max(1, min(prompt, max_model_len - out_tok - reserve_tokens))
        out.append(
            PlannedRequest(i, t, prompt, out_tok, _blocks(r.hash_ids, prompt, block), r.line)
        )
    return out


def _arrivals(
    gaps: list[float],
    duration_s: float,
    rate: float | None,
    time_scale: float | None,
    max_requests: int,
) -> list[float]:
    """Arrival offsets: the trace's gaps (wrapping) scaled by ``time_scale`` up to
    ``duration_s``, or ``round(rate × duration_s)`` of them rescaled to span ``duration_s``."""
    if rate is None:
        assert time_scale is not None
        out: list[float] = []
        t = 0.0
        while t <= duration_s and len(out) < max_requests:
            out.append(t)
            t += gaps[(len(out) - 1) % len(gaps)] * time_scale
        return out
    n = min(max_requests, max(1, round(rate * duration_s)))
    window = [gaps[k % len(gaps)] for k in range(n)]  # the gap after each of the n requests
    total = sum(window)
    scaled = [g * duration_s / total for g in window] if total > 0 else [duration_s / n] * n
    out = [0.0] * n
    for k in range(1, n):
        out[k] = min(duration_s, out[k - 1] + scaled[k - 1])  # no float drift past the end
    return out


def _blocks(
    hash_ids: tuple[int, ...], prompt_tokens: int, block: int
) -> tuple[tuple[int, int], ...]:
    """The prefix blocks that cover ``prompt_tokens``: full blocks, then a partial last one."""
    out: list[tuple[int, int]] = []
    left = prompt_tokens
    for h in hash_ids:
        if left <= 0:
            break
        n = min(block, left)
        out.append((h, n))
        left -= n
    return tuple(out)
