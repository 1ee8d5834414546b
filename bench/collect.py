"""Benchmark ``infdebug collect logs --follow`` (the tailer) on a growing JSONL file against
``infdebug ingest`` of the same file, in the same run.

What it measures
----------------
A file of contract ``request`` records of realistic size (512 prompt and 256 output token
IDs, their text, 256 token times: about 10 KB a record, from bench/ingest_data.py) is
generated once (or reused) under ``bench/out/``. Then, ``--repeat`` times each, every run
in a fresh store (a new temporary ``INFDEBUG_HOME``) and fresh processes:

1. ``ingest``: ``infdebug ingest FILE --json`` in a new process. Reported: records/s over
   the process's wall time (Python start, chDB start and migrations included), and over
   the seconds ingest itself reports (``ingest_paths`` only).
2. ``tailer`` (once per ``--modes``: ``release``, the default, opens the embedded store for
   each poll and releases it between polls; ``hold`` keeps it open): ``infdebug collect logs
   DIR --follow`` is started on an empty directory and waited for until its first poll
   says it is up to date; then this process appends the file's records to ``DIR/app.jsonl``
   in chunks of ``--chunk`` records spread evenly over ``--write-seconds`` (default 3 s, a
   few polls; 0: as fast as it can), flushing each chunk, while the tailer follows.
   Reported: records/s from the first write until the tailer's progress line says every
   record is loaded (its sustained rate when the writer outruns it, the writer's when it
   keeps up: ``lag_s``, from the last write to the last load, tells which), and the
   writer's own rate. The
   store is then checked: as many rows as records, none twice.

The tailer reads a grown file from where it stopped: its new lines are validated by the
contract decoder in Python and loaded from a spill file (the ingestor's careful path), where
``ingest`` of a whole new file lets ClickHouse read it directly (the fast path). The
difference between the two rates is mostly that.

Reproduce
---------
    python bench/collect.py                                  # 200k records (~2 GB), 3 repeats
    python bench/collect.py --records 20000 --repeat 3       # a modest run (~200 MB)
    python bench/collect.py --records 20000 --write-seconds 10 --modes release --json

The generated file is kept under bench/out/ (gitignored) and reused by later runs with
the same ``--records``.

OTLP
----
``python bench/collect.py otlp [options]`` benchmarks ``infdebug collect otlp`` instead: 16
simulated replicas pushing vLLM-shaped spans at increasing rates, the sustained rate, the
503s and the ingest lag, against ``infdebug ingest`` of the same records (bench/collect_otlp.py,
whose docstring says how each number is measured; ``python bench/collect.py otlp --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
OUT_DIR = os.path.join(BENCH_DIR, "out")
sys.path.insert(0, BENCH_DIR)

from ingest_data import count_lines, generate_file  # noqa: E402 - bench/ is not a package

IN_ALL = re.compile(rb"([\d,]+) in all")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "INFDEBUG_CLICKHOUSE_URL"}
    env["INFDEBUG_HOME"] = home
    return env


def _cli() -> list[str]:
    return [sys.executable, "-m", "infdebug.cli"]


def _check_store(home: str, records: int) -> None:
    """As many rows as records, none twice (in a fresh process: the store is free)."""
    code = (
        "import sys; from infdebug.store import open_store\n"
        "st = open_store(home=sys.argv[1])\n"
        "_, r = st.query('SELECT count(), uniqExact(request_id) FROM requests')\n"
        "print(r[0][0], r[0][1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, home], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    rows, unique = int(out[0]), int(out[1])
    if rows != records or unique != records:
        raise RuntimeError(f"store check failed: {rows} rows, {unique} IDs, {records} written")


def run_ingest(path: str, records: int, tmp_root: str | None) -> dict[str, float]:
    home = tempfile.mkdtemp(prefix="infdebug-bench-ingest-", dir=tmp_root)
    try:
        t = time.perf_counter()
        p = subprocess.run(
            [*_cli(), "ingest", path, "--json"],
            env=_env(home),
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"ingest failed ({p.returncode}): {p.stdout[-2000:]}{p.stderr}")
        doc = json.loads(p.stdout)
        if doc["rows"]["request"] != records:
            raise RuntimeError(f"ingest loaded {doc['rows']}, expected {records}")
        _check_store(home, records)
        return {"wall_s": wall, "ingest_s": float(doc["seconds"])}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _chunks(path: str, chunk: int) -> list[bytes]:
    out, buf, n = [], bytearray(), 0
    with open(path, "rb") as fh:
        for line in fh:
            buf += line
            n += 1
            if n == chunk:
                out.append(bytes(buf))
                buf, n = bytearray(), 0
    if buf:
        out.append(bytes(buf))
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _loaded(err_path: str) -> int:
    found = IN_ALL.findall(_read(err_path))
    return int(found[-1].replace(b",", b"")) if found else 0


def _wait_for(cond: Any, what: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_tailer(
    chunks: list[bytes],
    records: int,
    mode: str,
    interval: float,
    write_rate: float,
    chunk: int,
    tmp_root: str | None,
) -> dict[str, float]:
    home = tempfile.mkdtemp(prefix="infdebug-bench-tail-", dir=tmp_root)
    logs = os.path.join(home, "logs")
    os.makedirs(logs)
    err_path = os.path.join(home, "collect.err")
    cmd = [*_cli(), "collect", "logs", logs, "--follow", "--interval", str(interval), "--json"]
    cmd.append("--hold" if mode == "hold" else "--release")
    store_home = os.path.join(home, "store")
    try:
        with open(err_path, "wb") as err, open(os.path.join(home, "collect.out"), "wb") as out:
            proc = subprocess.Popen(cmd, env=_env(store_home), stdout=out, stderr=err, cwd=REPO)
        try:
            _wait_for(lambda: b"up to date" in _read(err_path), "the tailer", 120)
            t0 = time.perf_counter()
            with open(os.path.join(logs, "app.jsonl"), "ab") as fh:
                for i, piece in enumerate(chunks):
                    if write_rate > 0:
                        due = t0 + i * chunk / write_rate
                        if (ahead := due - time.perf_counter()) > 0:
                            time.sleep(ahead)
                    fh.write(piece)
                    fh.flush()
            t_written = time.perf_counter()
            last = [0, t_written]

            def done() -> bool:
                n = _loaded(err_path)
                if n != last[0]:
                    last[:] = [n, time.perf_counter()]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the tailer exited: {_read(err_path)[-2000:].decode(errors='replace')}"
                    )
                return n >= records

            _wait_for(done, "the tailer to load every record", 3600)
            t_loaded = last[1]
            proc.send_signal(signal.SIGTERM)
            if proc.wait(120) != 0:
                raise RuntimeError(
                    f"the tailer failed: {_read(err_path)[-2000:].decode(errors='replace')}"
                )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _check_store(store_home, records)
        return {
            "seconds": t_loaded - t0,
            "write_s": t_written - t0,
            "lag_s": max(0.0, t_loaded - t_written),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    if sys.argv[1:2] == ["otlp"]:
        from collect_otlp import main as otlp_main

        return otlp_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="release,hold", help="tailer store modes to run")
    ap.add_argument("--interval", type=float, default=1.0, help="the tailer's poll interval")
    ap.add_argument(
        "--write-seconds",
        type=float,
        default=3.0,
        help="spread the writes over this many seconds (0: as fast as it can)",
    )
    ap.add_argument("--chunk", type=int, default=500, help="records per write")
    ap.add_argument("--tmpdir", default=None, help="where the temporary stores go")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    path = os.path.join(OUT_DIR, f"collect_{args.records}.jsonl")
    if not (os.path.exists(path) and count_lines(path) == args.records):
        log(f"generating {args.records:,} records into {path} ...")
        generate_file(path, args.records, log=log)
    size = os.path.getsize(path)
    chunks = _chunks(path, args.chunk)
    log(f"{args.records:,} records, {size / 1e6:.0f} MB ({size / args.records / 1e3:.1f} KB each)")

    results: dict[str, list[dict[str, float]]] = {"ingest": []}
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        results[f"tailer ({m})"] = []
    for r in range(args.repeat):
        results["ingest"].append(run_ingest(path, args.records, args.tmpdir))
        log(f"  run {r + 1}: ingest {results['ingest'][-1]}")
        for m in modes:
            got = run_tailer(
                chunks,
                args.records,
                m,
                args.interval,
                args.records / args.write_seconds if args.write_seconds > 0 else 0.0,
                args.chunk,
                args.tmpdir,
            )
            results[f"tailer ({m})"].append(got)
            log(f"  run {r + 1}: tailer ({m}) {got}")

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in runs)

    n = args.records
    summary: dict[str, Any] = {
        "records": n,
        "bytes": size,
        "repeat": args.repeat,
        "interval_s": args.interval,
        "write_seconds": args.write_seconds,
        "ingest": {
            "wall_s": med(results["ingest"], "wall_s"),
            "records_per_s": n / med(results["ingest"], "wall_s"),
            "records_per_s_ingest_only": n / med(results["ingest"], "ingest_s"),
        },
    }
    for m in modes:
        runs = results[f"tailer ({m})"]
        summary[f"tailer_{m}"] = {
            "seconds": med(runs, "seconds"),
            "records_per_s": n / med(runs, "seconds"),
            "writer_records_per_s": n / max(med(runs, "write_s"), 1e-9),
            "lag_s": med(runs, "lag_s"),
        }
    summary["runs"] = results
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    ing = summary["ingest"]
    print(f"{n:,} records, {size / 1e6:.0f} MB; medians of {args.repeat}")
    print(
        f"  infdebug ingest          {ing['records_per_s']:>9,.0f} records/s "
        f"({ing['wall_s']:.2f} s wall; {ing['records_per_s_ingest_only']:,.0f}/s ingest only)"
    )
    for m in modes:
        t = summary[f"tailer_{m}"]
        print(
            f"  collect logs -f ({m:7}) {t['records_per_s']:>9,.0f} records/s "
            f"({t['seconds']:.2f} s; writer {t['writer_records_per_s']:,.0f}/s, "
            f"lag {t['lag_s']:.2f} s) = {t['records_per_s'] / ing['records_per_s']:.2f}x ingest"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
