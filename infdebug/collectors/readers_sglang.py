"""SGLang ``--log-requests`` lines into contract requests.

``[2025-01-20 10:23:45] Receive: obj=GenerateReqInput(rid='…', text='…', input_ids=[…],
sampling_params={…}, …)`` when a request arrives, and ``Finish: obj=GenerateReqInput(…),
out={'text': '…', 'output_ids': […], 'meta_info': {'id': '…', 'finish_reason': {'type':
'length', 'length': 128}, 'prompt_tokens': …, 'completion_tokens': …, 'e2e_latency': …}}``
when it ends (older versions: ``in=GenerateReqInput(…), out={…}``). Values are printed by
``dataclass_to_string_truncated``: reprs, with long strings and lists shortened to
``'head' ... 'tail'`` — such a field is left out (and counted in the notes), never guessed.
Output IDs come from ``output_ids``, or else from ``meta_info.output_token_logprobs``.
``meta_info`` (``python/sglang/srt/managers/tokenizer_manager.py``) also gives the engine's
counts (``prompt_tokens``, ``completion_tokens``, ``cached_tokens`` → prompt_tokens /
output_tokens / cached_prompt_tokens), timings (``e2e_latency``, ``ttft``, ``queue_time``), the
finish reason (``{'type': 'stop', 'matched': 128009}``, ``{'type': 'length', 'length': 128}``,
``{'type': 'abort', 'message': '…', 'status_code': …}``: the message → abort_message; mapped
by ``readers_fields``) and speculative-decoding counts. ``server_args=ServerArgs(model_path=…,
served_model_name=…)`` names the model (the served name first) for the requests after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from infdebug.collectors.pyrepr import Call, ReprError, ReprParser, Truncated
from infdebug.collectors.readers_base import (
    Context,
    ReaderSpec,
    as_ids,
    as_text,
    build_request,
    sampling_from,
)
from infdebug.collectors.readers_fields import finish
from infdebug.schema import LineError, Request

_MARK_RE = re.compile(r"\b(Receive|Finish): obj=(?=[A-Za-z_]\w*\()|\bin=(?=GenerateReqInput\()")
_OUT_RE = re.compile(r"\s*,\s*out=")
_MODEL_RE = re.compile(r"\bmodel_path='([^']+)'")
_SERVED_RE = re.compile(r"\bserved_model_name='([^']+)'")
_SAMPLING_RENAMES = {"max_new_tokens": "max_tokens", "stop_token_ids": "stop_ids"}
_MARKS = (
    "Receive: obj=GenerateReqInput(",
    "Finish: obj=GenerateReqInput(",
    "in=GenerateReqInput(",
    "Receive: obj=",
    "Finish: obj=",
)  # a line of this format


def _one(v: Any, what: str) -> Any:
    if isinstance(v, list) and what in ("rid", "text") and v and isinstance(v[0], str):
        raise LineError(
            f"batched GenerateReqInput ({what} is a list of {len(v)}): not supported", what
        )
    return v


def _from_obj(obj: Call, ctx: Context) -> dict[str, Any]:
    rid = _one(obj.get("rid"), "rid")
    text = _one(obj.get("text"), "text")
    ids = obj.get("input_ids")
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        raise LineError(
            "batched GenerateReqInput (input_ids is a list of lists): not supported", "input_ids"
        )
    sp = obj.get("sampling_params")
    sampling = sampling_from(sp, _SAMPLING_RENAMES) if isinstance(sp, dict) else None
    return {
        "request_id": rid if isinstance(rid, str) else None,
        "prompt_text": as_text(text, "text", ctx),
        "prompt_ids": as_ids(ids, "input_ids", ctx),
        "sampling": sampling,
    }


def _from_out(out: Any, ctx: Context) -> dict[str, Any]:
    if not isinstance(out, dict):
        raise LineError(f"out: expected a dict, found {str(out)[:60]!r}", "out")
    meta = out.get("meta_info")
    meta = meta if isinstance(meta, dict) else {}
    ids = as_ids(out.get("output_ids"), "output_ids", ctx)
    lps = meta.get("output_token_logprobs")
    logprobs: list[float] | None = None
    if isinstance(lps, list) and all(isinstance(x, list | tuple) and len(x) >= 2 for x in lps):
        from_lp = [x[1] for x in lps]
        if ids is None and all(isinstance(i, int) for i in from_lp):
            ids = from_lp
        if ids == from_lp and all(isinstance(x[0], int | float) for x in lps):
            logprobs = [float(x[0]) for x in lps]
    f: dict[str, Any] = {
        "request_id": meta.get("id") if isinstance(meta.get("id"), str) else None,
        "output_text": as_text(out.get("text"), "out.text", ctx),
        "output_ids": ids,
        "output_logprobs": logprobs,
    }
    fr = meta.get("finish_reason")
    f["finish_reason"], f["finish_reason_raw"] = finish(fr)
    if isinstance(fr, dict) and isinstance(fr.get("message"), str) and fr["message"]:
        f["abort_message"] = fr["message"]
    for key, src in (
        ("cached_prompt_tokens", "cached_tokens"),
        ("prompt_tokens", "prompt_tokens"),
        ("output_tokens", "completion_tokens"),
    ):
        v = meta.get(src)
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32:
            f[key] = v
    for key, src in (("e2e_s", "e2e_latency"), ("ttft_s", "ttft"), ("queue_s", "queue_time")):
        v = meta.get(src)
        if isinstance(v, int | float) and v >= 0:
            f[key] = float(v)
    for key, src in (
        ("spec_accepted_tokens", "spec_accept_token_num"),
        ("spec_draft_tokens", "spec_draft_token_num"),
    ):
        v = meta.get(src)
        if isinstance(v, int) and v >= 0:
            f[key] = v
    return f


def _parse(text: str, m: re.Match[str], ctx: Context) -> tuple[str, dict[str, Any]]:
    p = ReprParser(text)
    obj, pos = p.value(m.end(), ",")
    if not isinstance(obj, Call):
        raise LineError(f"obj: expected GenerateReqInput(…), found {str(obj)[:60]!r}", "obj")
    f = _from_obj(obj, ctx)
    kind = m.group(1) or "Finish"  # the older `in=…, out=…` line is written when a request ends
    t = ctx.timestamp(text[: m.start()])
    om = _OUT_RE.match(text, pos)
    if kind == "Finish" and om is not None:
        out, _ = p.value(om.end(), ",")
        if isinstance(out, Truncated):
            raise LineError("out was truncated by the logger", "out")
        for k, v in _from_out(out, ctx).items():
            if v is not None and not (k == "request_id" and f.get("request_id")):
                f[k] = v
        e2e = f.get("e2e_s")
        f["_t_end"] = t
        if t is not None and isinstance(e2e, float):
            f["t_arrival"] = t - e2e
    else:
        f["t_arrival"] = t
    if not f.get("request_id"):
        raise LineError(f"{kind} line without a request id (rid)", "rid")
    return kind, f


def _sniff_startup(text: str, ctx: Context) -> None:
    """The latest ``server_args=`` names the model of the requests after it (a restart may
    serve another one)."""
    if "server_args=" in text:
        mm = _SERVED_RE.search(text) or _MODEL_RE.search(text)
        if mm:
            ctx.meta["model"] = mm.group(1)


def _stamp(f: dict[str, Any], ctx: Context) -> dict[str, Any]:
    for k, v in ctx.meta.items():
        if not k.startswith("_"):
            f.setdefault(k, v)
    return f


def read_sglang(
    lines: Iterable[tuple[int, str]], ctx: Context
) -> Iterator[tuple[int, Request | LineError]]:
    entries: list[tuple[int, dict[str, Any]]] = []
    waiting: dict[str, dict[str, Any]] = {}  # received, not finished yet
    out: list[tuple[int, Request | LineError]] = []
    for n, text in lines:
        if not text.strip():
            continue
        ctx.stats.lines += 1
        m = _MARK_RE.search(text)
        if m is None:
            _sniff_startup(text, ctx)
            ctx.stats.ignored += 1
            continue
        try:
            kind, f = _parse(text, m, ctx)
        except ReprError as e:
            out.append((n, LineError(f"unparseable SGLang request line: {e}")))
            continue
        except LineError as e:
            out.append((n, e))
            continue
        rid = f["request_id"]
        _stamp(f, ctx)
        if kind == "Receive":
            entries.append((n, f))
            waiting[rid] = f
            continue
        cur = waiting.pop(rid, None)
        if cur is None:
            entries.append((n, f))
            continue
        t_in, t_end = cur.get("t_arrival"), f.pop("_t_end", None)
        for k, v in f.items():
            if v is not None and not (
                k in ("prompt_ids", "prompt_text", "sampling") and cur.get(k)
            ):
                cur[k] = v
        if t_in is not None:
            cur["t_arrival"] = t_in  # the Receive line's time is the arrival
            if t_end is not None and cur.get("e2e_s") is None and t_end >= t_in:
                cur["e2e_s"] = t_end - t_in
    for n, f in entries:
        out.append(
            (n, build_request(ctx, n, {k: v for k, v in f.items() if not k.startswith("_")}))
        )
    out.sort(key=lambda x: x[0])
    yield from out


READER = ReaderSpec(
    "sglang",
    "SGLang 'Receive:'/'Finish:' lines",
    read=read_sglang,
    text_line=lambda text: any(m in text for m in _MARKS),
    order=40,  # before vLLM's marks
)
