"""Benchmark ``infdebug ingest`` against other ways of loading the same JSONL file.

What it measures
----------------
One JSONL file of ``request`` records in infdebug's contract (see ``infdebug/schema.py``) is
generated (or reused), read once to warm the page cache, and then loaded by each method in
its own subprocess, ``--repeat`` times each:

1. ``infdebug ingest``: ``ingest_paths`` into a fresh embedded store (a new temp dir for
   every repetition). Only the ``ingest_paths`` call is timed; opening the store (chDB
   start + schema migration) is reported separately.
2. ``duckdb read_json``: ``CREATE TABLE t AS SELECT * FROM read_json(...)`` into an
   in-memory DuckDB (only the CREATE is timed; a ``count(*)`` checks the rows after).
3. ``pandas read_json``: ``pd.read_json(path, lines=True)``. It is slow, so by default it
   reads only the first 10% of the lines (written to a separate file); its seconds are
   for that slice, its MB/s and rows/s are rates and compare directly. ``--full-pandas``
   reads the whole file.
4. ``json.loads loop``: ``for line in f: json.loads(line)``, the floor for pure Python.
5. ``read lines only``: ``for line in f: pass`` in binary mode, the floor for any reader.

Each method runs in a separate child process (``--method NAME``, an internal mode) so that
its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the parent collects one JSON
result from each child. The table shows median and min wall seconds, MB/s and rows/s (from
the median), peak RSS, and MB/s relative to DuckDB's ``read_json`` measured in the same run.

Targets: infdebug ingest >= 1.5x DuckDB read_json, and peak RSS < 2 GB for 1 GB of input.

Reproduce
---------
    pip install -e '.[bench]'            # duckdb, pandas
    python bench/ingest.py               # 100k records, ~1 GB under bench/out/ (gitignored)
    python bench/ingest.py --records 5000 --repeat 2          # a quick smoke run
    python bench/ingest.py --file bench/out/requests_100000.jsonl --keep --json

The generated file is deleted at the end unless ``--keep`` is given or it was named with
``--file``; a file that already exists with the right number of records is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(BENCH_DIR, "out")
RESULT_PREFIX = "BENCH_RESULT "

from ingest_data import (  # noqa: E402 - bench/ is not a package; run from the repo root
    count_lines,
    generate_file,
    warm_read,
    write_head,
)

METHODS: tuple[str, ...] = (
    "read_lines",
    "json_loads",
    "duckdb",
    "duckdb_file",
    "infdebug",
    "pandas",
)
LABELS: dict[str, str] = {
    "infdebug": "infdebug ingest",
    "duckdb": "duckdb read_json",
    "duckdb_file": "duckdb read_json → file",
    "pandas": "pandas read_json",
    "json_loads": "json.loads loop",
    "read_lines": "read lines only",
}


# --- methods (run in a child process) ------------------------------------------------------


@dataclass
class MethodResult:
    method: str
    path: str
    bytes: int
    rows: int
    times: list[float] = field(default_factory=list)
    peak_rss_kib: int = 0  # VmHWM on Linux, else ru_maxrss
    ru_maxrss_kib: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def run_infdebug(
    path: str, rows: int, repeat: int, tmp_root: str | None, res: MethodResult
) -> None:
    from infdebug.collectors.ingest import ingest_paths
    from infdebug.store import open_store

    open_s: list[float] = []
    via: set[str] = set()
    for _ in range(repeat):
        tmpdir = tempfile.mkdtemp(prefix="infdebug-bench-", dir=tmp_root)
        try:
            t = time.perf_counter()
            st = open_store(home=tmpdir)
            open_s.append(time.perf_counter() - t)
            res.extra.setdefault("rss_after_open_mb", round(current_rss_kib() * 1024 / 1e6, 1))
            try:
                rejects = os.path.join(tmpdir, "rejects.jsonl")
                t = time.perf_counter()
                rep = ingest_paths(st, [path], rejects_path=rejects)
                res.times.append(time.perf_counter() - t)
                via.update(f.path_taken or f.status for f in rep.files)
                if rep.rows["request"] != rows or rep.rejected != 0 or rep.errors:
                    detail = json.dumps(rep.to_json())
                    if os.path.exists(rejects):
                        with open(rejects, encoding="utf-8", errors="replace") as fh:
                            detail += "\nfirst rejects:\n" + "".join(
                                fh.readline()[:2000] for _ in range(5)
                            )
                    raise RuntimeError(
                        f"ingest check failed: rows={dict(rep.rows)} (expected request={rows}), "
                        f"rejected={rep.rejected}\n{detail}"
                    )
            finally:
                st.close()
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    res.extra["store_open_s"] = open_s
    res.extra["via"] = sorted(via)


def run_duckdb(
    path: str,
    rows: int,
    repeat: int,
    res: MethodResult,
    tmpdir: str | None = None,
    persistent: bool = False,
) -> None:
    """The baseline: an in-memory DuckDB table (``persistent``: a database file, checkpointed,
    which is what infdebug's store does: data on disk, compressed, surviving the process)."""
    import duckdb

    quoted = path.replace("'", "''")
    for _ in range(repeat):
        d = tempfile.mkdtemp(prefix="duckdb-bench-", dir=tmpdir) if persistent else None
        con = duckdb.connect(os.path.join(d, "db.duckdb") if d else ":memory:")
        try:
            t = time.perf_counter()
            con.execute(
                f"CREATE TABLE t AS SELECT * FROM read_json('{quoted}', format='newline_delimited')"
            )
            if persistent:
                con.execute("CHECKPOINT")
            res.times.append(time.perf_counter() - t)
            row = con.execute("SELECT count(*) FROM t").fetchone()
            got = row[0] if row else None
            if got != rows:
                raise RuntimeError(f"duckdb loaded {got} rows, expected {rows}")
            threads = con.execute("SELECT current_setting('threads')").fetchone()
            res.extra["threads"] = threads[0] if threads else None
        finally:
            con.close()
            if d:
                shutil.rmtree(d, ignore_errors=True)


def run_pandas(path: str, rows: int, repeat: int, res: MethodResult) -> None:
    import pandas as pd

    for _ in range(repeat):
        t = time.perf_counter()
        df = pd.read_json(path, lines=True)
        res.times.append(time.perf_counter() - t)
        if len(df) != rows:
            raise RuntimeError(f"pandas read {len(df)} rows, expected {rows}")
        del df


def run_json_loads(path: str, rows: int, repeat: int, res: MethodResult) -> None:
    for _ in range(repeat):
        n = 0
        t = time.perf_counter()
        with open(path, "rb") as fh:
            for line in fh:
                json.loads(line)
                n += 1
        res.times.append(time.perf_counter() - t)
        if n != rows:
            raise RuntimeError(f"json.loads read {n} lines, expected {rows}")


def run_read_lines(path: str, rows: int, repeat: int, res: MethodResult) -> None:
    for _ in range(repeat):
        n = 0
        t = time.perf_counter()
        with open(path, "rb") as fh:
            for _line in fh:
                n += 1
        res.times.append(time.perf_counter() - t)
        if n != rows:
            raise RuntimeError(f"read {n} lines, expected {rows}")


def current_rss_kib() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_kib() -> tuple[int, int]:
    """This process's peak RSS in KiB, and ``ru_maxrss`` as the kernel reports it.

    ``ru_maxrss`` survives ``execve``: a child spawned by a parent that once held more memory
    reports at least the parent's high-water mark (with vfork, the parent's peak). Linux's
    ``VmHWM`` belongs to the address space the child got at exec, so it is used when present.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), maxrss
    except (OSError, ValueError, IndexError):
        pass
    return maxrss, maxrss


def child_main(args: argparse.Namespace) -> int:
    """Internal mode: run one method on one file, print one JSON result line."""
    path = os.path.abspath(args.file)
    rows = args.records
    res = MethodResult(method=args.method, path=path, bytes=os.path.getsize(path), rows=rows)
    try:
        if args.method == "infdebug":
            run_infdebug(path, rows, args.repeat, args.tmpdir, res)
        elif args.method == "duckdb":
            run_duckdb(path, rows, args.repeat, res)
        elif args.method == "duckdb_file":
            run_duckdb(path, rows, args.repeat, res, args.tmpdir, persistent=True)
        elif args.method == "pandas":
            run_pandas(path, rows, args.repeat, res)
        elif args.method == "json_loads":
            run_json_loads(path, rows, args.repeat, res)
        elif args.method == "read_lines":
            run_read_lines(path, rows, args.repeat, res)
        else:
            raise ValueError(f"unknown method {args.method!r}")
    except Exception as e:  # reported by the parent, with the text
        res.error = f"{type(e).__name__}: {e}"
    res.peak_rss_kib, res.ru_maxrss_kib = peak_rss_kib()
    print(RESULT_PREFIX + json.dumps(asdict(res)), flush=True)
    return 0


# --- parent --------------------------------------------------------------------------------


def run_child(method: str, path: str, rows: int, repeat: int, tmp_root: str | None) -> MethodResult:
    cmd = [
        sys.executable, os.path.abspath(__file__),
        "--method", method, "--file", path, "--records", str(rows), "--repeat", str(repeat),
    ]  # fmt: skip
    if tmp_root:
        cmd += ["--tmpdir", tmp_root]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return MethodResult(**json.loads(line[len(RESULT_PREFIX) :]))
    tail = (proc.stderr or proc.stdout)[-3000:]
    return MethodResult(
        method=method, path=path, bytes=os.path.getsize(path), rows=rows,
        error=f"child exited with {proc.returncode} and no result:\n{tail}",
    )  # fmt: skip


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # Versions from package metadata: importing chdb here would load its engine into the
    # parent, and a child's ru_maxrss starts from the parent's high-water mark.
    for dist in ("chdb", "duckdb", "pandas", "msgspec", "numpy"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    return info


def summarise(r: MethodResult) -> dict[str, Any]:
    d: dict[str, Any] = {
        "method": r.method,
        "label": LABELS.get(r.method, r.method),
        "path": r.path,
        "bytes": r.bytes,
        "rows": r.rows,
        "times_s": [round(t, 4) for t in r.times],
        "peak_rss_mb": round(r.peak_rss_kib * 1024 / 1e6, 1),
        "ru_maxrss_mb": round(r.ru_maxrss_kib * 1024 / 1e6, 1),
        "extra": r.extra,
        "error": r.error,
    }
    if r.times and not r.error:
        med = statistics.median(r.times)
        d.update(
            median_s=round(med, 4),
            min_s=round(min(r.times), 4),
            mb_per_s=round(r.bytes / 1e6 / med, 1),
            rows_per_s=round(r.rows / med, 1),
        )
    return d


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--records", type=int, default=100_000, help="request records in the file (default 100000)"
    )
    p.add_argument(
        "--file",
        help="JSONL file to use; generated there if missing (default bench/out/requests_N.jsonl)",
    )
    p.add_argument("--keep", action="store_true", help="keep the generated files afterwards")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per method (default 3)")
    p.add_argument(
        "--json", action="store_true", help="print the results as JSON instead of a table"
    )
    p.add_argument(
        "--full-pandas",
        action="store_true",
        help="run pandas on the whole file, not the first 10%%",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset, run in this order (default {','.join(METHODS)})",
    )
    p.add_argument(
        "--tmpdir", help="where the per-repetition infdebug stores go (default: system temp)"
    )
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # internal: child mode
    args = p.parse_args(argv)
    if args.records < 1 or args.repeat < 1:
        p.error("--records and --repeat must be >= 1")
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown and not args.method:
        p.error(f"unknown methods: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.method:
        if not args.file:
            raise SystemExit("--method needs --file")
        return child_main(args)

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console()
    if not out.is_terminal:  # piped to a file: don't squeeze the table into 80 columns
        out = Console(width=120)
    err = Console(stderr=True)

    def log(msg: str) -> None:
        (err if args.json else out).print(msg, highlight=False, soft_wrap=True)

    machine = machine_info()
    if not args.json:
        out.print(
            f"[bold]machine[/]: nproc={machine['nproc']} cpu={machine['cpu']!s} "
            f"python={machine['python']} "
            f"chdb={machine['chdb']} duckdb={machine['duckdb']} pandas={machine['pandas']} "
            f"msgspec={machine['msgspec']}",
            highlight=False,
            soft_wrap=True,
        )

    n = args.records
    named = args.file is not None
    path = os.path.abspath(args.file or os.path.join(OUT_DIR, f"requests_{n}.jsonl"))
    generated_s: float | None = None
    reused = False
    if os.path.exists(path):
        have = count_lines(path)
        if have == n:
            reused = True
            log(f"reusing {path} ({n:,} records, {os.path.getsize(path) / 1e6:,.1f} MB)")
        elif named:
            log(
                f"[red]{path} has {have:,} records, not {n:,}[/]: "
                f"pass --records {have} to use it, or delete it"
            )
            return 2
    if not reused:
        log(f"generating {n:,} request records into {path} …")
        generated_s = generate_file(path, n, seed=args.seed, log=log)
        log(f"generated {os.path.getsize(path) / 1e6:,.1f} MB in {generated_s:.1f} s")
    size = os.path.getsize(path)
    warm_s = warm_read(path)
    log(f"warm-up read: {size / 1e6:,.1f} MB in {warm_s:.2f} s")

    to_delete: list[str] = []
    if not reused and not named and not args.keep:
        to_delete.append(path)
    methods = [m for m in args.methods.split(",") if m]
    results: list[dict[str, Any]] = []
    pandas_note = ""
    try:
        for m in methods:
            mpath, mrows = path, n
            if m == "pandas" and not args.full_pandas:
                mrows = max(1, n // 10)
                mpath = path[: -len(".jsonl")] if path.endswith(".jsonl") else path
                mpath += ".pandas10pct.jsonl"
                write_head(path, mpath, mrows)
                warm_read(mpath)
                if not args.keep:
                    to_delete.append(mpath)
            log(f"running {LABELS[m]} ×{args.repeat} …")
            r = summarise(run_child(m, mpath, mrows, args.repeat, args.tmpdir))
            if m == "pandas" and not args.full_pandas:
                r["slice"] = {"rows": mrows, "bytes": r["bytes"], "of_rows": n, "of_bytes": size}
                if "median_s" in r:
                    r["projected_full_s"] = round(r["median_s"] * size / r["bytes"], 2)
                    pandas_note = (
                        f"pandas read only the first {mrows:,} of {n:,} lines "
                        f"({r['bytes'] / 1e6:,.1f} MB): "
                        "its seconds are for that slice "
                        f"(projected full file ≈ {r['projected_full_s']:.1f} s); "
                        "MB/s and rows/s are rates and compare directly. "
                        "--full-pandas reads it all."
                    )
            if r["error"]:
                log(f"[red]{LABELS[m]} failed[/]:\n{escape(r['error'])}")
            results.append(r)
    finally:
        for f in to_delete:
            with contextlib.suppress(OSError):
                os.remove(f)

    by = {r["method"]: r for r in results}
    duck = by.get("duckdb", {}).get("mb_per_s")
    for r in results:
        r["x_duckdb"] = round(r["mb_per_s"] / duck, 2) if duck and "mb_per_s" in r else None
    ing = by.get("infdebug", {})
    ratio = ing.get("x_duckdb")
    rss = ing.get("peak_rss_mb")
    summary_line = (
        f"infdebug ingest / DuckDB read_json = {f'{ratio:.2f}×' if ratio is not None else 'n/a'} "
        f"(target >= 1.5×); peak RSS {f'{rss:,.0f}' if rss is not None else 'n/a'} MB "
        f"for {size / 1e6:,.0f} MB of input (target < 2 GB for 1 GB)"
    )
    summary = {
        "infdebug_over_duckdb": ratio,
        "infdebug_peak_rss_mb": rss,
        "input_mb": round(size / 1e6, 1),
        "rss_per_input": round(rss / (size / 1e6), 2) if rss else None,
        "line": summary_line,
    }

    if args.json:
        doc = {
            "machine": machine,
            "file": {
                "path": path,
                "records": n,
                "bytes": size,
                "reused": reused,
                "generated_s": generated_s,
            },
            "warm_read_s": round(warm_s, 3),
            "repeat": args.repeat,
            "results": results,
            "summary": summary,
        }
        print(json.dumps(doc, indent=2))
        return 0 if all(not r["error"] for r in results) else 1

    table = Table(title=f"{n:,} request records, {size / 1e6:,.1f} MB, {args.repeat} repetitions")
    for col in ("method", "median s", "min s", "MB/s", "rows/s", "peak RSS MB", "× DuckDB"):
        if col == "method":
            table.add_column(col, no_wrap=True)
        else:
            table.add_column(col, justify="right")
    for r in results:
        label = r["label"] + (" (10% slice)" if "slice" in r else "")
        if r["error"]:
            table.add_row(label, "[red]failed[/]", "", "", "", f"{r['peak_rss_mb']:,.0f}", "")
            continue
        table.add_row(
            label,
            f"{r['median_s']:.3f}",
            f"{r['min_s']:.3f}",
            f"{r['mb_per_s']:,.1f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['x_duckdb']:.2f}×" if r["x_duckdb"] is not None else "n/a",
        )
    out.print(table)
    if "store_open_s" in ing.get("extra", {}):
        opens = ing["extra"]["store_open_s"]
        out.print(
            f"infdebug: store open + migrate {statistics.median(opens):.3f} s "
            "(median, not timed above), "
            f"RSS {ing['extra'].get('rss_after_open_mb', 0):,.0f} MB after it; "
            f"path taken: {', '.join(ing['extra'].get('via', [])) or 'n/a'}",
            highlight=False,
            soft_wrap=True,
        )
    if pandas_note:
        out.print(pandas_note, highlight=False, soft_wrap=True)
    out.print(f"[bold]{summary_line}[/]", highlight=False, soft_wrap=True)
    return 0 if all(not r["error"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
