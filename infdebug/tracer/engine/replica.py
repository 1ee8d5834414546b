"""One serving replica: a checkpoint, its tokenizer and chat template, the engine, and the
faults injected into that serving path.

Fault injection (``--inject``), each a real change to how requests are served:

- ``double-bos``: encode the rendered chat prompt with special tokens added, so a template
  that already writes BOS gets a second one.
- ``template=FILE``: serve with another chat template.
- ``tokenizer=DIR``: serve with another tokenizer (the model is unchanged).
- ``ignore-eos=ID``: drop an end-of-turn / EOS ID from the stop set.
- ``slow=FACTOR``: sleep so that every engine step takes FACTOR times as long.
- ``dtype=float16`` (or bfloat16, float32): run the model in another dtype (numerics skew).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from infdebug import __version__
from infdebug.text.template import load_template, render_chat, template_fingerprint
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt, load_tokenizer
from infdebug.tracer.engine.checkpoint import load_checkpoint
from infdebug.tracer.engine.engine import (
    Engine,
    EngineConfig,
    EngineHooks,
    SamplingParams,
    Sequence,
    TokenEvent,
)
from infdebug.tracer.gpu import GpuSampler, make_probe
from infdebug.tracer.jsonl import JsonlExporter
from infdebug.tracer.lifecycle import Lifecycle
from infdebug.tracer.prom import PromExporter, ReplicaMetrics
from infdebug.tracer.tracer import Exporter, Redact, ReplicaInfo, Tracer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class InjectionError(ValueError):
    pass


@dataclass
class Injections:
    double_bos: bool = False
    template: str | None = None
    tokenizer: str | None = None
    ignore_eos: list[int] = field(default_factory=list)
    slow: float = 1.0
    dtype: str | None = None
    throttle: bool = False  # for the simulated GPU (tracer issue); no effect on serving here
    raw: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Injections:
        inj = cls()
        for spec in specs:
            key, _, val = spec.partition("=")
            key = key.strip()
            if key == "double-bos" and not val:
                inj.double_bos = True
            elif key == "template" and val:
                if not os.path.exists(val):
                    raise InjectionError(f"--inject template={val}: no such file")
                inj.template = val
            elif key == "tokenizer" and val:
                if not os.path.exists(val):
                    raise InjectionError(f"--inject tokenizer={val}: no such file or directory")
                inj.tokenizer = val
            elif key == "ignore-eos" and val:
                try:
                    inj.ignore_eos.append(int(val))
                except ValueError:
                    raise InjectionError(f"--inject ignore-eos=ID expects a token ID, got {val!r}") from None
            elif key == "slow" and val:
                try:
                    inj.slow = float(val)
                except ValueError:
                    raise InjectionError(f"--inject slow=FACTOR expects a number, got {val!r}") from None
                if inj.slow < 1.0:
                    raise InjectionError(f"--inject slow=FACTOR must be >= 1, got {val}")
            elif key == "dtype" and val:
                if val not in DTYPES:
                    raise InjectionError(f"--inject dtype= expects one of {', '.join(DTYPES)}, got {val!r}")
                inj.dtype = val
            elif key == "throttle" and not val:
                inj.throttle = True
            else:
                raise InjectionError(
                    f"unknown injection {spec!r}; known: double-bos, template=FILE, tokenizer=DIR, "
                    "ignore-eos=ID, slow=FACTOR, dtype=float16|bfloat16|float32, throttle"
                )
            inj.raw.append(spec)
        return inj


class Replica:
    def __init__(
        self,
        model_dir: str,
        *,
        name: str = "replica-0",
        deployment: str | None = None,
        served_model_name: str | None = None,
        injections: Injections | None = None,
        device: str | None = None,
        max_batch: int = 32,
        max_model_len: int = 2048,
        trace_dir: str | None = None,
        otlp_endpoint: str | None = None,
        redact: Redact = "none",
        trace_max_bytes: int | None = 256 * 1024 * 1024,
        trace_max_age_s: float | None = None,
        simulate_gpu: bool = False,
        gpu_hz: float = 4.0,
        hooks: EngineHooks | None = None,
    ) -> None:
        self.lifecycle = Lifecycle(name, deployment=deployment, trace_dir=trace_dir)
        self.model_dir = model_dir
        self.name = name
        self.deployment = deployment
        self.inj = injections or Injections()
        self.model_name = served_model_name or os.path.basename(os.path.normpath(model_dir))
        self.started = time.time()
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer: TokenizerBundle = load_tokenizer(self.inj.tokenizer or model_dir)
        self.template = self._load_template()
        dtype = DTYPES[self.inj.dtype] if self.inj.dtype else None
        self.model, self.model_cfg = load_checkpoint(model_dir, device=dev, dtype=dtype, max_len=max_model_len)
        self.lifecycle.mark("weights_loaded", device=dev, dtype=str(next(self.model.parameters()).dtype),
                            params=sum(p.numel() for p in self.model.parameters()))
        eos = set(self.tokenizer.eos_ids) | set(_config_eos(model_dir))
        eos -= set(self.inj.ignore_eos)
        self.eos_ids = sorted(eos)
        self.extra_stop_ids: tuple[int, ...] = ()
        self.vocab_size = self.model_cfg.vocab_size
        self.tokenizer_fp = self.tokenizer.fingerprint
        self.template_fp = template_fingerprint(self.template) if self.template else None
        # The tracer: metrics always (served at /metrics), JSONL with --trace-dir, OTLP spans
        # with --otlp-endpoint (or OTEL_EXPORTER_OTLP_*ENDPOINT in the environment).
        self.metrics = ReplicaMetrics(name, self.model_name)
        exporters: list[Exporter] = [PromExporter(self.metrics)]
        self.trace: JsonlExporter | None = None
        if trace_dir:
            self.trace = JsonlExporter(trace_dir, replica=name, max_bytes=trace_max_bytes, max_age_s=trace_max_age_s,
                                       on_drop=self.metrics.dropped("jsonl"))
            exporters.append(self.trace)
        self.otlp_endpoint = (otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                              or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        if self.otlp_endpoint:
            from infdebug.tracer.otel import OtelExporter

            exporters.append(OtelExporter(replica=name, model=self.model_name, deployment=deployment,
                                          endpoint=otlp_endpoint, token_ids=redact != "all"))
        self.tracer = Tracer(
            ReplicaInfo(replica=name, model=self.model_name, deployment=deployment, engine_version=__version__,
                        tokenizer_fp=self.tokenizer_fp, template_fp=self.template_fp),
            exporters, redact=redact, on_drop=self.metrics.dropped("tracer"), on_error=self.metrics.tracer_errors.inc,
        )
        hooks = hooks or self.tracer
        self.engine = Engine(
            self.model,
            eos_ids=self.eos_ids,
            decode_text=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            config=EngineConfig(max_batch=max_batch, max_model_len=max_model_len, slow_factor=self.inj.slow),
            hooks=hooks,
        )
        self.metrics.watch_load(lambda: self.engine.load)
        # GPU telemetry: NVML when there is a GPU; with simulate_gpu a labelled synthetic signal
        # that follows this engine's load (and --inject throttle).
        self.gpu_trace: JsonlExporter | None = None
        self.gpu_sampler: GpuSampler | None = None
        probe = make_probe(simulate_gpu, load_fn=lambda: self.engine.load[0] / max(1, self.engine.cfg.max_batch),
                           throttle=self.inj.throttle)
        if probe is not None:
            if trace_dir:
                self.gpu_trace = JsonlExporter(trace_dir, replica=name, suffix="gpu", max_bytes=trace_max_bytes,
                                               max_age_s=trace_max_age_s, on_drop=self.metrics.dropped("gpu"))
            emit = self.gpu_trace.put if self.gpu_trace is not None else (lambda rec: None)
            self.gpu_sampler = GpuSampler(probe, name, emit=emit, hz=gpu_hz, gauges=self.metrics.registry)

    def _load_template(self) -> str | None:
        if self.inj.template:
            return load_template(self.inj.template)
        if self.tokenizer.chat_template:
            return self.tokenizer.chat_template
        p = os.path.join(self.model_dir, "chat_template.jinja")
        return load_template(p) if os.path.exists(p) else None

    @property
    def injections(self) -> list[str]:
        return list(self.inj.raw)

    # -- text ----------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]], *, tools: Any = None, add_generation_prompt: bool = True) -> str:
        if not self.template:
            raise ValueError(f"the model at {self.model_dir} has no chat template")
        # As transformers: special tokens the config names, and nothing for those it lacks
        # (a template may test `bos_token is defined`).
        special = dict(self.tokenizer.special_tokens)
        if self.tokenizer.bos_token is not None:
            special.setdefault("bos_token", self.tokenizer.bos_token)
        if self.tokenizer.eos_token is not None:
            special.setdefault("eos_token", self.tokenizer.eos_token)
        try:
            return render_chat(self.template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                               **special)
        except Exception as e:  # template errors are the client's (bad messages) or the template's
            raise ValueError(str(e)) from None

    def encode_chat(self, text: str) -> list[int]:
        if self.inj.double_bos:
            return self.tokenizer.encode(text, add_special_tokens=True)  # the classic bug, on purpose
        return encode_prompt(self.tokenizer, text)

    def encode_completion(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # -- serving -------------------------------------------------------------------------
    def submit(
        self,
        ids: list[int],
        params: SamplingParams,
        on_event: Callable[[TokenEvent], None],
        *,
        prompt_text: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
    ) -> Sequence:
        return self.engine.submit(ids, params, on_event, request_id, prompt_text=prompt_text, messages=messages)

    def warm_up(self) -> None:
        """One prefill and one decode step outside the engine loop (no trace record), so the
        first request does not pay for lazy initialisation."""
        ids = torch.tensor(self.tokenizer.encode("warm up", add_special_tokens=True) or [0],
                           device=self.engine.device)
        with torch.inference_mode():
            logits = self.model.prefill(ids, 0, 0, self.engine.cache)
            self.model.decode(logits.argmax(-1)[:1], torch.tensor([len(ids)], device=self.engine.device),
                              self.engine.cache)
        self.lifecycle.mark("warmup_done")

    def start(self) -> None:
        self.warm_up()
        self.engine.start()
        if self.gpu_sampler is not None:
            self.gpu_sampler.start()

    def stop(self) -> None:
        self.engine.stop()
        if self.gpu_sampler is not None:
            self.gpu_sampler.stop()
        self.tracer.close()  # exports what is queued; JSONL flushed + fsynced, spans flushed
        if self.gpu_trace is not None:
            self.gpu_trace.close()
        self.lifecycle.mark("shutdown")


def _config_eos(model_dir: str) -> list[int]:
    out: list[int] = []
    for name in ("generation_config.json", "config.json"):
        p = os.path.join(model_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                v = json.load(f).get("eos_token_id")
            if isinstance(v, int):
                out.append(v)
            elif isinstance(v, list):
                out.extend(int(x) for x in v)
    return out
