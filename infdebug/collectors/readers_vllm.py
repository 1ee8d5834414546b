"""vLLM log lines into contract requests.

What is read (0.2–0.8-era and later lines; the prefix ``INFO 05-14 10:23:45 logger.py:39]``,
``INFO 05-14 10:23:45 [logger.py:39]``, ``(APIServer pid=1) INFO …`` or
``INFO 2024-05-14 10:23:45,123 …`` gives the arrival time):

- ``Received request ID: prompt: '…', params: SamplingParams(…), prompt_token_ids: […],
  lora_request: None, prompt_adapter_request: None.`` and its older spellings
  (``sampling params:`` / ``sampling_params:``, ``prompt token ids:``, ``prefix_pos: None,``)
  and newer ones (``prompt_embeds shape: None``). ``prompt_token_ids: None`` gives ``[]``.
- ``RequestOutput(request_id=…, prompt='…', prompt_token_ids=[…], …, outputs=[CompletionOutput(
  index=0, text='…', token_ids=[…] | array('l', […]) | (…), …, finish_reason=stop, …)], …,
  metrics=RequestMetrics(arrival_time=…, …), …)`` as printed by ``print(output)``.
- ``Generated response ID: output: '…', output_token_ids: […], finish_reason: stop``
  (``--enable-log-outputs``; streaming deltas are joined).

Lines of one request id are joined into one record. Startup lines give the model and version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from infdebug.collectors.pyrepr import Call, ReprError, ReprParser
from infdebug.collectors.readers import (
    Context,
    as_ids,
    as_text,
    build_request,
    finish_reason,
    sampling_from,
)
from infdebug.schema import LineError, Request

_RECEIVED_RE = re.compile(r"Received request (\S+?): (?=prompt\b)")
_GENERATED_RE = re.compile(r"Generated response (\S+?)( \(streaming (?:delta|complete)\))?: (?=output\b)")
_KEY_RE = re.compile(r"\s*([A-Za-z_][A-Za-z_ ]*?): ")
_VERSION_RE = re.compile(r"(?:engine \(v|vLLM API server version |vLLM version )v?([0-9][\w.+-]*)")
_MODEL_RE = re.compile(r"\bmodel='([^']+)'")
_KEY_ALIASES = {
    "sampling_params": "params",
    "sampling params": "params",
    "prompt token ids": "prompt_token_ids",
    "output token ids": "output_token_ids",
}
_SAMPLING_RENAMES = {"stop_token_ids": "stop_ids"}


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
            raise ReprError(f"expected 'key: value', found {s[pos:pos + 30]!r}", pos)
        key = m.group(1).strip()
        key = _KEY_ALIASES.get(key, key.replace(" ", "_"))
        out[key], pos = p.value(m.end(), ",")
        pos = p.skip(pos)
        if pos < len(s):
            if s[pos] != ",":
                raise ReprError(f"expected ',' after {key}, found {s[pos:pos + 30]!r}", pos)
            pos += 1
    return out


def _params(v: Any) -> dict[str, Any] | None:
    if isinstance(v, Call):
        return sampling_from(v.kwargs, _SAMPLING_RENAMES)
    if v is None:
        return None
    raise LineError(f"params: expected SamplingParams(…), found {str(v)[:60]!r}", "sampling")


def _received(text: str, m: re.Match[str], ctx: Context) -> dict[str, Any]:
    kv = parse_kv_message(text, m.end())
    if "prompt" not in kv:
        raise LineError("Received request line without a prompt", "prompt")
    ids = as_ids(kv.get("prompt_token_ids"), "prompt_token_ids")
    return {
        "request_id": m.group(1),
        "t_arrival": ctx.timestamp(text[: m.start()]),
        "prompt_text": as_text(kv.get("prompt"), "prompt", ctx),
        "prompt_ids": ids,
        "sampling": _params(kv.get("params")),
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
        "_finished": ro.get("finished") is True,
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
            finish_reason=finish_reason(co.get("finish_reason")),
            output_logprobs=_logprobs(co.get("logprobs"), ids),
        )
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
    return {
        "request_id": m.group(1),
        "output_text": as_text(kv.get("output"), "output", ctx),
        "output_ids": as_ids(kv.get("output_token_ids"), "output_token_ids"),
        "finish_reason": finish_reason(kv.get("finish_reason")),
        "_delta": bool(m.group(2) and "delta" in m.group(2)),
        "_t_line": ctx.timestamp(text[: m.start()]),
    }


def _sniff_startup(text: str, ctx: Context) -> None:
    if "engine_version" not in ctx.meta:
        v = _VERSION_RE.search(text)
        if v:
            ctx.meta["engine_version"] = v.group(1).rstrip(".,)")
    if "model" not in ctx.meta and ("Initializing" in text or "Namespace(" in text or "args" in text):
        mm = _MODEL_RE.search(text)
        if mm:
            ctx.meta["model"] = mm.group(1)


class _Joiner:
    """Joins the lines of one request id: the input side and the output side."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, dict[str, Any]]] = []
        self.open: dict[str, dict[str, Any]] = {}

    def add_input(self, n: int, f: dict[str, Any]) -> None:
        cur = self.open.get(f["request_id"])
        if cur is not None and not cur.get("_has_in"):
            for k, v in f.items():
                if v is not None and (k not in ("prompt_ids", "prompt_text") or not cur.get(k)):
                    cur[k] = v
            cur["_has_in"] = True
            return
        f["_has_in"] = True
        self._new(n, f)

    def add_output(self, n: int, f: dict[str, Any]) -> None:
        cur = self.open.get(f["request_id"])
        if cur is None or cur.get("_finished"):
            self._new(n, f)
            return
        delta = f.pop("_delta", False)
        for k, v in f.items():
            if v is None:
                continue
            if delta and k == "output_text":
                cur[k] = (cur.get(k) or "") + v
            elif delta and k == "output_ids":
                cur[k] = (cur.get(k) or []) + v
            elif k == "prompt_ids" and len(v) < len(cur.get(k) or []):
                continue  # keep the longer: the request logger may have cut it at max_log_len
            else:
                cur[k] = v

    def _new(self, n: int, f: dict[str, Any]) -> None:
        f.pop("_delta", None)
        self.entries.append((n, f))
        self.open[f["request_id"]] = f


def read_vllm(lines: Iterable[tuple[int, str]], ctx: Context) -> Iterator[tuple[int, Request | LineError]]:
    joiner = _Joiner()
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
            errors.append((n, LineError("a 'Received request' line without 'ID: prompt:'")))
            continue
        _sniff_startup(text, ctx)
        ctx.stats.ignored += 1
    out: list[tuple[int, Request | LineError]] = list(errors)
    for n, f in joiner.entries:
        if f.get("t_arrival") is None:
            f["t_arrival"] = f.get("_t_line")
        out.append((n, build_request(ctx, n, {k: v for k, v in f.items() if not k.startswith("_")})))
    out.sort(key=lambda x: x[0])
    yield from out
