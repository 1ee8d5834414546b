"""Benchmark every drift analyzer (tokenizer, template, stop, repetition) over N logged requests.

What it measures
----------------
A fresh embedded store holds N requests (default 1,000,000; see ``bench/analyze_data.py``):
512-token chat prompts rendered with a real template (default Llama-3.1's) and encoded with
the real tokenizer (default Llama-3's), N/2 distinct prompts each on two of 8 replicas in two
deployments, outputs with end-of-turn IDs, a few loops, and one injected tokenizer fault.

Each repeat (``--repeat``, default 3; medians reported) times:

- every registered analyzer through ``analyze(ctx)`` (the one run ``infdebug analyze`` and the
  demo do; each analyzer timed by it) with the reference tokenizer and template;
  inside ``tokenizer`` the split: store-side ID checks (fingerprint, cross-replica, out of
  vocab), the re-encode check (its sample query, the ``tokenizers`` encode, the rest) and the
  decode check — measured by wrapping the analyzer's own functions, not by re-implementing them;
- baselines on the same data: raw ``tokenizers`` ``encode_batch`` on the very texts the
  analyzer re-encoded (the floor for re-encoding), tiktoken on them (built from the same
  vocabulary and merges: how far a faster BPE would go; not used by the analyzer), raw
  ``decode_batch`` on the sampled outputs, and a plain ClickHouse scan of the columns each
  analyzer reads (hashing every value once: the floor for store-side checks).

Rates are requests/s: N for whole analyzers and store-side checks; requests checked for the
sampled re-encode and decode checks. Targets (the issue's): 50k requests/s for store-side
checks (fingerprint/ID/skeleton), 5k requests/s for re-encoding on 2 cores; "ratio" is
measured/target. "share" is the part of all analyzers' wall time spent re-tokenizing. An
analyzer added since (one more ``@analyzer`` module) runs too and gets its own row, without a
baseline unless ``FLOORS`` names its columns.

Before the store is built, ``--encoder-texts`` prompts (default 1,000; 0 skips) are encoded
by ``tokenizers`` ``encode_batch`` / ``encode_batch_fast`` under TOKENIZERS_PARALLELISM
unset/true/false (one process per setting, the settings interleaved over ``--repeat``
rounds), a plain ``encode`` loop, and tiktoken on 1 and ``--threads`` threads.

ClickHouse queries run under ``--query-memory-gb`` (8): a query that needs more fails its
analyzer, which the report names, instead of exhausting the machine.

Reproduce
---------
    python bench/analyze.py                        # 1M requests, 3 repeats (~7 min on 2 cores)
    python bench/analyze.py --requests 50000       # a quick run
    python bench/analyze.py --requests 20000 --repeat 1 --encoder-texts 0   # smoke
    python bench/analyze.py --tokenizer gpt2 --json > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")
TEMPLATES = {"llama3": "llama3.1.jinja", "gpt2": "chatml_v5.jinja"}
STORE_TARGET = 50_000
ENCODE_TARGET = 5_000
# the columns each analyzer reads, hashed once per row: the floor for its store-side work
FLOORS = {
    "tokenizer": (
        "model, tokenizer_fp, replica, t_arrival, request_id, deployment, "
        "prompt_text, prompt_ids, output_ids"
    ),
    "template": (
        "replica, deployment, t_arrival, request_id, model, template_fp, "
        "prompt_ids, prompt_text, messages"
    ),
    "stop": "model, replica, t_arrival, request_id, finish_reason, sampling, output_ids",
    "repetition": "replica, t_arrival, request_id, output_ids",
}


def _paths(args: argparse.Namespace) -> tuple[str, str]:
    tok = args.tokenizer
    if not os.path.exists(tok):
        tok = os.path.join(SHARED, "tokenizers", tok)
    tpl = args.template or os.path.join(
        SHARED, "templates", TEMPLATES.get(os.path.basename(tok.rstrip("/")), "chatml_v5.jinja")
    )
    for p in (tok, tpl):
        if not os.path.exists(p):
            sys.exit(f"{p}: absent (the defaults need ../shared/data beside the repository)")
    return tok, tpl


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- encoder comparison, each setting in its own process --------------------------------------

# Each round starts one process per TOKENIZERS_PARALLELISM setting (it is read once, when
# tokenizers first runs in parallel); each process times every method once, in turn. Medians
# over rounds: interleaving keeps a machine whose load changes from favouring one setting.
PARALLELISM = (None, "true", "false")
METHODS = ("encode_batch", "encode_batch_fast", "encode loop", "tiktoken 1 thread", "tiktoken")


def _encoder_child(spec: str) -> None:
    tok_path, texts_path = spec.split("|")
    with open(texts_path) as f:
        texts = json.load(f)
    from analyze_data import tiktoken_encoder

    from infdebug.text.tokenizer import load_tokenizer

    bundle = load_tokenizer(tok_path)
    inner = bundle.tok
    threads = int(os.environ.get("RAYON_NUM_THREADS", "2"))
    runs: dict[str, Callable[[list[str]], Any]] = {
        "encode_batch": lambda ts: inner.encode_batch(ts, add_special_tokens=False),
        "encode_batch_fast": lambda ts: inner.encode_batch_fast(ts, add_special_tokens=False),
    }
    if "TOKENIZERS_PARALLELISM" not in os.environ:  # the rest do not read it
        runs["encode loop"] = lambda ts: [inner.encode(t, add_special_tokens=False) for t in ts]
        one, many = tiktoken_encoder(bundle, 1), tiktoken_encoder(bundle, threads)
        if one is not None and many is not None:
            runs["tiktoken 1 thread"], runs["tiktoken"] = one, many
    out: dict[str, Any] = {}
    for name, run in runs.items():
        run(texts[:50])
        t = time.perf_counter()
        run(texts)
        out[name] = time.perf_counter() - t
    if "tiktoken" in runs:
        out["tiktoken_ids_equal"] = runs["tiktoken"](texts) == [
            e.ids for e in inner.encode_batch(texts, add_special_tokens=False)
        ]
    print(json.dumps(out))


def encoder_comparison(
    tok_path: str, texts: list[str], threads: int, rounds: int
) -> list[dict[str, Any]]:
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    errors: dict[str, str] = {}
    same: list[bool] = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    try:
        for _ in range(rounds):
            for par in PARALLELISM:
                env = {
                    **os.environ,
                    "RAYON_NUM_THREADS": str(threads),
                    "RAYON_RS_NUM_CPUS": str(threads),
                }
                env.pop("TOKENIZERS_PARALLELISM", None)
                if par is not None:
                    env["TOKENIZERS_PARALLELISM"] = par
                res = subprocess.run(
                    [sys.executable, __file__, "--encoder-child", f"{tok_path}|{f.name}"],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                try:
                    for method, sec in json.loads(res.stdout.strip().splitlines()[-1]).items():
                        if method == "tiktoken_ids_equal":
                            same.append(bool(sec))
                            continue
                        seconds[(method, par or "(unset)")].append(sec)
                except (ValueError, IndexError):
                    errors[par or "(unset)"] = (res.stderr or res.stdout).strip()[-300:]
    finally:
        os.unlink(f.name)
    out: list[dict[str, Any]] = []
    base = (
        statistics.median(seconds[("encode_batch", "(unset)")])
        if seconds[("encode_batch", "(unset)")]
        else None
    )
    for method in METHODS:
        for par in PARALLELISM:
            key = (method, par or "(unset)")
            if key in seconds:
                sec = statistics.median(seconds[key])
                out.append(
                    {
                        "method": method,
                        "tokenizers_parallelism": key[1],
                        "texts": len(texts),
                        "seconds": sec,
                        "texts_per_s": len(texts) / sec,
                        "vs_encode_batch": base / sec if base else None,
                    }
                )
    out.extend(
        {"method": "(failed)", "tokenizers_parallelism": k, "error": v} for k, v in errors.items()
    )
    if same:
        out.append(
            {
                "method": "tiktoken IDs",
                "tokenizers_parallelism": "",
                "note": "equal to encode_batch's" if all(same) else "DIFFER from encode_batch's",
            }
        )
    return out


# --- instrumentation ----------------------------------------------------------------------------


class Clock:
    """Seconds spent in wrapped functions, by key, and what they were called with."""

    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.seen: dict[str, list[Any]] = defaultdict(list)
        self.failed: set[str] = set()

    def wrap(
        self, key: str, fn: Callable[..., Any] | None, keep: Callable[..., Any] | None = None
    ) -> Any:
        """``fn``, timed under ``key``; ``keep(result, *args)`` is recorded for each call.
        None where ``fn`` is None."""
        if fn is None:
            return None

        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                out = fn(*a, **k)
            except BaseException:
                self.failed.add(key)
                raise
            finally:
                self.s[key] += time.perf_counter() - t
            if keep is not None:
                self.seen[key].append(keep(out, *a))
            return out

        return timed


@contextmanager
def patched(pairs: list[tuple[Any, str, Any]]) -> Iterator[None]:
    old = [(m, n, getattr(m, n)) for m, n, _ in pairs]
    try:
        for m, n, v in pairs:
            setattr(m, n, v)
        yield
    finally:
        for m, n, v in old:
            setattr(m, n, v)


def instrument(clock: Clock) -> list[tuple[Any, str, Any]]:
    """(module, attribute, timed wrapper) for each analyzer function the report splits by;
    one the analyzers no longer have is left out (its rows then read "did not run")."""
    return [(m, n, w) for m, n, w in _wrappers(clock) if w is not None]


def _wrappers(clock: Clock) -> list[tuple[Any, str, Any]]:
    from infdebug.analyzers import template_drift as tpl
    from infdebug.analyzers import tokenizer_drift as td
    from infdebug.store import q_template, q_tokenizer

    def w(
        key: str, module: Any, name: str, keep: Callable[..., Any] | None = None
    ) -> tuple[Any, str, Any]:
        return module, name, clock.wrap(key, getattr(module, name, None), keep)

    def ids(part: str) -> tuple[Any, str, Any]:  # timed on its own and within "tok.ids"
        fn = getattr(
            td, f"{part}_findings", None
        )  # tokenizer_ids' checks, as tokenizer_drift calls them
        return td, f"{part}_findings", clock.wrap("tok.ids", clock.wrap(f"tok.{part}", fn))

    return [
        *(
            w(f"tpl.{part}", tpl, f"_{part}_findings")
            for part in ("bos", "render", "fingerprint", "skeleton")
        ),
        w("tpl.prompt_sample", q_template, "prompt_sample", lambda out, *a: len(out)),
        *(ids(part) for part in ("fingerprint", "cross_replica", "oov")),
        w("tok.reencode", td, "_reencode_findings"),
        w("tok.decode", td, "_decode_findings"),
        w(
            "tok.encode_calls",
            td,
            "_encode_many",
            lambda out, tok, texts, special, *_: (list(texts), special),
        ),
        w("tok.decode_calls", td, "_decode_many", lambda out, tok, seqs, *_: list(seqs)),
        w(
            "tok.prompt_sample",
            q_tokenizer,
            "prompt_sample",
            lambda out, *a: sum(s.requests for s in out),
        ),
        w("tok.output_sample", q_tokenizer, "output_sample"),
    ]


def _summary(findings: list[Any]) -> dict[str, int]:
    return dict(sorted(Counter(f"{f.kind}:{f.severity}" for f in findings).items()))


def floor_scan(st: Any, cols: str) -> float:
    expr = " + ".join(f"cityHash64({c.strip()})" for c in cols.split(","))
    t = time.perf_counter()
    st.query(f"SELECT count(), sum({expr}) FROM requests")
    return time.perf_counter() - t


def one_repeat(st: Any, ctx: Any, fast: Any) -> dict[str, Any]:
    from infdebug.analyzers.base import analyze

    clock = Clock()
    with patched(instrument(clock)):
        result = analyze(ctx, count=False)
    out: dict[str, Any] = {
        "analyzers": dict(result.seconds),
        "findings": {
            name: _summary([f for f in result.findings if f.analyzer == name])
            for name in result.ran
        },
        "failed": dict(result.failed),
    }
    calls = clock.seen["tok.encode_calls"]
    texts: list[str] = next((t for t, special in calls if not special), [])
    seqs: list[list[int]] = next(
        iter(clock.seen["tok.decode_calls"]), []
    )  # the sample (then suspects)
    out["parts"] = {k: v for k, v in clock.s.items() if k not in clock.failed}
    out["encoded_texts"] = len(texts)
    out["confirm_texts"] = sum(len(t) for t, special in calls if special)
    out["decoded_outputs"] = len(seqs)
    out["template_rows"] = list(clock.seen["tpl.prompt_sample"])
    out["checked_requests"] = sum(clock.seen["tok.prompt_sample"])
    # baselines on the same texts / sequences / columns
    tok = ctx.tokenizer
    t = time.perf_counter()
    tok.tok.encode_batch(texts, add_special_tokens=False)
    out["floor_encode_batch"] = time.perf_counter() - t
    if fast is not None:
        t = time.perf_counter()
        fast(texts)
        out["floor_tiktoken"] = time.perf_counter() - t
    t = time.perf_counter()
    tok.tok.decode_batch(seqs, skip_special_tokens=True)
    out["floor_decode_batch"] = time.perf_counter() - t
    out["floor_scan"] = {name: floor_scan(st, cols) for name, cols in FLOORS.items()}
    out["floor_scan"]["tokenizer ids"] = out["floor_scan"]["tokenizer"]
    return out


# --- report ---------------------------------------------------------------------------------------


def _med(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> float:
    return float(statistics.median(get(r) for r in runs))


def table(runs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """One row per measured part: median seconds, requests, req/s, target ratio, floor."""
    rows: list[dict[str, Any]] = []

    failed = {k for r in runs for k in r["failed"]}
    owner = [""]

    def row(
        label: str,
        get: Callable[[dict[str, Any]], float],
        requests: int | None,
        target: int | None,
        floor: str | None = None,
        floor_get: Callable[[dict[str, Any]], float] | None = None,
    ) -> None:
        if not label.startswith(" "):
            owner[0] = label.split()[0]
            if owner[0] in failed:
                label += " (FAILED)"
        try:
            s = _med(runs, get)
        except (KeyError, TypeError):  # the part did not run: its analyzer failed
            rows.append({"part": label, "seconds": None, "requests": requests, "missing": True})
            return
        r: dict[str, Any] = {"part": label, "seconds": s, "requests": requests}
        if requests:
            r["req_per_s"] = requests / s if s else None
            if target and r["req_per_s"]:
                r["target_req_per_s"] = target
                r["ratio_to_target"] = r["req_per_s"] / target
        if floor and floor_get is not None and all(floor_get(x) is not None for x in runs):
            fs = _med(runs, floor_get)
            r.update(floor=floor, floor_seconds=fs, vs_floor=s / fs if fs else None)
        rows.append(r)

    last = runs[-1]
    checked, texts, outputs = (
        last["checked_requests"],
        last["encoded_texts"],
        last["decoded_outputs"],
    )
    scan = "ClickHouse scan of the same columns"
    row("tokenizer analyzer (all checks)", lambda r: r["analyzers"]["tokenizer"], n, None)
    row(
        "  ID checks: fingerprint+cross-replica+oov",
        lambda r: r["parts"]["tok.ids"],
        n,
        STORE_TARGET,
        scan,
        lambda r: r["floor_scan"]["tokenizer ids"],
    )
    row("    fingerprint", lambda r: r["parts"]["tok.fingerprint"], n, STORE_TARGET)
    row("    cross-replica IDs", lambda r: r["parts"]["tok.cross_replica"], n, STORE_TARGET)
    row("    out of vocabulary (reference)", lambda r: r["parts"]["tok.oov"], n, STORE_TARGET)
    row(
        "  re-encode check (tokenizers)",
        lambda r: r["parts"]["tok.reencode"],
        checked,
        ENCODE_TARGET,
        "raw encode_batch, same texts",
        lambda r: r["floor_encode_batch"],
    )
    row("    sample query", lambda r: r["parts"]["tok.prompt_sample"], None, None)
    row(
        f"    encode ({texts} distinct prompts)",
        lambda r: r["parts"]["tok.encode_calls"],
        texts,
        None,
        "raw encode_batch, same texts",
        lambda r: r["floor_encode_batch"],
    )
    row(
        "    the rest (compare, classify, evidence)",
        lambda r: (
            r["parts"]["tok.reencode"]
            - r["parts"]["tok.prompt_sample"]
            - r["parts"]["tok.encode_calls"]
        ),
        None,
        None,
    )
    if all("floor_tiktoken" in r for r in runs):
        row(
            f"    (baseline) tiktoken, same {texts} prompts",
            lambda r: r["floor_tiktoken"],
            texts,
            None,
            "raw encode_batch, same texts",
            lambda r: r["floor_encode_batch"],
        )
    row(
        f"  decode check ({outputs} outputs)",
        lambda r: r["parts"]["tok.decode"],
        outputs,
        ENCODE_TARGET,
        "raw decode_batch, same IDs",
        lambda r: r["floor_decode_batch"],
    )
    others = [k for k in FLOORS if k in last["analyzers"]] + sorted(
        k for k in last["analyzers"] if k not in FLOORS
    )
    for name in others:
        if name == "tokenizer":
            continue
        if name in FLOORS:
            row(
                f"{name} analyzer",
                lambda r, k=name: r["analyzers"][k],
                n,
                STORE_TARGET,  # type: ignore[misc]
                scan,
                lambda r, k=name: r["floor_scan"][k],
            )  # type: ignore[misc]
        else:
            row(f"{name} analyzer", lambda r, k=name: r["analyzers"][k], n, STORE_TARGET)  # type: ignore[misc]
        if name != "template":
            continue
        seen = last["template_rows"]
        skeletons, rendered = (seen[-1] if seen else 0), (seen[0] if len(seen) > 1 else 0)
        row("  BOS check", lambda r: r["parts"]["tpl.bos"], n, STORE_TARGET)
        row("  fingerprint check", lambda r: r["parts"]["tpl.fingerprint"], n, STORE_TARGET)
        row(
            f"  skeleton check ({skeletons} sampled rows)",
            lambda r: r["parts"]["tpl.skeleton"],
            n,
            STORE_TARGET,
        )
        row(
            f"  render check ({rendered} sampled rows)",
            lambda r: r["parts"]["tpl.render"],
            rendered,
            None,
        )
        row(
            "    sample queries (both checks)",
            lambda r: r["parts"]["tpl.prompt_sample"],
            None,
            None,
        )
    row("all analyzers", lambda r: sum(r["analyzers"].values()), n, None)
    return rows


def shares(runs: list[dict[str, Any]]) -> dict[str, float]:
    total = _med(runs, lambda r: sum(r["analyzers"].values()))
    enc = _med(runs, lambda r: r["parts"].get("tok.encode_calls", 0.0))
    dec = _med(runs, lambda r: r["parts"].get("tok.decode_calls", 0.0))
    out = {
        "all_analyzers_s": total,
        "encode_share": enc / total,
        "decode_share": dec / total,
        "retokenize_share": (enc + dec) / total,
    }
    return out


def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def print_report(res: dict[str, Any]) -> None:
    c = res["config"]
    print(
        f"{c['requests']:,} requests ({res['store']['distinct_prompts']:,.0f} distinct prompts, "
        f"{res['store']['avg_prompt_tokens']:.0f} tokens on average), "
        f"tokenizer {c['tokenizer']}, template "
        f"{c['template']}, re-encode sample {c['sample']:,}/replica, {c['threads']} threads, "
        f"medians of {c['repeat']}"
    )
    b = res["build"]
    print(
        f"built in {b['generate_s'] + b['ingest_s'] + b['multiply_s']:.1f}s "
        f"(generate {b['generate_s']:.1f}, ingest "
        f"{b['ingest_s']:.1f}, multiply in ClickHouse {b['multiply_s']:.1f}); tiktoken baseline: "
        + ("yes" if res["tiktoken"] else "none (not byte-level BPE, or tiktoken not installed)")
    )
    if res.get("encoders"):
        print(
            f"\nencoders on {res['encoders'][0].get('texts', '?')} prompts, "
            "each in its own process "
            f"(RAYON_NUM_THREADS={c['threads']}):"
        )
        print(
            f"  {'method':22} {'TOKENIZERS_PARALLELISM':>22} "
            f"{'prompts/s':>10} {'vs encode_batch':>16}"
        )
        for r in res["encoders"]:
            if "note" in r:
                print(f"  {r['method']}: {r['note']}")
                continue
            print(
                f"  {r['method']:22} {r['tokenizers_parallelism']:>22} "
                f"{_fmt(r.get('texts_per_s'), '10.0f'):>10} "
                f"{_fmt(r.get('vs_encode_batch'), '15.2f')}x"
                + (f"  {r['error']}" if "error" in r else "")
            )
    print(
        f"\n{'part':46} {'median s':>9} {'requests':>9} {'req/s':>9} {'target':>7} {'ratio':>6}  "
        f"{'baseline (same run)':35} {'base s':>7} {'x base':>6}"
    )
    for r in res["table"]:
        if r.get("missing"):
            print(f"{r['part']:46} {'(failed or did not run)':>9}")
            continue
        print(
            f"{r['part']:46} {r['seconds']:9.3f} {_fmt(r['requests'], '9d'):>9} "
            f"{_fmt(r.get('req_per_s'), '9.0f'):>9} "
            f"{_fmt(r.get('target_req_per_s'), '7d'):>7} "
            f"{_fmt(r.get('ratio_to_target'), '5.2f'):>5}"
            f"{'x' if r.get('ratio_to_target') else ' '}  "
            f"{r.get('floor', ''):35} {_fmt(r.get('floor_seconds'), '7.3f'):>7} "
            f"{_fmt(r.get('vs_floor'), '5.2f'):>5}{'x' if r.get('vs_floor') else ''}"
        )
    s = res["shares"]
    print(
        f"\nall analyzers: {s['all_analyzers_s']:.2f}s; "
        f"re-tokenizing {s['retokenize_share']:.0%} of it "
        f"(encode {s['encode_share']:.0%}, decode {s['decode_share']:.0%})"
    )
    print(
        "ratio = measured req/s / target (50k store-side, 5k re-encode on 2 cores); "
        "x base = seconds / "
        "the baseline's seconds"
    )
    print(f"findings: {json.dumps(res['findings'])}")
    if res["failed"]:
        print(f"FAILED analyzers: {res['failed']}")
    print(f"peak RSS {res['peak_rss_mb']:,.0f} MB; wall {res['wall_s']:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--base", type=int, default=2_000, help="distinct base conversations")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument(
        "--sample", type=int, default=5_000, help="tokenizer_sample: prompts re-encoded per replica"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=2, help="tokenizers (RAYON_NUM_THREADS) and tiktoken threads"
    )
    ap.add_argument(
        "--tokenizer", default="llama3", help="a path, or a name under ../shared/data/tokenizers"
    )
    ap.add_argument(
        "--template", default=None, help="chat template (default: Llama-3.1's, ChatML for gpt2)"
    )
    ap.add_argument(
        "--fault-share", type=float, default=0.02, help="share of r7's requests with split IDs"
    )
    ap.add_argument(
        "--encoder-texts",
        type=int,
        default=1_000,
        help="prompts for the encoder comparison (0: skip)",
    )
    ap.add_argument("--no-tiktoken", action="store_true", help="skip the tiktoken baseline")
    ap.add_argument(
        "--query-memory-gb",
        type=float,
        default=8.0,
        help="ClickHouse max_memory_usage per query: a query past it fails its analyzer (reported) "
        "instead of exhausting the machine",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--encoder-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its pool
    os.environ["RAYON_RS_NUM_CPUS"] = str(args.threads)
    if args.encoder_child:
        _encoder_child(args.encoder_child)
        return
    wall = time.perf_counter()
    import analyze_data as data

    from infdebug.analyzers.base import AnalysisContext
    from infdebug.text.template import load_template
    from infdebug.text.tokenizer import load_tokenizer

    tok_path, tpl_path = _paths(args)
    tok = load_tokenizer(tok_path)
    template = load_template(tpl_path)
    t = time.perf_counter()
    recs, base = data.build_base(tok, template, args.base, args.prompt_tokens)
    res: dict[str, Any] = {
        "config": {
            "requests": args.requests,
            "base": args.base,
            "prompt_tokens": args.prompt_tokens,
            "sample": args.sample,
            "repeat": args.repeat,
            "threads": args.threads,
            "tokenizer": os.path.basename(tok_path.rstrip("/")),
            "template": os.path.basename(tpl_path),
            "fault_share": args.fault_share,
            "cpus": os.cpu_count(),
        },
        "build": {"generate_s": time.perf_counter() - t},
        "data": data.describe(base),
    }
    if args.encoder_texts:
        texts = (base.texts * (1 + args.encoder_texts // len(base.texts)))[: args.encoder_texts]
        res["encoders"] = encoder_comparison(tok_path, texts, args.threads, max(1, args.repeat))
    fast = None if args.no_tiktoken else data.tiktoken_encoder(tok, args.threads)
    res["tiktoken"] = fast is not None
    with tempfile.TemporaryDirectory(prefix="infdebug-bench-") as home:
        st, info = data.build_store(home, recs, base, args.requests, args.fault_share)
        res["build"].update(ingest_s=info["ingest_s"], multiply_s=info["multiply_s"])
        res["store"] = {k: info[k] for k in ("distinct_prompts", "avg_prompt_tokens")}
        st.command(f"SET max_memory_usage = {int(args.query_memory_gb * 2**30)}")
        del recs
        ctx = AnalysisContext(
            store=st, tokenizer=tok, template=template, options={"tokenizer_sample": args.sample}
        )
        runs = []
        for i in range(args.repeat):
            runs.append(one_repeat(st, ctx, fast))
            if not args.json:
                print(
                    f"repeat {i + 1}/{args.repeat}: {sum(runs[-1]['analyzers'].values()):.1f}s",
                    file=sys.stderr,
                )
        st.close()
    res["runs"] = runs
    res["table"] = table(runs, args.requests)
    res["shares"] = shares(runs)
    res["findings"] = runs[-1]["findings"]
    res["failed"] = {k: v for r in runs for k, v in r["failed"].items()}
    res["peak_rss_mb"] = _rss_mb()
    res["wall_s"] = time.perf_counter() - wall
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        print_report(res)


if __name__ == "__main__":
    main()
