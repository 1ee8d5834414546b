"""Generate ``sample_logs/fleet/``: a small, deterministic fleet in the record contract.

Three replicas (r1, r2, r3) of one model serve a few hundred chat requests over five
minutes; r3 decodes about 30 % slower and runs hotter (a regression for the analyzers of
later issues to find). Token IDs come from a byte-level BPE tokenizer trained here, in
process, with ``tokenizers`` on ``sample_logs/corpus.txt``; prompts are rendered with a
ChatML-style template. GPU samples are synthetic and say so (``simulated: true``).

    python sample_logs/generate.py            # rewrites sample_logs/fleet/

The reference engine (a later issue) replaces this with logs of real runs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from infdebug.schema import GpuSample, MetricSample, Record, Request, encode_records

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z: a fixed start so the output is reproducible
REPLICAS = {"r1": 1.0, "r2": 1.0, "r3": 1.3}  # decode slowdown factor per replica


def train_tokenizer(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def render(messages: list[dict[str, str]]) -> str:
    """<|im_start|>{role}\n{content}<|im_end|>\n per message, then <|im_start|>assistant\n"""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + "<|im_start|>assistant\n"


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(n_requests: int, seed: int) -> dict[str, list[Record]]:
    rng = random.Random(seed)
    with open(os.path.join(HERE, "corpus.txt"), encoding="utf-8") as f:
        corpus = [line.strip() for line in f if line.strip()]
    tok = train_tokenizer(corpus)
    tok_fp = fingerprint(tok.to_str())
    tpl_fp = fingerprint(render.__doc__ or "chatml")
    eos = tok.token_to_id("<|im_end|>")
    questions = [c for c in corpus if c.endswith(("?", ".")) and len(c) < 90]
    out: dict[str, list[Record]] = {f"{r}.requests": [] for r in REPLICAS}
    busy: dict[str, list[float]] = {r: [] for r in REPLICAS}
    t = T0
    for i in range(n_requests):
        t += rng.expovariate(1.0)  # ~1 request/s over the fleet
        replica = list(REPLICAS)[i % len(REPLICAS)]
        slow = REPLICAS[replica]
        messages = [{"role": "user", "content": rng.choice(questions)}]
        if rng.random() < 0.4:
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        prompt = render(messages)
        prompt_ids = tok.encode(prompt).ids
        answer = " ".join(rng.sample(corpus, rng.randint(1, 3)))
        max_tokens = 64
        output_ids = tok.encode(answer).ids[: max_tokens - 1]
        finish = "stop" if len(output_ids) < max_tokens - 1 else "length"
        if finish == "stop":
            output_ids.append(eos)
        queue_s = rng.expovariate(1 / 0.004)
        prefill_s = 0.002 + 0.00004 * len(prompt_ids) + rng.random() * 0.002
        ttft = queue_s + prefill_s + 0.012 * slow
        times = [ttft]
        for _ in output_ids[1:]:
            times.append(times[-1] + rng.gauss(0.012 * slow, 0.0015 * slow) + (0.02 if rng.random() < 0.01 else 0))
        times = [round(x, 6) for x in times]
        busy[replica].append(t)
        out[f"{replica}.requests"].append(
            Request(
                request_id=f"req-{i:05d}",
                replica=replica,
                t_arrival=round(t, 6),
                deployment="canary" if replica == "r3" else "stable",
                model="infdebug-tiny-chat",
                engine="synthetic",
                engine_version="0.1.0",
                tokenizer_fp=tok_fp,
                template_fp=tpl_fp,
                queue_s=round(queue_s, 6),
                prefill_s=round(prefill_s, 6),
                ttft_s=times[0],
                e2e_s=times[-1],
                token_times_s=times,
                messages=messages,
                prompt_text=prompt,
                prompt_ids=prompt_ids,
                output_text=tok.decode(output_ids, skip_special_tokens=True),
                output_ids=output_ids,
                cached_prompt_tokens=0,
                finish_reason=finish,
                sampling={"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens, "seed": 0, "stop_ids": [eos]},
            )
        )
    t_end = t
    for replica, slow in REPLICAS.items():
        samples: list[Record] = []
        energy = 0.0
        ts = T0
        while ts < t_end:
            load = sum(1 for a in busy[replica] if ts - 2 < a <= ts)
            power = 90 + 60 * min(load, 3) * slow + rng.gauss(0, 4)
            energy += power
            temp = 48 + 14 * (slow - 1) * 3 + load * 2 + rng.gauss(0, 0.5)
            throttled = slow > 1 and temp > 56
            samples.append(
                GpuSample(
                    t=round(ts, 3),
                    replica=replica,
                    gpu_index=0,
                    uuid=f"GPU-synthetic-{replica}",
                    power_w=round(power, 1),
                    power_limit_w=300.0,
                    temp_c=round(temp, 1),
                    sm_clock_mhz=1410.0 if not throttled else 1200.0,
                    mem_clock_mhz=1593.0,
                    util_pct=float(min(100, 30 * load)),
                    mem_used_bytes=8 << 30,
                    throttle_reasons=["sw_thermal"] if throttled else [],
                    energy_j=round(energy, 1),
                    simulated=True,
                )
            )
            ts += 1.0
        out[f"{replica}.gpu"] = samples
    out["metrics"] = [
        MetricSample(
            t=round(t_end, 3),
            replica=replica,
            name="infdebug_time_to_first_token_seconds",
            type="histogram",
            labels={"replica": replica, "model": "infdebug-tiny-chat"},
            buckets=_buckets([r.ttft_s or 0.0 for r in out[f"{replica}.requests"] if isinstance(r, Request)]),
            sum=round(sum(r.ttft_s or 0.0 for r in out[f"{replica}.requests"] if isinstance(r, Request)), 6),
            count=float(len(out[f"{replica}.requests"])),
        )
        for replica in REPLICAS
    ]
    return out


def _buckets(values: list[float]) -> dict[str, float]:
    edges = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0]
    b = {repr(e): float(sum(1 for v in values if v <= e)) for e in edges}
    b["+Inf"] = float(len(values))
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "fleet"))
    ap.add_argument("--requests", type=int, default=360)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, records in build(args.requests, args.seed).items():
        data = encode_records(records)
        if name.endswith(".gpu"):
            path = os.path.join(args.out, name + ".jsonl.gz")
            with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: byte-identical reruns
                f.write(data)
        else:
            path = os.path.join(args.out, name + ".jsonl")
            with open(path, "wb") as f:
                f.write(data)
        print(f"wrote {len(records):5d} records to {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
