"""Replay a planned workload against OpenAI-compatible replicas with streaming clients.

Open loop: each request is sent at its planned arrival time (bounded by a concurrency cap),
as a streaming chat completion with ``ignore_eos`` and ``max_tokens`` so its output is as long
as the trace says. Client-side times are measured per request: time to first token (from
sending to the first content chunk), inter-token gaps, end-to-end; prefix cache reuse from
``usage.prompt_tokens_details.cached_tokens`` where the server reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx

from infdebug.errors import OperationError
from infdebug.fleet.prompts import chat_messages
from infdebug.fleet.traces import PlannedRequest

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
POLICIES = ("round-robin", "least-loaded")


class LoadError(OperationError):
    pass


def check_urls(urls: list[str], allow_remote: bool = False) -> list[str]:
    """Base URLs without a trailing slash or /v1; only loopback hosts unless allowed."""
    out = []
    for u in urls:
        p = urlparse(u)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise LoadError(f"--url {u}: expected http://HOST:PORT, found no scheme or host")
        if not allow_remote and p.hostname not in LOCAL_HOSTS:
            raise LoadError(
                f"--url {u}: {p.hostname} is not this machine; load goes to 127.0.0.1/localhost "
                "unless --allow-remote is given"
            )
        base = u.rstrip("/")
        base = base[:-3] if base.endswith("/v1") else base
        out.append(base)
    if not out:
        raise LoadError("expected at least one --url")
    return out


@dataclass
class Target:
    url: str
    name: str  # the replica name from /health, else the URL
    model: str
    max_model_len: int | None
    inflight: int = 0
    polled_load: int = 0


@dataclass
class RequestResult:
    index: int
    replica: str
    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    target_prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int | None = None
    late_s: float = (
        0.0  # how long after its planned arrival it was sent (concurrency cap, slow client)
    )
    sent_s: float | None = None  # when it was sent, seconds after the run started


async def describe_target(client: httpx.AsyncClient, url: str) -> Target:
    try:
        models = (await client.get(f"{url}/v1/models", timeout=10)).raise_for_status().json()
        health: dict[str, Any] = {}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = (await client.get(f"{url}/health", timeout=10)).json()
    except (httpx.HTTPError, ValueError) as e:
        raise LoadError(
            f"{url}: expected an OpenAI-compatible server (GET /v1/models), found: {e}"
        ) from None
    data = models.get("data") or [{}]
    m = data[0]
    name = str(health.get("replica") or urlparse(url).netloc)
    mml = m.get("max_model_len")
    return Target(url, name, str(m.get("id", "")), int(mml) if isinstance(mml, int) else None)


class Router:
    """round-robin, or least-loaded: fewest requests in flight from this client or, if more,
    running + waiting as the replica's /health last said."""

    def __init__(self, targets: list[Target], policy: str) -> None:
        if policy not in POLICIES:
            raise LoadError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
        self.targets, self.policy = targets, policy
        self._rr = itertools.count()

    def pick(self) -> Target:
        start = next(self._rr)
        n = len(self.targets)
        if self.policy == "round-robin":
            return self.targets[start % n]
        order = [self.targets[(start + k) % n] for k in range(n)]
        return min(order, key=lambda t: max(t.inflight, t.polled_load))

    async def poll(self, client: httpx.AsyncClient, every_s: float = 0.2) -> None:
        while True:
            for t in self.targets:
                try:
                    h = (await client.get(f"{t.url}/health", timeout=2)).json()
                    t.polled_load = int(h.get("running", 0)) + int(h.get("waiting", 0))
                except (httpx.HTTPError, ValueError, TypeError):
                    pass
            await asyncio.sleep(every_s)


