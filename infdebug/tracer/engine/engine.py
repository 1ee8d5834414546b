"""The engine loop: continuous batching over a slot KV cache, with prefix caching.

One background thread runs steps. A step admits waiting requests into free slots (prefill
of whatever the prefix cache does not already hold, then the first token), then decodes
one token for every running request in a single batched forward pass. New requests join
the running batch at the next step; a finished request's slot is refilled by moving the
last running sequence into it, so slots ``0..B-1`` always hold the batch.

Events (tokens, finish) are delivered to each request's callback on the engine thread;
callbacks must be quick and must not raise (the server hands them to its event loop).
The engine calls its hooks (``infdebug.tracer.hooks``) with each ``Sequence``, which
implements the hooks' ``TracedRequest`` view; it never imports the tracer.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from infdebug.tracer.engine.model import KVCache, LlamaForCausalLM
from infdebug.tracer.hooks import EngineHooks, NoHooks


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()  # stop strings
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; n: the chosen token's logprob and the top n

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop),
            "ignore_eos": self.ignore_eos,
        }


@dataclass
class TokenEvent:
    request_id: str
    token_id: int
    text: str  # detokenized text this token completes (may be "")
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None = None  # set on the last event of a request
    timing: dict[str, Any] | None = None  # on the last event: the request's timings


@dataclass
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[TokenEvent], None]
    stop_ids: frozenset[int]
    t_arrival: float = field(default_factory=time.time)  # wall clock
    t0: float = field(default_factory=time.perf_counter)  # monotonic at arrival
    t_scheduled: float | None = None
    t_prefill_done: float | None = None
    token_times: list[float] = field(default_factory=list)  # monotonic, one per output token
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    slot: int = -1
    pos: int = 0  # tokens in the KV cache
    cached_tokens: int = 0
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    _prefix_offset: int = 0
    _read_offset: int = 0
    aborted: bool = False
    prompt_text: str | None = None  # what the server rendered, for the trace
    messages: list[dict[str, Any]] | None = None

    @property
    def output_text(self) -> str:
        return self.text

    def sampling(self) -> dict[str, Any]:
        """The sampling parameters and the stop IDs in force (``TracedRequest.sampling``)."""
        out = self.params.to_json()
        out["stop_ids"] = sorted(self.stop_ids)
        return out

    def timing(self) -> dict[str, Any]:
        def off(t: float | None) -> float | None:
            return None if t is None else t - self.t0

        return {
            "t_arrival": self.t_arrival,
            "queue_s": off(self.t_scheduled),
            "prefill_s": None
            if self.t_prefill_done is None or self.t_scheduled is None
            else self.t_prefill_done - self.t_scheduled,
            "ttft_s": off(self.token_times[0]) if self.token_times else None,
            "e2e_s": off(self.token_times[-1]) if self.token_times else None,
            "token_times_s": [t - self.t0 for t in self.token_times],
            "cached_prompt_tokens": self.cached_tokens,
        }


@dataclass
class EngineConfig:
    max_batch: int = 32
    max_model_len: int = 2048
    block_size: int = 16
    prefix_cache_blocks: int = 2048
    max_prefill_tokens: int = 4096  # per step, so decode is not starved by a burst of arrivals
    slow_factor: float = 1.0  # --inject slow=F: each step takes F times as long


class PrefixCache:
    """KV blocks keyed by a hash chain over prompt token IDs (block i's key covers blocks
    0..i), least recently used evicted first."""

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size, self.capacity = block_size, capacity
        self.blocks: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.hits = self.queries = 0

    def keys(self, ids: list[int], n_blocks: int) -> list[int]:
        out, h = [], 0
        bs = self.block_size
        for i in range(n_blocks):
            h = hash((h, tuple(ids[i * bs : (i + 1) * bs])))
            out.append(h)
        return out

    def lookup(self, keys: list[int]) -> list[torch.Tensor]:
        found = []
        for k in keys:
            b = self.blocks.get(k)
            if b is None:
                break
            self.blocks.move_to_end(k)
            found.append(b)
        return found

    def insert(self, key: int, block: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self.blocks[key] = block
        self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


class Engine:
    def __init__(
        self,
        model: LlamaForCausalLM,
        *,
        eos_ids: list[int],
        decode_text: Callable[[list[int]], str],
        config: EngineConfig | None = None,
        hooks: EngineHooks | None = None,
    ) -> None:
        self.model = model
        self.cfg = config or EngineConfig()
        self.eos_ids = frozenset(eos_ids)
        self.decode_text = decode_text
        self.hooks: EngineHooks = hooks or NoHooks()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        max_len = min(self.cfg.max_model_len, model.cfg.max_position_embeddings)
        self.cfg.max_model_len = max_len
        if model.rope_len < max_len:
            model.setup_rope(max_len)
        self.cache = KVCache(model.cfg, self.cfg.max_batch, max_len, self.device, self.dtype)
        self.prefix = PrefixCache(self.cfg.block_size, self.cfg.prefix_cache_blocks)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._ids = itertools.count()
        self.steps = 0
        self.tokens_out = 0
        self.step_sleeps: deque[float] = deque(
            maxlen=4096
        )  # --inject slow: seconds slept after each step

    # -- API -----------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[TokenEvent], None],
        request_id: str | None = None,
        *,
        prompt_text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> Sequence:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_tokens > self.cfg.max_model_len:
            raise ValueError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) "
                "exceeds "
                f"the context of {self.cfg.max_model_len} tokens"
            )
        stop = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_ids))
        seq = Sequence(
            request_id or f"req-{uuid.uuid4().hex[:16]}",
            list(prompt_ids),
            params,
            on_event,
            frozenset(stop),
            prompt_text=prompt_text,
            messages=messages,
        )
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.hooks.admitted(seq)
        with self._cv:
            self.waiting.append(seq)
            self._cv.notify()
        return seq

    def abort(self, seq: Sequence) -> None:
        seq.aborted = True

    def start(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="infdebug-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting)"""
        return len(self.running), len(self.waiting)

    # -- loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.running:
                    self._cv.wait(timeout=0.5)
                if self._stop:
                    return
            t = time.perf_counter()
            try:
                self.step()
            except Exception as e:  # never let one bad step kill the replica
                self._fail_all(e)
            if self.cfg.slow_factor > 1.0:
                pause = (time.perf_counter() - t) * (self.cfg.slow_factor - 1.0)
                time.sleep(pause)
                self.step_sleeps.append(pause)

    def _fail_all(self, err: Exception) -> None:
        for seq in list(self.running):
            self._finish(seq, "error")
        self.running.clear()
        import logging

        logging.getLogger(__name__).exception("engine step failed: %s", err)

    def step(self) -> None:
        """One engine iteration: admit and prefill, then decode the running batch."""
        self.steps += 1
        budget = self.cfg.max_prefill_tokens
        while self.waiting and len(self.running) < self.cfg.max_batch and budget > 0:
            with self._cv:
                seq = self.waiting.popleft()
            if seq.aborted:
                self._finish(seq, "abort", emit=False)
                continue
            budget -= self._admit(seq)
        for seq in [s for s in self.running if s.aborted]:
            self._finish(seq, "abort")
        if self.running:
            self._decode()

    def _admit(self, seq: Sequence) -> int:
        seq.slot = len(self.running)
        seq.t_scheduled = time.perf_counter()
        self.running.append(seq)
        self.hooks.scheduled(seq)
        ids = seq.prompt_ids
        bs = self.cfg.block_size
        n_full = (len(ids) - 1) // bs  # keep at least one token to prefill
        keys = self.prefix.keys(ids, n_full)
        hit = self.prefix.lookup(keys)
        self.prefix.queries += len(ids)
        for i, block in enumerate(hit):
            self.cache.write_block(seq.slot, i * bs, block)
        start = len(hit) * bs
        seq.cached_tokens = start
        self.prefix.hits += start
        tokens = torch.tensor(ids[start:], dtype=torch.long, device=self.device)
        logits = self.model.prefill(tokens, seq.slot, start, self.cache)
        seq.pos = len(ids)
        for i in range(len(hit), len(keys)):
            self.prefix.insert(keys[i], self.cache.read_block(seq.slot, i * bs, bs))
        seq.t_prefill_done = time.perf_counter()
        self.hooks.prefill_done(seq)
        self._emit([seq], logits)
        return len(ids) - start

    def _decode(self) -> None:
        seqs = self.running
        tokens = torch.tensor(
            [s.output_ids[-1] for s in seqs], dtype=torch.long, device=self.device
        )
        positions = torch.tensor([s.pos for s in seqs], dtype=torch.long, device=self.device)
        logits = self.model.decode(tokens, positions, self.cache)
        for s in seqs:
            s.pos += 1
        self._emit(list(seqs), logits)

    def _emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        chosen = self._sample(seqs, logits)
        want_lp = any(s.params.logprobs is not None for s in seqs)
        logp = torch.log_softmax(logits, dim=-1) if want_lp else None
        now = time.perf_counter()
        done = []
        for i, (seq, tok) in enumerate(zip(seqs, chosen, strict=True)):
            seq.output_ids.append(tok)
            seq.token_times.append(now)
            lp: float | None = None
            top: list[tuple[int, float]] | None = None
            if logp is not None and seq.params.logprobs is not None:
                lp = float(logp[i, tok])
                if seq.params.logprobs > 0:
                    v, ix = torch.topk(logp[i], seq.params.logprobs)
                    top = list(zip(ix.tolist(), v.tolist(), strict=True))
            text = self._detok(seq)
            reason = None
            if tok in seq.stop_ids:
                reason = "stop"
            elif seq.params.stop and any(st in seq.text for st in seq.params.stop):
                cut = min(seq.text.find(st) for st in seq.params.stop if st in seq.text)
                emitted = len(seq.text) - len(text)
                text = text[: max(0, cut - emitted)]
                seq.text = seq.text[:cut]
                reason = "stop"
            elif len(seq.output_ids) >= seq.params.max_tokens:
                reason = "length"
            ev = TokenEvent(seq.request_id, tok, text, lp, top)
            if reason is not None:
                seq.finish_reason = reason
                ev.finish_reason = reason
                ev.timing = seq.timing()
                done.append(seq)
            self._deliver(seq, ev)
        self.tokens_out += len(seqs)
        self.hooks.step_tokens(seqs, now)
        for seq in done:
            self._release(seq)
            self.hooks.finished(seq)

    def _deliver(self, seq: Sequence, ev: TokenEvent) -> None:
        try:
            seq.on_event(ev)
        except Exception:  # a client's callback must not stop the engine
            seq.aborted = True

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        greedy = [s.params.temperature <= 0 for s in seqs]
        if all(greedy):
            return logits.argmax(dim=-1).tolist()
        out = []
        for i, s in enumerate(seqs):
            row = logits[i]
            if greedy[i]:
                out.append(int(row.argmax()))
                continue
            row = row / s.params.temperature
            if s.params.top_k > 0:
                k = min(s.params.top_k, row.shape[-1])
                kth = torch.topk(row, k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = torch.softmax(row, dim=-1)
            if s.params.top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                keep = (sp.cumsum(-1) - sp) < s.params.top_p
                keep[0] = True
                probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
            out.append(int(torch.multinomial(probs, 1, generator=s.generator)))
        return out

    def _detok(self, seq: Sequence) -> str:
        """Incremental detokenization: text is emitted only once it is complete UTF-8."""
        ids = seq.output_ids
        prefix = self.decode_text(ids[seq._prefix_offset : seq._read_offset])
        new = self.decode_text(ids[seq._prefix_offset :])
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            delta = new[len(prefix) :]
            seq._prefix_offset, seq._read_offset = seq._read_offset, len(ids)
            seq.text += delta
            return delta
        return ""

    def _release(self, seq: Sequence) -> None:
        """Free a finished sequence's slot; the last running sequence moves into it."""
        i = self.running.index(seq)
        last = self.running[-1]
        if last is not seq:
            self.cache.move(last.slot, seq.slot, last.pos)
            last.slot = seq.slot
            self.running[i] = last
        self.running.pop()
        seq.slot = -1

    def _finish(self, seq: Sequence, reason: str, emit: bool = True) -> None:
        seq.finish_reason = reason
        if seq in self.running:
            self._release(seq)
        if emit:
            ev = TokenEvent(
                seq.request_id, -1, "", None, None, finish_reason=reason, timing=seq.timing()
            )
            self._deliver(seq, ev)
        self.hooks.finished(seq)
