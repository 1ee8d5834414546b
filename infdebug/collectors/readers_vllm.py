"""vLLM log lines into contract requests.

What is read (0.2-era to current lines; the prefix ``INFO 05-14 10:23:45 logger.py:39]``,
``INFO 05-14 10:23:45 [logger.py:39]``, ``(APIServer pid=1) INFO …`` or
``INFO 2024-05-14 10:23:45,123 …`` gives the arrival time). Shapes from
``vllm/entrypoints/logger.py`` (``RequestLogger``) and ``vllm/outputs.py`` across versions:

- up to 0.11.1, one INFO line: ``Received request ID: prompt: '…', params: SamplingParams(…),
  prompt_token_ids: […], lora_request: None, prompt_adapter_request: None.`` and its older
  spellings (``sampling params:`` / ``sampling_params:``, ``prompt token ids:``,
  ``prefix_pos: None,``) and newer ones (``prompt_embeds shape: None``).
  ``prompt_token_ids: None`` gives ``[]``.
- from 0.11.2, two lines: INFO ``Received request ID: params: SamplingParams(…), lora_request:
  None.`` and, before it, DEBUG ``Request ID details: prompt: '…', prompt_token_ids: […],
  prompt_embeds shape: None.`` (logged only at ``VLLM_LOGGING_LEVEL=DEBUG``). They are joined
  by request ID, in either order; the INFO line alone is a request with its sampling
  parameters and no prompt.
- ``RequestOutput(request_id=…, prompt='…', prompt_token_ids=[…], …, outputs=[CompletionOutput(
  index=0, text='…', token_ids=[…] | array('l', […]) | (…), …, finish_reason=stop, …)],
  finished=True, metrics=RequestMetrics(arrival_time=…, …), …)`` as printed by ``print(output)``.
  A ``finished=False`` one is not a finished request: it is superseded by the finished one of
  the same ID (cumulative outputs), or joined to it (delta outputs), or left out with a note.
- ``Generated response ID: output: '…', output_token_ids: […], finish_reason: stop``
  (``--enable-log-outputs``); ``(streaming delta)`` lines are joined, a ``(streaming
  complete)`` line gives the full text (or, as ``<streaming_complete: N tokens>``, the count).

Lines of one request are joined by ID: exactly, else by the ID without vLLM's random
``-<8 hex>`` suffix (internal request IDs since 0.11.1) or without an endpoint prefix
(``chatcmpl-``, ``cmpl-``, …) — only where that form names a single open request.

Startup lines give the model and version for the requests after them: ``non-default args:
{'model': …, 'served_model_name': […]}``, ``Initializing a V1 LLM engine (v0.11.2) with config:
model='…', …, served_model_name=…``, ``args: Namespace(…)``, ``vLLM server version X, serving
model Y`` and its logo form. The served model name wins over the model path (it is what
clients and the OpenAI-style logs call the model); a restart that serves another model
re-labels the requests after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from infdebug.collectors.pyrepr import Call, ReprError, ReprParser
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

_RECEIVED_RE = re.compile(r"Received request (\S+?): (?=prompt\b|params\b|sampling[ _]params\b)")
_DETAILS_RE = re.compile(r"\bRequest (\S+?) details: (?=prompt\b)")
_GENERATED_RE = re.compile(
    r"Generated response (\S+?)( \(streaming (?:delta|complete)\))?: (?=output\b)"
)
_PLACEHOLDER_RE = re.compile(r"<streaming_complete: (\d+) tokens>")
_KEY_RE = re.compile(r"\s*([A-Za-z_][A-Za-z_ ]*?): ")
_VERSION_RE = re.compile(
    r"(?:engine \(v|vLLM API server version |vLLM server version |vLLM version )v?([0-9][\w.+-]*)"
)
_LOGO_RE = re.compile(r"█\s+(version|model)\s+(\S+)\s*$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_MODEL_RE = re.compile(r"\bmodel='([^']+)'")
_SERVED_RE = re.compile(r"\bserved_model_name=(?:'([^']*)'|\['([^']*)'|([^\s,')\[]+))")
_SERVING_RE = re.compile(r"vLLM server version v?(\S+?),? serving model (\S+)")
_SUFFIX_RE = re.compile(r"^(.+)-[0-9a-f]{8}$")
_ID_PREFIXES = (
    "chatcmpl-",
    "cmpl-",
    "embd-",
    "resp-",
    "classify-",
    "score-",
    "rerank-",
    "pool-",
    "tokn-",
)
_KEY_ALIASES = {
    "sampling_params": "params",
    "sampling params": "params",
    "prompt token ids": "prompt_token_ids",
    "output token ids": "output_token_ids",
}
_SAMPLING_RENAMES = {"stop_token_ids": "stop_ids"}
_MARKS = (
    "Received request ",
    "RequestOutput(request_id=",
    "Generated response ",
)  # a line of this format


def parse_kv_message(text: str, pos: int) -> dict[str, Any]:
    """``key: value, key: value.`` as vLLM's request logger writes it (values are reprs)."""
    s = text.rstrip()
    if s.endswith("."):
        s = s[:-1]
    p = ReprParser(s)
    out: dict[str, Any] = {}
    while pos < len(s):
        m = _KEY_RE.match(s, pos)
        if m is None:
            raise ReprError(f"expected 'key: value', found {s[pos : pos + 30]!r}", pos)
        key = m.group(1).strip()
        key = _KEY_ALIASES.get(key, key.replace(" ", "_"))
        out[key], pos = p.value(m.end(), ",")
        pos = p.skip(pos)
        if pos < len(s):
            if s[pos] != ",":
                raise ReprError(f"expected ',' after {key}, found {s[pos : pos + 30]!r}", pos)
            pos += 1
    return out


