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
- ``throttle``: with ``--simulate-gpu``, the simulated GPU overheats and throttles.
- ``fail-request=TEXT``: a request whose prompt holds TEXT raises in the engine's step at
  its second token (a per-request engine bug): it finishes with an error, the batch goes on.

Prompts are encoded through the tokenizer's ``encode_batch``, which releases the GIL, so a
large prompt tokenized off the event loop does not stall it (``encode`` holds the GIL).

The registry of these (what help texts and errors list) is ``faults.FAULTS``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from infdebug import __version__
from infdebug.text.model_text import ModelText
from infdebug.text.template import load_template, template_fingerprint
from infdebug.text.tokenizer import TokenizerBundle, encode_prompt, load_tokenizer
from infdebug.tracer.engine.checkpoint import load_checkpoint
from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams, Sequence, TokenEvent
from infdebug.tracer.engine.faults import FAULT_KEYS, fault_specs
from infdebug.tracer.hooks import EngineHooks
from infdebug.tracer.lifecycle import Lifecycle
from infdebug.tracer.tracer import Redact, ReplicaInfo
from infdebug.tracer.wiring import TracerConfig, make_tracer

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
    throttle: bool = (
        False  # for the simulated GPU (TracerConfig.throttle); no effect on serving here
    )
    fail_request: str | None = None
    raw: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...]) -> Injections:
        inj = cls()
        for spec in specs:
            key, _, val = spec.partition("=")
            key = key.strip()
            if key not in FAULT_KEYS:  # the registry decides what exists; the branches below, how
                raise InjectionError(f"unknown injection {spec!r}; known: {fault_specs()}")
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
                    raise InjectionError(
                        f"--inject ignore-eos=ID expects a token ID, got {val!r}"
                    ) from None
            elif key == "slow" and val:
                try:
                    inj.slow = float(val)
                except ValueError:
                    raise InjectionError(
                        f"--inject slow=FACTOR expects a number, got {val!r}"
                    ) from None
                if inj.slow < 1.0:
                    raise InjectionError(f"--inject slow=FACTOR must be >= 1, got {val}")
            elif key == "dtype" and val:
                if val not in DTYPES:
                    raise InjectionError(
                        f"--inject dtype= expects one of {', '.join(DTYPES)}, got {val!r}"
                    )
                inj.dtype = val
            elif key == "throttle" and not val:
                inj.throttle = True
            elif key == "fail-request" and val:
                inj.fail_request = val
            else:
                raise InjectionError(f"unknown injection {spec!r}; known: {fault_specs()}")
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
        trace_logprobs: bool = False,
    ) -> None:
        self.lifecycle = Lifecycle(name, deployment=deployment, trace_dir=trace_dir)
        self.model_dir = model_dir
        self.name = name
        self.deployment = deployment
        self.inj = injections or Injections()
        self.model_name = served_model_name or os.path.basename(os.path.normpath(model_dir))
        self.started = time.time()
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer: TokenizerBundle = _GilFreeTokenizer.of(
            load_tokenizer(self.inj.tokenizer or model_dir)
        )
        self.template = self._load_template()
        dtype = DTYPES[self.inj.dtype] if self.inj.dtype else None
        self.model, self.model_cfg = load_checkpoint(
            model_dir, device=dev, dtype=dtype, max_len=max_model_len
        )
        self.lifecycle.mark(
            "weights_loaded",
            device=dev,
            dtype=str(next(self.model.parameters()).dtype),
            params=sum(p.numel() for p in self.model.parameters()),
        )
        eos = set(self.tokenizer.eos_ids) | set(_config_eos(model_dir))
        eos -= set(self.inj.ignore_eos)
        self.eos_ids = sorted(eos)
        self.extra_stop_ids: tuple[int, ...] = ()
        self.vocab_size = self.model_cfg.vocab_size
        self.tokenizer_fp = self.tokenizer.fingerprint
        self.template_fp = template_fingerprint(self.template) if self.template else None
        # The tracer, its exporters, metrics and GPU sampler (see infdebug.tracer.wiring).
        self.telemetry = make_tracer(
            TracerConfig(
                trace_dir=trace_dir,
                otlp_endpoint=otlp_endpoint,
                redact=redact,
                trace_max_bytes=trace_max_bytes,
                trace_max_age_s=trace_max_age_s,
                simulate_gpu=simulate_gpu,
                gpu_hz=gpu_hz,
                throttle=self.inj.throttle,
            ),
            ReplicaInfo(
                replica=name,
                model=self.model_name,
                deployment=deployment,
                engine_version=__version__,
                tokenizer_fp=self.tokenizer_fp,
                template_fp=self.template_fp,
            ),
            load=lambda: self.engine.load,
            max_batch=max_batch,
        )
        self.metrics, self.tracer, self.trace = (
            self.telemetry.metrics,
            self.telemetry.tracer,
            self.telemetry.trace,
        )
        self.otlp_endpoint = self.telemetry.otlp_endpoint
        self.engine = Engine(
            self.model,
            eos_ids=self.eos_ids,
            decode_text=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            config=EngineConfig(
                max_batch=max_batch,
                max_model_len=max_model_len,
                slow_factor=self.inj.slow,
                fail_request=self.inj.fail_request,
                redact_logs=redact != "none",
                trace_logprobs=trace_logprobs,
            ),
            hooks=hooks or self.tracer,
        )

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
    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: Any = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """``messages`` rendered as transformers renders them (``ModelText.render``: the one
        rendering path, the sidecar's derivations included); ``kwargs`` are template
        variables (``chat_template_kwargs``)."""
        return ModelText(self.tokenizer, self.template, self.model_dir).render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **kwargs
        )

    def encode_chat(self, text: str) -> list[int]:
        if self.inj.double_bos:
            return self.tokenizer.encode(
                text, add_special_tokens=True
            )  # the classic bug, on purpose
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
        return self.engine.submit(
            ids, params, on_event, request_id, prompt_text=prompt_text, messages=messages
        )

    def warm_up(self) -> None:
        """One prefill and one decode step outside the engine loop (no trace record), so the
        first request does not pay for lazy initialisation."""
        ids = torch.tensor(
            self.tokenizer.encode("warm up", add_special_tokens=True) or [0],
            device=self.engine.device,
        )
        with torch.inference_mode():
            logits = self.model.prefill(ids, 0, 0, self.engine.cache)
            self.model.decode(
                logits.argmax(-1)[:1],
                torch.tensor([len(ids)], device=self.engine.device),
                self.engine.cache,
            )
        self.lifecycle.mark("warmup_done")

    def start(self) -> None:
        self.warm_up()
        self.engine.start()
        self.telemetry.start()

    def stop(self) -> None:
        self.engine.stop()
        self.telemetry.stop()  # exports what is queued; JSONL flushed + fsynced, spans flushed
        self.lifecycle.mark("shutdown")


@dataclass
class _GilFreeTokenizer(TokenizerBundle):
    """The loaded tokenizer, encoding through ``encode_batch`` (the same IDs as ``encode``),
    which releases the GIL while the Rust tokenizer runs."""

    @classmethod
    def of(cls, bundle: TokenizerBundle) -> _GilFreeTokenizer:
        return cls(**{f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)})

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        (enc,) = self.tok.encode_batch([text], add_special_tokens=add_special_tokens)
        return list(enc.ids)


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
