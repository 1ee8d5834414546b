"""Benchmark decode throughput of infdebug's reference engine against HF transformers.

What it measures
----------------
One random-weight checkpoint of the ``small`` preset (4 layers, hidden 256, vocab 8192; see
``infdebug/tracer/engine/make_model.py``) is written under ``bench/out/`` (or read from
``--model-dir``). For each batch size, a batch of random prompts is drawn from the
tokenizer's regular (non-special) vocabulary with a fixed seed: lengths between 3/4 of
``--prompt-len`` and ``--prompt-len`` (the first prompt is exactly ``--prompt-len``), so the
batch needs left padding. Each engine then generates exactly ``--new-tokens`` tokens per
sequence, greedily, with end-of-sequence stopping disabled.

Decode throughput is separated from prefill by timing two runs in each repetition: one
that generates a single token (prefill, plus the first token) and one that generates
``--new-tokens``. ``decode tok/s = batch × (new_tokens − 1) / (t_full − t_prefill)``.
The median over ``--repeat`` repetitions is reported, after one warm-up run. Torch's thread
count is left at its default.

Engines
-------
``transformers``: ``AutoModelForCausalLM.from_pretrained(dir)`` and ``generate()``, float32 on
CPU (bfloat16 on CUDA). It is the baseline: every row shows its decode tok/s as a multiple of
transformers' at the same batch size. (The infdebug engine is added next to it.)

Reproduce
---------
    python bench/engine.py                                     # batches 1,8,32; 128 + 128 tokens
    python bench/engine.py --batches 1,8 --new-tokens 32 --repeat 1   # a quick smoke run
    python bench/engine.py --json > result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from infdebug.tracer.engine.make_model import make_model

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(BENCH_DIR, "out")
DEFAULT_MODEL_DIR = os.path.join(OUT_DIR, "engine-small")
BASELINE = "transformers"


def make_bench_model(model_dir: str) -> str:
    """Write the benchmark's checkpoint (``small`` preset, llama, ChatML) into ``model_dir``."""
    return make_model(model_dir, preset="small")


def _special_ids(model_dir: str) -> tuple[set[int], int]:
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    specials = {int(t["id"]) for t in tok.get("added_tokens", []) if t.get("special")}
    vocab = len(tok["model"]["vocab"]) + len(tok.get("added_tokens", []))
    return specials, vocab


def _pad_id(model_dir: str) -> int:
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            pad = json.load(f).get("pad_token_id")
        if pad is not None:
            return int(pad)
    return 0


def random_prompts(model_dir: str, batch: int, prompt_len: int, seed: int = 0) -> list[list[int]]:
    """``batch`` prompts of regular token IDs, 3/4·prompt_len to prompt_len long (the first
    exactly prompt_len); the same for every engine given the same arguments."""
    specials, vocab = _special_ids(model_dir)
    regular = np.array([i for i in range(vocab) if i not in specials])
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, prompt_len * 3 // 4), prompt_len + 1, size=batch)
    lengths[0] = prompt_len
    return [rng.choice(regular, size=int(n)).tolist() for n in lengths]


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _summary(
    engine: str,
    version: str,
    device: str,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    runs: list[tuple[float, float]],
) -> dict[str, Any]:
    """Medians over repetitions of (prefill-only seconds, full-generation seconds)."""
    decode_tokens = batch * (new_tokens - 1)
    rates = [decode_tokens / max(full - pre, 1e-9) for pre, full in runs]
    prefill_s = statistics.median(pre for pre, _ in runs)
    total_s = statistics.median(full for _, full in runs)
    return {
        "engine": engine,
        "version": version,
        "device": device,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeat": len(runs),
        "prefill_s": round(prefill_s, 4),
        "total_s": round(total_s, 4),
        "decode_s": round(total_s - prefill_s, 4),
        "decode_tokens_per_s": round(statistics.median(rates), 1),
        "e2e_tokens_per_s": round(batch * new_tokens / total_s, 1),
    }