def _params(v: Any, ctx: Context) -> dict[str, Any] | None:
    if isinstance(v, Call):
        if v.name == "PoolingParams":
            ctx.stats.notes["pooling (embedding) requests: no sampling parameters"] += 1
            return None
        return sampling_from(v.kwargs, _SAMPLING_RENAMES)
    if v is None:
        return None
    raise LineError(f"params: expected SamplingParams(…), found {str(v)[:60]!r}", "sampling")


def _received(text: str, m: re.Match[str], ctx: Context) -> dict[str, Any]:
    kv = parse_kv_message(text, m.end())
    f: dict[str, Any] = {
        "request_id": m.group(1),
        "t_arrival": ctx.timestamp(text[: m.start()]),
        "sampling": _params(kv.get("params"), ctx),
        "_has_params": True,
    }
    if "prompt" in kv or "prompt_token_ids" in kv:  # before 0.11.2: the prompt on the same line
        f["prompt_text"] = as_text(kv.get("prompt"), "prompt", ctx)
        f["prompt_ids"] = as_ids(kv.get("prompt_token_ids"), "prompt_token_ids")
        f["_has_prompt"] = True
    return f


def _details(text: str, m: re.Match[str], ctx: Context) -> dict[str, Any]:
    kv = parse_kv_message(text, m.end())
    return {
        "request_id": m.group(1),
        "prompt_text": as_text(kv.get("prompt"), "prompt", ctx),
        "prompt_ids": as_ids(kv.get("prompt_token_ids"), "prompt_token_ids", ctx),
        "_has_prompt": True,
        "_t_line": ctx.timestamp(text[: m.start()]),
    }


def _logprobs(v: Any, ids: list[int] | None) -> list[float] | None:
    """The chosen token's logprob at each position of ``[{id: Logprob(logprob=…)}, …]``."""
    if not isinstance(v, list) or ids is None or len(v) != len(ids):
        return None
    out: list[float] = []
    for step, tid in zip(v, ids, strict=True):
        lp = step.get(tid) if isinstance(step, dict) else None
        val = lp.get("logprob") if isinstance(lp, Call) else lp
        if not isinstance(val, int | float):
            return None
        out.append(float(val))
    return out


