"""Benchmark the analyzers for slow, hot, diverging and skewed replicas on a large store.

What it measures
----------------
A fresh embedded store is filled by ClickHouse itself (``INSERT … SELECT`` over
``numbers()``, in 1M-row slices): ``--requests`` requests (default 10M) over 6 hours on
``--replicas`` replicas (default 40, the last 4 a canary) and ``--gpu-samples`` GPU samples
(default 2M), with known truth: replica r3's inter-token time is 1.25× from the middle of the
window on, its GPU throttles at power_cap then (SM clock 1980 → 1575 MHz), canary replicas run
another engine version, speculative decoding on every replica (r5 accepts fewer drafts), and
lifecycle events with one slow start (r7's weights load 3× slower).

Each repeat (``--repeat``, default 3; medians reported) runs, in this process:

- the baseline: a plain per-replica ``quantilesExact`` scan of TTFT and e2e over the same rows
  plus a per-replica mean of the GPU samples (the floor any latency analysis pays);
- every analyzer of the regression family (``FAMILY``: the modules of issue 12) through
  ``analyze(ctx, names)``, the one run ``infdebug analyze`` does, each analyzer timed by it.
  The skew analyzers need ``--reference`` and return at once without one; so does
  ``skew.logprobs`` without ``--model``.

It reports seconds per analyzer (median, min), their sum against the issue's 5 s target, the
ratio to the baseline, peak RSS of the process (chDB runs in it), and whether the injected
faults were found (r3 latency, r3 throttling, r5 acceptance, r7 start-up, version skew).

Reproduce
---------
    python bench/regressions.py                          # 10M requests, 2M GPU samples
    python bench/regressions.py --requests 1000000 --gpu-samples 200000 --repeat 2   # quick
    python bench/regressions.py --keep                   # keep bench/out/regressions/ to reuse
    python bench/regressions.py --json > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from typing import Any

T0 = 1_790_000_000.0
SPAN_S = 6 * 3600.0
SLICE = 1_000_000
FAMILY = (
    "latency_regression",
    "change_point",
    "version_skew",
    "gpu_health",
    "startup",
    "spec_acceptance",
    "output_divergence",
    "skew",
    "skew_format",
    "skew_numerics",
)


def _requests_sql(n: int, replicas: int) -> str:
    r = f"(number % {replicas})"
    x = f"(number / {n})"  # 0..1 over the window
    slow = f"if({r} = 3 AND {x} > 0.5, 1.25, 1.0)"
    return f"""
    INSERT INTO requests (request_id, replica, deployment, model, engine, engine_version,
                          t_arrival, queue_s, ttft_s, e2e_s, prompt_tokens, output_tokens,
                          cached_prompt_tokens, spec_draft_tokens, spec_accepted_tokens,
                          finish_reason)
    SELECT concat('q', toString(number)), concat('r', toString({r})),
           if({r} >= {replicas - 4}, 'canary', 'prod'), 'bench-8b', 'vllm',
           if({r} >= {replicas - 4}, '0.11.2', '0.11.1'),
           {T0} + {SPAN_S} * {x}, q, ttft, ttft + tpot * (out - 1), p, out,
           toUInt32(256 * intDiv(cityHash64(number, 5) % p, 256)), draft,
           toUInt32(draft * if({r} = 5, 0.45, 0.7) * (0.9 + (cityHash64(number, 6) % 200) / 1000)),
           'stop'
    FROM (
        SELECT number,
               toUInt32(64 + cityHash64(number, 1) % 3000) AS p,
               toUInt32(8 + cityHash64(number, 2) % 500) AS out,
               (cityHash64(number, 3) % 1000) / 20000 AS q,
               0.04 + p * 2e-5 * (0.8 + (cityHash64(number, 4) % 400) / 1000) AS ttft,
               0.03 * {slow} * (0.85 + (cityHash64(number, 7) % 300) / 1000) AS tpot,
               toUInt32(out * 3) AS draft
        FROM numbers({{start:UInt64}}, {{count:UInt64}})
    )
    """


def _gpu_sql(n: int, replicas: int) -> str:
    per = max(1, n // replicas)
    step = SPAN_S / per
    r = f"(number % {replicas})"
    k = f"intDiv(number, {replicas})"
    hot = f"({r} = 3 AND {k} > {per // 2})"
    return f"""
    INSERT INTO gpu_samples (t, replica, gpu_index, uuid, power_w, power_limit_w, temp_c,
                             sm_clock_mhz, util_pct, throttle_reasons, energy_j, simulated)
    SELECT {T0} + {k} * {step}, concat('r', toString({r})), 0, concat('GPU-', toString({r})),
           if({hot}, 700, 420 + number % 40), 700, if({hot}, 83, 62 + number % 6),
           if({hot}, 1575, 1980 - number % 15), 75 + number % 20,
           if({hot}, ['power_cap'], []), 430.0 * {k} * {step}, false
    FROM numbers({{start:UInt64}}, {{count:UInt64}})
    """


def _events_sql(replicas: int) -> str:
    return f"""
    INSERT INTO events (t, replica, name, duration_s, since_start_s, deployment, pid)
    SELECT {T0} - 600 + r * 3 + offs[k], concat('r', toString(r)), names[k], durs[k], offs[k],
           if(r >= {replicas - 4}, 'canary', 'prod'), toUInt32(1000 + r)
    FROM (SELECT number AS r, ['process_start', 'weights_loaded', 'warmup_done', 'ready'] AS names,
                 [0, w, w + 5, w + 6] AS offs, [NULL, w, 5, 1] AS durs,
                 if(number = 7, 120, 40 + number % 3) AS w
          FROM numbers({replicas}))
    ARRAY JOIN arrayEnumerate(names) AS k
    """


def build(home: str, n: int, gpu: int, replicas: int) -> float:
    from infdebug.store import open_store

    t = time.perf_counter()
    st = open_store(home=home)
    try:
        for sql, total in ((_requests_sql(n, replicas), n), (_gpu_sql(gpu, replicas), gpu)):
            for start in range(0, total, SLICE):
                st.command(sql, {"start": start, "count": min(SLICE, total - start)})
                print(f"  built {start + min(SLICE, total - start):,} / {total:,}", file=sys.stderr)
        st.command(_events_sql(replicas))
    finally:
        st.close()
    return time.perf_counter() - t


def family_names() -> list[str]:
    from infdebug.analyzers.base import ANALYZERS, discover

    discover()
    return sorted(n for n, fn in ANALYZERS.items() if fn.__module__.rsplit(".", 1)[-1] in FAMILY)


def found_faults(findings: list[Any]) -> dict[str, bool]:
    def on(kind: str, replica: str) -> bool:
        return any(
            f.kind == kind
            and (f.scope or {}).get("replica") == replica
            and f.severity in ("warning", "error")
            for f in findings
        )

    return {
        # r3 slows down half way: a change point; over the whole window its shift is about
        # the 10 % tolerance, so latency_regression may or may not add a warning
        "r3 change_point": on("replica.change_point", "r3"),
        "r3 latency_regression (optional)": on("replica.latency_regression", "r3"),
        "r3 gpu_throttling": on("replica.gpu_throttling", "r3"),
        "r5 spec_acceptance": on("replica.spec_acceptance", "r5"),
        "r7 slow_start": on("replica.slow_start", "r7"),
        "version_skew": any(f.kind == "replica.version_skew" for f in findings),
    }


def run(home: str, repeat: int) -> dict[str, Any]:
    from infdebug.analyzers.base import AnalysisContext, analyze
    from infdebug.store import open_store

    names = family_names()
    st = open_store(home=home)
    base: list[float] = []
    per: dict[str, list[float]] = {n: [] for n in names}
    totals: list[float] = []
    findings: list[Any] = []
    failed: dict[str, str] = {}
    try:
        for _ in range(repeat):
            t = time.perf_counter()
            st.query(
                "SELECT replica, quantilesExact(0.5, 0.9, 0.99)(ttft_s), "
                "quantilesExact(0.5, 0.9, 0.99)(e2e_s) FROM requests GROUP BY replica"
            )
            st.query(
                "SELECT replica, avg(sm_clock_mhz), avg(power_w) FROM gpu_samples GROUP BY replica"
            )
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = analyze(AnalysisContext(store=st), names, count=False)
            totals.append(time.perf_counter() - t)
            for n, s in res.seconds.items():
                per[n].append(s)
            findings, failed = res.findings, res.failed
    finally:
        st.close()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "baseline_s": {"median": statistics.median(base), "min": min(base)},
        "analyzers_s": {
            n: {"median": statistics.median(v), "min": min(v)} for n, v in per.items() if v
        },
        "total_s": {"median": statistics.median(totals), "min": min(totals)},
        "ratio_to_baseline": statistics.median(totals) / statistics.median(base),
        "target_s": 5.0,
        "peak_rss_mb": round(rss_mb),
        "found": found_faults(findings),
        "failed": failed,
        "findings": len(findings),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--gpu-samples", type=int, default=2_000_000)
    ap.add_argument("--replicas", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the store")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    home = os.path.join(out_dir, f"regressions-{args.requests}-{args.gpu_samples}")
    built = None
    if not (args.keep and os.path.isdir(home)):
        shutil.rmtree(home, ignore_errors=True)
        built = build(home, args.requests, args.gpu_samples, args.replicas)
    try:
        res = run(home, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    res.update(requests=args.requests, gpu_samples=args.gpu_samples, build_s=built)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{args.requests:,} requests, {args.gpu_samples:,} GPU samples; medians of {args.repeat}")
    print(f"{'analyzer':<28}{'median s':>10}{'min s':>10}")
    print(
        f"{'baseline quantile scan':<28}"
        f"{res['baseline_s']['median']:>10.3f}{res['baseline_s']['min']:>10.3f}"
    )
    for n, v in sorted(res["analyzers_s"].items(), key=lambda kv: -kv[1]["median"]):
        print(f"{n:<28}{v['median']:>10.3f}{v['min']:>10.3f}")
    tot = res["total_s"]
    print(
        f"{'all of them':<28}{tot['median']:>10.3f}{tot['min']:>10.3f}   target 5 s: "
        f"{'met' if tot['median'] <= 5 else 'missed'}; {res['ratio_to_baseline']:.1f}× baseline; "
        f"peak RSS {res['peak_rss_mb']} MB"
    )
    print(
        "faults found: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in res["found"].items())
    )
    if res["failed"]:
        print("failed: " + json.dumps(res["failed"]))


if __name__ == "__main__":
    main()