def transformers_decode_tokens_per_s(
    model_dir: str,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    repeat: int,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """HF ``generate()`` decode throughput on a left-padded batch of random prompts."""
    import transformers

    dev = _device(device)
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to(dev).eval()
    model.generation_config.eos_token_id = None  # exactly new_tokens per sequence
    pad = _pad_id(model_dir)
    ids, mask = _left_pad(random_prompts(model_dir, batch, prompt_len), pad)
    ids, mask = ids.to(dev), mask.to(dev)

    def generate(n: int) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        _sync(dev)
        elapsed = time.perf_counter() - t0
        if out.shape != (batch, ids.shape[1] + n):
            raise RuntimeError(
                f"generate() returned shape {tuple(out.shape)}, "
                f"expected {(batch, ids.shape[1] + n)}"
            )
        return elapsed

    generate(min(new_tokens, 4))  # warm-up
    runs = [(generate(1), generate(new_tokens)) for _ in range(repeat)]
    return _summary(
        "transformers", transformers.__version__, dev, batch, prompt_len, new_tokens, runs
    )


def infdebug_decode_tokens_per_s(
    model_dir: str,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    repeat: int,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """infdebug's engine loop (continuous batching, prefix cache on) driven step by step."""
    from infdebug import __version__
    from infdebug.tracer.engine.checkpoint import load_checkpoint
    from infdebug.tracer.engine.engine import Engine, EngineConfig, SamplingParams

    dev = _device(device)
    model, _ = load_checkpoint(model_dir, device=dev, max_len=prompt_len + new_tokens + 8)
    engine = Engine(
        model,
        eos_ids=[],
        decode_text=lambda ids: "",
        config=EngineConfig(max_batch=max(batch, 1), max_model_len=prompt_len + new_tokens + 8),
    )
    prompts = random_prompts(model_dir, batch, prompt_len)

    def generate(n: int) -> float:
        done: list[int] = []
        params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        engine.prefix.blocks.clear()  # every repetition prefills from scratch, as HF does
        _sync(dev)
        t0 = time.perf_counter()
        for p in prompts:
            engine.submit(p, params, lambda ev: ev.finish_reason and done.append(1))
        while len(done) < batch:
            engine.step()
        _sync(dev)
        return time.perf_counter() - t0

    generate(min(new_tokens, 4))  # warm-up
    runs = [(generate(1), generate(new_tokens)) for _ in range(repeat)]
    return _summary("infdebug", __version__, dev, batch, prompt_len, new_tokens, runs)


EngineBench = Callable[[str, int, int, int, int], dict[str, Any]]
ENGINES: dict[str, EngineBench] = {
    "transformers": transformers_decode_tokens_per_s,
    "infdebug": infdebug_decode_tokens_per_s,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--model-dir",
        default=DEFAULT_MODEL_DIR,
        help="a checkpoint; written with the small preset if it has no config.json",
    )
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        ap.error(f"--batches expects comma-separated integers, got {args.batches!r}")
    if args.new_tokens < 2:
        ap.error("--new-tokens must be at least 2 (decode is measured after the first token)")
    for e in args.engines.split(","):
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}; expected one of {', '.join(ENGINES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    out = Console() if sys.stdout.isatty() else Console(width=120)
    err = Console(stderr=True)
    log = err.print if args.json else out.print
    log(
        f"[bold]machine[/]: nproc={os.cpu_count()} torch threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()} python={platform.python_version()} "
        f"torch={torch.__version__} device={_device(None)} load={os.getloadavg()[0]:.2f}",
        highlight=False,
    )
    if _device(None) == "cpu" and os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        log(
            "[yellow]the CPUs are busy with other work: torch's threads will contend and the "
            "numbers will be noisy[/]"
        )
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        log(f"writing the benchmark model to {args.model_dir} …")
        make_bench_model(args.model_dir)
    engines = [e for e in args.engines.split(",") if e]
    results: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        for name in engines:
            log(
                f"{name}: batch {batch}, prompt ≤{args.prompt_len}, "
                f"{args.new_tokens} new tokens ×{args.repeat} …"
            )
            r = ENGINES[name](args.model_dir, batch, args.prompt_len, args.new_tokens, args.repeat)
            results.append(r)
    base = {r["batch"]: r["decode_tokens_per_s"] for r in results if r["engine"] == BASELINE}
    for r in results:
        r["vs_baseline"] = (
            round(r["decode_tokens_per_s"] / base[r["batch"]], 2) if r["batch"] in base else None
        )
    if args.json:
        print(
            json.dumps(
                {"model_dir": args.model_dir, "baseline": BASELINE, "results": results}, indent=2
            )
        )
        return 0
    table = Table(title=f"decode throughput, {os.path.basename(os.path.normpath(args.model_dir))}")
    for col in (
        "engine",
        "batch",
        "prefill s",
        "decode s",
        "decode tok/s",
        "e2e tok/s",
        f"× {BASELINE}",
    ):
        table.add_column(col, justify="left" if col == "engine" else "right")
    for r in results:
        table.add_row(
            f"{r['engine']} {r['version']} ({r['device']})",
            str(r["batch"]),
            f"{r['prefill_s']:.3f}",
            f"{r['decode_s']:.3f}",
            f"{r['decode_tokens_per_s']:,.0f}",
            f"{r['e2e_tokens_per_s']:,.0f}",
            "—" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}×",
        )
    out.print(table)
    out.print(
        f"prompts ≤{args.prompt_len} tokens (left-padded), {args.new_tokens} new tokens, greedy, "
        f"median of {args.repeat}; decode tok/s = batch × (new − 1) / (t_full − t_prefill)",
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