def _request_output(text: str, start: int, ctx: Context) -> dict[str, Any]:
    ro, _ = ReprParser(text).value(start, ",")
    if not isinstance(ro, Call) or ro.name != "RequestOutput":
        raise LineError("expected RequestOutput(…)")
    if ro.get("request_id") is None:
        raise LineError("RequestOutput without request_id", "request_id")
    f: dict[str, Any] = {
        "request_id": str(ro.get("request_id")),
        "prompt_text": as_text(ro.get("prompt"), "prompt", ctx),
        "prompt_ids": as_ids(ro.get("prompt_token_ids"), "prompt_token_ids"),
        "_kind": "final" if ro.get("finished") is not False else "partial",
    }
    cached = ro.get("num_cached_tokens")
    if isinstance(cached, int) and cached >= 0:
        f["cached_prompt_tokens"] = cached
    outputs = ro.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, Call) for o in outputs):
        raise LineError("RequestOutput.outputs: expected a list of CompletionOutput(…)", "outputs")
    if len(outputs) > 1:
        ctx.stats.notes["RequestOutput with n>1 completions: the first (index 0) kept"] += 1
    if outputs:
        co = outputs[0]
        ids = as_ids(co.get("token_ids"), "token_ids")
        f.update(
            output_text=as_text(co.get("text"), "text", ctx),
            output_ids=ids,
            output_logprobs=_logprobs(co.get("logprobs"), ids),
        )
        f["finish_reason"], f["finish_reason_raw"] = finish(co.get("finish_reason"))
    metrics = ro.get("metrics")
    if isinstance(metrics, Call):
        arr = metrics.get("arrival_time")
        if isinstance(arr, int | float) and arr > 0:
            f["t_arrival"] = float(arr)
            for key, src in (("ttft_s", "first_token_time"), ("e2e_s", "finished_time")):
                t = metrics.get(src)
                if isinstance(t, int | float) and t >= arr:
                    f[key] = float(t) - arr
        q = metrics.get("time_in_queue")
        if isinstance(q, int | float) and q >= 0:
            f["queue_s"] = float(q)
    f["_t_line"] = ctx.timestamp(text[:start])  # when it was printed: a fallback only
    return f


def _generated(text: str, m: re.Match[str], ctx: Context) -> dict[str, Any]:
    kv = parse_kv_message(text, m.end())
    stream = m.group(2) or ""
    f: dict[str, Any] = {
        "request_id": m.group(1),
        "output_text": as_text(kv.get("output"), "output", ctx),
        "output_ids": as_ids(kv.get("output_token_ids"), "output_token_ids"),
        "_kind": "delta" if "delta" in stream else "complete" if "complete" in stream else "final",
        "_src": "gen",
        "_t_line": ctx.timestamp(text[: m.start()]),
    }
    f["finish_reason"], f["finish_reason_raw"] = finish(kv.get("finish_reason"))
    ph = _PLACEHOLDER_RE.fullmatch(f["output_text"] or "")
    if ph is not None:  # the streaming-complete line without the text: only the count
        f["output_text"], f["output_tokens"] = None, int(ph.group(1))
    return f


# --- startup lines ------------------------------------------------------------------------------


def _first_name(v: Any) -> str | None:
    if isinstance(v, list | tuple) and v:
        v = v[0]
    return v if isinstance(v, str) and v and v != "None" else None


def _sniff_startup(text: str, ctx: Context, requests_so_far: int) -> None:
    model = served = version = None
    if "non-default args: {" in text:
        i = text.index("non-default args: {") + len("non-default args: ")
        try:
            d, _ = ReprParser(text).value(i, ",")
        except ReprError:
            d = None
        if isinstance(d, dict):
            model = _first_name(d.get("model")) or _first_name(d.get("model_tag"))
            served = _first_name(d.get("served_model_name"))
    elif " with config: " in text or "Namespace(" in text:
        mm, sm = _MODEL_RE.search(text), _SERVED_RE.search(text)
        model = mm.group(1) if mm else None
        served = _first_name(next((g for g in sm.groups() if g), None)) if sm else None
    elif "serving model " in text:
        s = _SERVING_RE.search(text)
        if s:
            version, served = s.group(1), s.group(2)
    elif "█" in text:
        lg = _LOGO_RE.search(_ANSI_RE.sub("", text))
        if lg and lg.group(1) == "model":
            served = lg.group(2)
        elif lg:
            version = lg.group(2)
    if version is None and ("ersion" in text or "engine (v" in text):
        v = _VERSION_RE.search(text)
        version = v.group(1).rstrip(".,)") if v else version
    if version:
        ctx.meta["engine_version"] = version
    if not (model or served):
        return
    if (
        ctx.meta.get("_boot_requests", -1) != requests_so_far
    ):  # requests since the last startup line: a restart
        ctx.meta["_served"] = False
        ctx.meta["_boot_requests"] = requests_so_far
    if served:
        ctx.meta["model"], ctx.meta["_served"] = served, True
    elif not ctx.meta.get("_served"):
        ctx.meta["model"] = model


