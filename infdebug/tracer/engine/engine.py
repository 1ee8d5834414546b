"""The engine loop: continuous batching over a slot KV cache, with prefix caching.

One background thread runs steps. A step admits waiting requests into free slots (prefill
of whatever the prefix cache does not already hold, then the first token), then decodes
one token for every running request in a single batched forward pass. New requests join
the running batch at the next step; a finished request's slot is refilled by moving the
last running sequence into it, so slots ``0..B-1`` always hold the batch.

Events (tokens, finish) are delivered to each request's callback on the engine thread;
callbacks must be quick and must not raise (the server hands them to its event loop).

One request cannot hurt another: whatever fails while admitting, prefilling, sampling,
detokenizing or stopping one sequence finishes that sequence with ``finish_reason="error"``
and the rest of the batch goes on. Only a failure of the batched forward pass itself (which
no one request owns) finishes the whole running batch with an error. Sampling
(``sampling.py``) is numerically safe for every temperature the server accepts: 0 is greedy,
and one in (0, 0.01) is raised to 0.01 as vLLM does (logits / 1e-300 give NaN probabilities).
Every request submitted is finished exactly once (``hooks.finished``), also at ``stop``, and
before its last event is delivered (a client that has its answer has its trace queued).

The engine calls its hooks (``infdebug.tracer.hooks``) with each ``Sequence``, which
implements the hooks' ``TracedRequest`` view; it never imports the tracer.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from infdebug.tracer.engine.model import KVCache, LlamaForCausalLM
from infdebug.tracer.engine.prefix_cache import PrefixCache
from infdebug.tracer.engine.sampling import SampleError, sample_row
from infdebug.tracer.hooks import EngineHooks, NoHooks

_log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """``--inject fail-request=TEXT``: the failure one sequence's step raises."""


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
    # the chosen tokens' logprobs, one per output token, when computed for this request
    logprobs: list[float] = field(default_factory=list)
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
    done: bool = False  # finished: its last event delivered and hooks.finished called

    @property
    def output_logprobs(self) -> list[float] | None:
        """``TracedRequest.output_logprobs``: complete, or None."""
        return self.logprobs if len(self.logprobs) == len(self.output_ids) else None

    @property
    def output_text(self) -> str:
        return self.text

    def extra(self) -> dict[str, Any]:
        """``TracedRequest.extra``: nothing beyond the engine's own view."""
        return {}

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
    fail_request: str | None = None  # --inject fail-request=TEXT (see faults.py)
    redact_logs: bool = False  # log a failed request's error type and stack, not its message
    trace_logprobs: bool = False  # --trace-logprobs: every request's chosen-token logprobs


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
        """Stop the loop; requests still waiting or running finish as aborted (each gets its
        last event and its one ``finished`` hook)."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                return  # a step is stuck: leave its sequences to it
        with self._cv:
            left = list(self.waiting) + list(self.running)
            self.waiting.clear()
        for seq in left:
            self._finish(seq, "abort")

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
            except Exception as e:  # the batched forward pass failed: no one request owns it
                self._fail_all(e)
            if self.cfg.slow_factor > 1.0:
                pause = (time.perf_counter() - t) * (self.cfg.slow_factor - 1.0)
                time.sleep(pause)
                self.step_sleeps.append(pause)

    def _fail_all(self, err: Exception) -> None:
        self._log_failure(err, "engine step failed (the running batch is finished)")
        for seq in list(self.running):
            self._finish(seq, "error")
        self.running.clear()

    def _log_failure(self, err: BaseException, what: str) -> None:
        if self.cfg.redact_logs:  # an exception's message may quote the request's text
            stack = "".join(traceback.format_tb(err.__traceback__))
            _log.error("%s: %s\n%s", what, type(err).__name__, stack)
        else:
            _log.error("%s: %s: %s", what, type(err).__name__, err, exc_info=err)

    def _fail(self, seq: Sequence, err: BaseException, stage: str) -> None:
        """Finish one sequence with an error; the others are untouched."""
        self._log_failure(err, f"request {seq.request_id} failed while {stage}")
        self._finish(seq, "error")

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
            try:
                budget -= self._admit(seq)
            except Exception as e:
                budget -= len(seq.prompt_ids)
                self._fail(seq, e, "prefilling")
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
        want_lp = self.cfg.trace_logprobs or any(s.params.logprobs is not None for s in seqs)
        logp = torch.log_softmax(logits, dim=-1) if want_lp else None
        now = time.perf_counter()
        done: list[tuple[Sequence, TokenEvent]] = []
        failed: list[tuple[Sequence, BaseException]] = []
        stepped: list[Sequence] = []
        for i, (seq, tok) in enumerate(zip(seqs, chosen, strict=True)):
            if isinstance(tok, BaseException):
                failed.append((seq, tok))
                continue
            try:
                ev = self._advance(seq, tok, None if logp is None else logp[i], now)
            except Exception as e:  # this sequence's own failure: it alone ends
                failed.append((seq, e))
                continue
            stepped.append(seq)
            if ev.finish_reason is not None:
                done.append((seq, ev))
            else:
                self._deliver(seq, ev)
        self.tokens_out += len(stepped)
        self.hooks.step_tokens(stepped, now)
        for seq, ev in done:  # traced before its client hears the end
            self._complete(seq)
            self._deliver(seq, ev)
        for seq, err in failed:
            stage = "sampling" if isinstance(err, SampleError) else "taking its next token"
            self._fail(seq, err, stage)

    def _advance(
        self, seq: Sequence, tok: int, logp: torch.Tensor | None, now: float
    ) -> TokenEvent:
        """Append one sampled token to a sequence: logprobs, text, stop; its event."""
        marker, prompt = self.cfg.fail_request, seq.prompt_text or ""
        if marker and seq.output_ids and marker in prompt:
            at = prompt.index(marker)  # quoted, as real errors quote their input (--redact)
            raise InjectedFault(
                f"--inject fail-request: failed at the second token of {prompt[at : at + 60]!r}"
            )
        seq.output_ids.append(tok)
        seq.token_times.append(now)
        lp: float | None = None
        top: list[tuple[int, float]] | None = None
        if logp is not None and (seq.params.logprobs is not None or self.cfg.trace_logprobs):
            seq.logprobs.append(float(logp[tok]))
        if logp is not None and seq.params.logprobs is not None:
            lp = seq.logprobs[-1]
            if seq.params.logprobs > 0:
                v, ix = torch.topk(logp, min(seq.params.logprobs, logp.shape[-1]))
                top = list(zip(ix.tolist(), v.tolist(), strict=True))
        text = self._detok(seq)
        reason = None
        if tok in seq.stop_ids:
            reason = "stop"
        elif seq.params.stop and text and (cut := self._stop_at(seq, len(text))) is not None:
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
        return ev

    @staticmethod
    def _stop_at(seq: Sequence, n_new: int) -> int | None:
        """Where the first stop string starts, looking only where one could have completed
        with the ``n_new`` characters just added (earlier text was checked before)."""
        longest = max(len(st) for st in seq.params.stop)
        start = max(0, len(seq.text) - n_new - longest + 1)
        window = seq.text[start:]
        hits = [i for st in seq.params.stop if (i := window.find(st)) >= 0]
        return start + min(hits) if hits else None

    def _deliver(self, seq: Sequence, ev: TokenEvent) -> None:
        try:
            seq.on_event(ev)
        except Exception:  # a client's callback must not stop the engine
            seq.aborted = True

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int | BaseException]:
        """One token per sequence, or the error sampling that sequence raised."""
        greedy = [s.params.temperature <= 0 for s in seqs]
        if all(greedy):
            return list(logits.argmax(dim=-1).tolist())
        out: list[int | BaseException] = []
        for i, s in enumerate(seqs):
            try:
                out.append(sample_row(logits[i], s.params, s.generator, greedy=greedy[i]))
            except Exception as e:
                err = SampleError(f"{type(e).__name__}: {e}")
                err.__traceback__ = e.__traceback__
                out.append(err)
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

    def _complete(self, seq: Sequence) -> None:
        """The one place a sequence ends: its slot freed, ``hooks.finished`` called once."""
        if seq.done:
            return
        seq.done = True
        if seq in self.running:
            self._release(seq)
        try:
            self.hooks.finished(seq)
        except Exception as e:  # hooks must not raise; if one does, the engine goes on
            self._log_failure(e, f"the finished hook failed on {seq.request_id}")

    def _finish(self, seq: Sequence, reason: str, emit: bool = True) -> None:
        if seq.done:
            return
        seq.finish_reason = reason
        if seq in self.running:
            self._release(seq)
        self._complete(seq)
        if emit:
            ev = TokenEvent(
                seq.request_id, -1, "", None, None, finish_reason=reason, timing=seq.timing()
            )
            self._deliver(seq, ev)