async def send_one(
    client: httpx.AsyncClient, target: Target, req: PlannedRequest, seed: int, timeout_s: float
) -> RequestResult:
    body = {
        "model": target.model or None,
        "messages": chat_messages(req, seed),
        "max_tokens": req.output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    res = RequestResult(req.index, target.name, ok=False, target_prompt_tokens=req.prompt_tokens)
    t0 = time.perf_counter()
    last: float | None = None
    n_chunks = 0
    usage: dict[str, Any] | None = None
    finish: str | None = None
    try:
        async with client.stream(
            "POST", f"{target.url}/v1/chat/completions", json=body, timeout=timeout_s
        ) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode("utf-8", "replace")[:300]
                res.error = f"HTTP {r.status_code}: {text}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for ch in chunk.get("choices") or []:
                    content = (ch.get("delta") or {}).get("content") or ch.get("text")
                    finish = ch.get("finish_reason") or finish
                    if content or ch.get("token_ids"):
                        now = time.perf_counter()
                        if last is None:
                            res.ttft_s = now - t0
                        else:
                            res.itl_s.append(now - last)
                        last = now
                        n_chunks += 1
    except (httpx.HTTPError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.e2e_s = time.perf_counter() - t0
    if usage:
        res.prompt_tokens = usage.get("prompt_tokens")
        res.output_tokens = int(usage.get("completion_tokens", n_chunks))
        details = usage.get("prompt_tokens_details") or {}
        if isinstance(details.get("cached_tokens"), int):
            res.cached_tokens = details["cached_tokens"]
    else:
        res.output_tokens = n_chunks
    if finish is None:
        res.error = "the stream ended without a finish_reason"
        return res
    res.ok = True
    return res


@dataclass
class LoadRun:
    targets: list[Target]
    results: list[RequestResult]
    wall_s: float
    planned: int
    not_sent: int
    duration_s: float | None = None  # the run's nominal length (what --duration said), if known


async def run_load(
    urls: list[str],
    schedule: list[PlannedRequest] | Callable[[list[Target]], list[PlannedRequest]],
    *,
    policy: str = "round-robin",
    concurrency: int = 64,
    seed: int = 0,
    request_timeout_s: float = 120.0,
    drain_s: float = 30.0,
    on_done: Callable[[RequestResult], None] | None = None,
    duration_s: float | None = None,
) -> LoadRun:
    """Send the schedule; wait up to ``drain_s`` after the last arrival for requests in
    flight, then cancel what is left (reported as failed). ``schedule`` may be a function of
    the targets (to clamp lengths to their max_model_len). ``duration_s``, the run's nominal
    length, is what the summary's sent rate is measured over."""
    limits = httpx.Limits(
        max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8
    )
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        targets = [await describe_target(client, u) for u in urls]
        plan = schedule(targets) if callable(schedule) else schedule
        router = Router(targets, policy)
        poller = asyncio.create_task(router.poll(client)) if policy == "least-loaded" else None
        sem = asyncio.Semaphore(concurrency)
        results: list[RequestResult] = []

        async def one(req: PlannedRequest, start: float) -> None:
            async with sem:
                target = router.pick()
                target.inflight += 1
                sent = time.perf_counter() - start
                late = max(0.0, sent - req.at_s)
                try:
                    res = await send_one(client, target, req, seed, request_timeout_s)
                except asyncio.CancelledError:
                    res = RequestResult(
                        req.index,
                        target.name,
                        ok=False,
                        error="cancelled at the end of the run",
                        target_prompt_tokens=req.prompt_tokens,
                        late_s=late,
                        sent_s=sent,
                    )
                    results.append(res)
                    raise
                finally:
                    target.inflight -= 1
                res.late_s, res.sent_s = late, sent
                results.append(res)
                if on_done:
                    on_done(res)

        start = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for req in plan:
            delay = start + req.at_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(req, start)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=drain_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if poller:
            poller.cancel()
        wall = time.perf_counter() - start
    return LoadRun(
        targets,
        sorted(results, key=lambda r: r.index),
        wall,
        len(plan),
        len(plan) - len(tasks),
        duration_s,
    )


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def _group(results: list[RequestResult], wall_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [x for r in ok for x in r.itl_s]
    with_cache = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    prompt = sum(r.prompt_tokens or 0 for r in with_cache)
    out_tok = sum(r.output_tokens for r in ok)
    measured = [r for r in ok if r.prompt_tokens]
    return {
        "sent": len(results),
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "ttft_p50_s": _pct(ttft, 0.5),
        "ttft_p99_s": _pct(ttft, 0.99),
        "itl_p50_s": _pct(itl, 0.5),
        "itl_p99_s": _pct(itl, 0.99),
        "output_tokens": out_tok,
        "output_tokens_per_s": out_tok / wall_s if wall_s > 0 else None,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "prompt_tokens_per_target": (
            sum(r.prompt_tokens or 0 for r in measured)
            / max(1, sum(r.target_prompt_tokens for r in measured))
        )
        if measured
        else None,
        "cached_tokens": sum(r.cached_tokens or 0 for r in with_cache),
        "prefix_hit_rate": (sum(r.cached_tokens or 0 for r in with_cache) / prompt)
        if prompt
        else None,
    }


def sent_rate(run: LoadRun) -> float | None:
    """Requests/s actually sent over the run's nominal duration (None when it is unknown):
    what ``--rate`` asks for, measured at the client."""
    if not run.duration_s or run.duration_s <= 0:
        return None
    return sum(1 for r in run.results if r.sent_s is not None) / run.duration_s


def summarize(run: LoadRun) -> dict[str, Any]:
    """Per replica and in total: requests sent/ok/failed, TTFT and inter-token p50/p99,
    output tokens/s, prefix hit rate (cached / prompt tokens), and the first errors; the
    rate sent (requests/s over the nominal duration) and the largest send delay."""
    per = {
        t.name: _group([r for r in run.results if r.replica == t.name], run.wall_s)
        for t in run.targets
    }
    for t in run.targets:
        per[t.name]["url"] = t.url
    errors = [f"#{r.index} {r.replica}: {r.error}" for r in run.results if not r.ok][:10]
    return {
        "wall_s": run.wall_s,
        "planned": run.planned,
        "not_sent": run.not_sent,
        "sent_per_s": sent_rate(run),
        "max_late_s": max((r.late_s for r in run.results), default=None),
        "total": _group(run.results, run.wall_s),
        "replicas": per,
        "errors": errors,
    }