# --- joining the lines of one request ----------------------------------------------------------


def _forms(rid: str) -> list[str]:
    """Other spellings of a request ID that vLLM's layers use for the same request."""
    out = [rid]
    m = _SUFFIX_RE.match(rid)
    if m and m.group(1) + "-" not in _ID_PREFIXES:
        out.append(m.group(1))
    for x in list(out):
        for p in _ID_PREFIXES:
            if x.startswith(p) and len(x) > len(p):
                out.append(x[len(p) :])
    return out


class _Joiner:
    """Joins the lines of one request: input (Received / details) and output lines."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.entries: list[tuple[int, dict[str, Any]]] = []
        self.open: dict[str, dict[str, Any]] = {}
        self.alias: dict[str, str | None] = {}  # another form -> the open ID (None: more than one)

    def find(self, rid: str) -> dict[str, Any] | None:
        if rid in self.open:
            return self.open[rid]
        for form in _forms(rid):
            if form in self.open:
                return self.open[form]
            target = self.alias.get(form)
            if target is not None:
                return self.open.get(target)
        return None

    def _new(self, n: int, f: dict[str, Any]) -> None:
        f["_meta"] = {k: v for k, v in self.ctx.meta.items() if not k.startswith("_")}
        self.entries.append((n, f))
        rid = f["request_id"]
        self.open[rid] = f
        for form in _forms(rid)[1:]:
            prev = self.alias.get(form, "")
            self.alias[form] = rid if prev in ("", rid) else None

    def add_input(self, n: int, f: dict[str, Any]) -> None:
        """A Received line (``_has_params``) or a details line (``_has_prompt`` only)."""
        cur = self.find(f["request_id"])
        if (
            cur is None
            or cur.get("_finished")
            or f.get("_has_params")
            and cur.get("_has_params")
            or f.get("_has_prompt")
            and cur.get("_has_prompt")
        ):
            self._new(n, f)
            return
        for k, v in f.items():
            if v is None or k in ("prompt_ids", "prompt_text") and cur.get(k):
                continue
            if (
                k == "t_arrival"
                and cur.get("_t_metrics")
                or k == "_t_line"
                and cur.get(k) is not None
            ):
                continue  # RequestMetrics.arrival_time is the engine's own, finer time
            cur[k] = v
        if f.get("_has_params"):
            cur["request_id"] = f["request_id"]  # the request logger's spelling of the ID

    def add_output(self, n: int, f: dict[str, Any]) -> None:
        kind, src = f.pop("_kind"), f.pop("_src", "ro")
        cur = self.find(f["request_id"])
        if cur is not None and cur.get("_finished"):
            if src == "gen" and kind != "delta" and cur.get("_by_log"):
                self.ctx.stats.notes[
                    "more than one completion logged for a request (n>1): the first kept"
                ] += 1
                return
            cur = None  # the ID used again by a later request
        if cur is None:
            self._new(n, {"request_id": f["request_id"]})
            cur = self.open[f["request_id"]]
        if kind == "partial":
            self._partial(cur, f)
            return
        if cur.get("_partial_ids") is not None:
            self._after_partials(cur, f)
        fr, raw = f.pop("finish_reason", None), f.pop("finish_reason_raw", None)
        del f["request_id"]
        for k, v in f.items():
            if v is None or k == "prompt_ids" and len(v) < len(cur.get(k) or []):
                continue  # keep the longer: the request logger may have cut it at max_log_len
            if kind == "delta" and k == "output_text":
                cur[k] = (cur.get(k) or "") + v
            elif kind == "delta" and k == "output_ids":
                cur[k] = (cur.get(k) or []) + v
            elif not (k == "_t_line" and cur.get(k) is not None):
                cur[k] = v
        if f.get("t_arrival") is not None:
            cur["_t_metrics"] = True
        if (
            fr is not None
            or raw is not None
            and cur.get("finish_reason") is None
            and cur.get("finish_reason_raw") is None
        ):
            cur["finish_reason"], cur["finish_reason_raw"] = (
                fr,
                raw,
            )  # streaming_complete never hides a stop
        if kind != "delta":
            cur["_finished"], cur["_by_log"] = True, src == "gen"

    def _partial(self, cur: dict[str, Any], f: dict[str, Any]) -> None:
        """A RequestOutput(finished=False): its input side is kept, its output held back."""
        for k in ("prompt_text", "prompt_ids", "t_arrival", "cached_prompt_tokens"):
            if f.get(k) is not None and cur.get(k) is None:
                cur[k] = f[k]
        ids, text = f.get("output_ids") or [], f.get("output_text") or ""
        last = cur.get("_partial_last") or []
        if ids:  # cumulative outputs grow: each one starts with the one before
            cur["_partial_cumulative"] = (
                cur.get("_partial_cumulative", True) and ids[: len(last)] == last
            )
            cur["_partial_last"] = ids
        cur["_partial_ids"] = (cur.get("_partial_ids") or []) + ids
        cur["_partial_text"] = (cur.get("_partial_text") or "") + text

    def _after_partials(self, cur: dict[str, Any], f: dict[str, Any]) -> None:
        last = cur.pop("_partial_last", None) or []
        cumulative = cur.pop("_partial_cumulative", True)
        acc_ids, acc_text = cur.pop("_partial_ids"), cur.pop("_partial_text")
        ids = f.get("output_ids") or []
        if cumulative and ids[: len(last)] == last:  # the finished one has it all
            self.ctx.stats.notes[
                "partial RequestOutput(finished=False) lines: superseded by the finished one"
            ] += 1
            return
        f["output_ids"] = acc_ids + ids
        f["output_text"] = acc_text + (f.get("output_text") or "")
        f["output_logprobs"] = None
        self.ctx.stats.notes[
            "partial RequestOutput(finished=False) deltas: joined with the finished one"
        ] += 1

    def finished(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for n, f in self.entries:
            if f.get("_partial_ids") is not None:
                if not (f.get("_has_params") or f.get("_has_prompt")):
                    self.ctx.stats.notes[
                        "RequestOutput(finished=False) with no finished one: not a "
                        "finished request, left out"
                    ] += 1
                    continue
                self.ctx.stats.notes[
                    "a request whose output never finished in the log: its partial output left out"
                ] += 1
            yield n, f


def read_vllm(
    lines: Iterable[tuple[int, str]], ctx: Context
) -> Iterator[tuple[int, Request | LineError]]:
    joiner = _Joiner(ctx)
    errors: list[tuple[int, LineError]] = []
    for n, text in lines:
        if not text.strip():
            continue
        ctx.stats.lines += 1
        try:
            m = _RECEIVED_RE.search(text)
            if m is not None:
                joiner.add_input(n, _received(text, m, ctx))
                continue
            d = _DETAILS_RE.search(text)
            if d is not None:
                joiner.add_input(n, _details(text, d, ctx))
                continue
            i = text.find("RequestOutput(request_id=")
            if i >= 0:
                joiner.add_output(n, _request_output(text, i, ctx))
                continue
            g = _GENERATED_RE.search(text)
            if g is not None:
                joiner.add_output(n, _generated(text, g, ctx))
                continue
        except ReprError as e:
            errors.append((n, LineError(f"unparseable vLLM request line: {e}")))
            continue
        except LineError as e:
            errors.append((n, e))
            continue
        if "Received request " in text:
            errors.append(
                (n, LineError("a 'Received request' line without 'ID: params:' or 'ID: prompt:'"))
            )
            continue
        _sniff_startup(text, ctx, len(joiner.entries))
        ctx.stats.ignored += 1
    out: list[tuple[int, Request | LineError]] = list(errors)
    for n, f in joiner.finished():
        if f.get("t_arrival") is None:
            f["t_arrival"] = f.get("_t_line")
        for k, v in f["_meta"].items():
            f.setdefault(k, v)
        out.append(
            (n, build_request(ctx, n, {k: v for k, v in f.items() if not k.startswith("_")}))
        )
    out.sort(key=lambda x: x[0])
    yield from out


READER = ReaderSpec(
    "vllm",
    "vLLM 'Received request' / RequestOutput lines",
    read=read_vllm,
    text_line=lambda text: any(m in text for m in _MARKS),
    order=50,
)
