"""Benchmark the incident dashboard (``infdebug dashboard``) in a real browser over N requests.

What it measures
----------------
A store of ``--requests`` rows (default 1,000,000; ``bench/out/dashboard-store-<N>/``, reused
when it already holds the right rows, kept with ``--keep-store``) is filled by ClickHouse
itself (``INSERT … SELECT`` over ``numbers()``): 16 replicas (r14, r15 a ``canary``
deployment whose time per output token is 15% higher), one day of arrivals with a diurnal
swing, queue time growing with the load, TTFT = queue + prefill (growing with the prompt),
log-normal prompt (median 1,500) and output (median 200, cap 2,048 → ``length``) token
counts, per-token times ``token_times_s`` for every request (first token at TTFT, then
log-normal gaps around the request's TPOT of ~30 ms; e2e is the last token), prompt IDs on
1% (32 shared system prompts and a random tail), 0.1% errors, request IDs ``req-<16 hex>``;
GPU samples at 1 Hz per replica over the day (1,382,400 rows: power, temperature, SM clock,
utilisation following the load, ``power_cap`` when power nears the limit); and lifecycle
events per replica.

Baseline (in this process, on the same store, before the dashboard opens it: chDB admits one
process per store): a plain ``SELECT count(), min(t_arrival), max(t_arrival) FROM requests``,
each ``q_dashboard`` function the overview calls (``data_span``, ``fleet_bins``,
``unit_table``, ``gpu_starts`` + ``gpu_bins``) for the three windows the browser visits (all
data, last 6 h, one replica), the request explorer's ``search`` by ID (+ ``request``,
``gpu_during``), and one ``analyze`` run over all data (what the findings feed waits for),
per analyzer.

Browser (headless Chromium, tests/dashboard_probe.py's): each of ``--repeat`` rounds starts
the dashboard twice, and every figure is a fresh page load (or an action on one); a page's
run is over when the app's run marker (``ui.run_marker``, drawn last) has a new number:

- ``overview at start``: the first dashboard, opened as soon as it answers: its warm-up
  analysis of the whole store (``Runtime.warm``) is still running;
- ``overview first render``: the second, opened once that analysis is done (its page queries
  still cold); from navigation until the findings feed's caption ("error ·" / "No findings
  over this window") is shown by a finished run; ``(content)``: until the run that drew the
  rest (the GPU section) is over; ``overview reload``: the same again (every query cached);
- ``filter → last 6 h``, then ``filter → all data`` (back: cached), then on a fresh load
  ``filter: replica r3`` (the replicas multiselect), each timed from the click on the option
  until the run showing the window's ``requests`` count is over; ``+ findings``: until the
  feed's caption for that window is back (its analysis done);
- ``search by ID``: on /requests (``requests page``: its list shown), an ID typed (another
  each round), timed from the Enter until a finished run shows its ``### `ID``` header.

The page's text is read with ``document.body.textContent``: WebDriver's ``element.text``
(probe.body) takes 0.5–2.5 s on the overview, which would blur every figure.

The dashboard runs under a thin wrapper (``--serve``) that writes a trace
(``bench/out/dashboard/trace.jsonl``): every store call (``SharedStore.query``: its wait for
the store lock and its execution, by thread), every ``q_dashboard`` and cached ``data``
function, the chart builders and ``st.altair_chart``, each full run (app.py's start, the
view's ``ui.start``, the run marker) and each analysis (wall and process CPU, per analyzer,
how often a page asked for it meanwhile). Each figure is split into: before its first run
(the browser, Streamlit taking the rerun, app.py), its runs (of which: the page's queries,
their wait for the lock the analysis worker holds, charts), and after its last run (sending
the page, the browser drawing it).

Targets (the issue's): overview first render ≤ 3 s, filter change ≤ 1 s, search by ID
≤ 0.5 s, on 1M requests. Screenshots land in ``bench/out/dashboard/``.

Reproduce
---------
    python bench/dashboard.py                                # 1M requests, 3 rounds
    python bench/dashboard.py --requests 100000 --repeat 1 --keep-store   # quick
    python bench/dashboard.py --keep-store --json > out.json # keep the store for the next run

Needs Debian's ``chromium`` and ``chromium-driver`` (or INFDEBUG_CHROMIUM /
INFDEBUG_CHROMEDRIVER) and selenium, streamlit (``pip install -e '.[dashboard]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

T0 = 1_764_000_000.0
DAY_S = 86_400
REPLICAS = 16
CANARY = 2  # the last two replicas
CHUNK = 250_000  # request rows per INSERT (each ~2 MB of token times per 1k rows)
GPU_ROWS = REPLICAS * DAY_S
REPLICA = "r3"  # the one picked in the replicas filter
OUT = os.path.join(REPO, "bench", "out")
SHOTS = os.path.join(OUT, "dashboard")
TARGETS = {"overview first render": 3.0, "filter change": 1.0, "search by ID": 0.5}
FEED_DONE = ("error ·", "No findings over this window")
FEED_RUNNING = "analysers running over this window"
RANGE_6H = 6 * 3600
# what the overview queries on all data (the sidebar's replica list is the same unit_table)
OVERVIEW_QUERIES = (
    "data_span",
    "fleet_bins [all data]",
    "unit_table [all data]",
    "gpu_starts [all data]",
    "gpu_bins [all data]",
)

# A uniform in (0, 1) from the row number (or other keys) and a salt; a standard normal.
_U = "((cityHash64({key}, {salt}) % 1000000 + 0.5) / 1000000)"


def _u(salt: int, key: str = "number") -> str:
    return _U.format(key=key, salt=salt)


def _z(salt: int, key: str = "number") -> str:
    return f"(sqrt(-2 * log({_u(salt, key)})) * cos(2 * pi() * {_u(salt + 1, key)}))"


# --- the store ------------------------------------------------------------------------------


def _requests_sql(n: int) -> str:
    """The INSERT of request rows [start, start + count) (bound), generated by ClickHouse."""
    x = f"((number + {_u(1)}) / {n})"
    # the diurnal swing of workload.py: arrivals densest at x = 0 and 1, sparsest at 0.5
    load = f"((1 + cos(2 * pi() * {x})) / 2)"
    prompt = f"toUInt32(least(32768, greatest(16, round(exp(log(1500) + 0.9 * {_z(2)})))))"
    output = f"toUInt32(least(2048, greatest(1, round(exp(log(200) + 0.8 * {_z(4)})))))"
    system = "(cityHash64(number, 7) % 32)"
    ids = (
        f"if({_u(6)} < 0.01, arrayConcat("
        f"arrayMap(i -> toUInt32(cityHash64({system}, i) % 128000), range(512 + {system} * 48)), "
        f"arrayMap(i -> toUInt32(cityHash64(number, i, 8) % 128000), "
        f"range(64 + cityHash64(number, 9) % 537))), [])"
    )
    canary = f"(number % {REPLICAS} >= {REPLICAS - CANARY})"
    # token k's gap: the request's TPOT times a log-normal (sigma 0.25) of (row, k)
    gap = (
        "tpot * exp(0.25 * sqrt(-2 * log((cityHash64(number, i, 20) % 1000000 + 0.5) / 1000000))"
        " * cos(2 * pi() * (cityHash64(number, i, 21) % 1000000 + 0.5) / 1000000))"
    )
    return f"""
    INSERT INTO requests (request_id, replica, deployment, model, engine, engine_version,
                          tokenizer_fp, template_fp, t_arrival, queue_s, prefill_s, ttft_s,
                          e2e_s, token_times_s, prompt_ids, prompt_tokens, output_tokens,
                          cached_prompt_tokens, finish_reason, error)
    SELECT concat('req-', lower(hex(cityHash64(number, 99)))),
           concat('r', toString(number % {REPLICAS})),
           if({canary}, 'canary', 'prod'), 'llama-3.1-8b', 'vllm',
           if({canary}, '0.11.1', '0.11.0'), 'tok-5c1e0d2a', 'tpl-9b7f3e11',
           t, queue, prefill, ttft, tt[length(tt)], tt,
           ids, if(notEmpty(ids), toUInt32(length(ids)), p), out,
           if({_u(10)} < 0.6, toUInt32(512 * floor({_u(11)} * p / 512)), NULL),
           multiIf(failed, 'error', out >= 2048, 'length', 'stop'),
           if(failed, 'CUDA error: an illegal memory access was encountered', NULL)
    FROM (
        SELECT *, queue + prefill AS ttft,
               arrayCumSum(arrayMap(i -> if(i = 0, queue + prefill, {gap}), range(out))) AS tt
        FROM (
            SELECT number, {T0} + {DAY_S} * ({x} - 0.6 / (2 * pi()) * sin(2 * pi() * {x})) AS t,
                   {prompt} AS p, {output} AS out, {ids} AS ids,
                   0.004 * exp(1.0 * {_z(13)}) * (1 + 4 * pow({load}, 3)) AS queue,
                   greatest(0.01, (0.04 + p * 2e-5) * (1 + 0.3 * {_z(15)})) AS prefill,
                   greatest(0.005, 0.03 * if({canary}, 1.15, 1.0) * (1 + 0.2 * {_z(17)})) AS tpot,
                   {_u(12)} < 0.001 AS failed
            FROM numbers({{start:UInt64}}, {{count:UInt64}})
        )
    )
    """


def _gpu_sql() -> str:
    """GPU samples at 1 Hz per replica over the day, rows [start, start + count)."""
    r = f"(number % {REPLICAS})"
    s = f"intDiv(number, {REPLICAS})"
    load = f"((1 + cos(2 * pi() * {s} / {DAY_S})) / 2)"
    return f"""
    INSERT INTO gpu_samples (t, replica, gpu_index, uuid, power_w, power_limit_w, temp_c,
                             sm_clock_mhz, mem_clock_mhz, util_pct, mem_used_bytes,
                             throttle_reasons, simulated, deployment)
    SELECT t, rep, 0, concat('GPU-', lower(hex(cityHash64({r}, 5)))), power, 700,
           32 + 0.06 * power + 1.5 * {_z(33)}, if(capped, 1755, 1980) + 15 * {_z(35)}, 2619,
           util, toUInt64(62e9 + 8e9 * util / 100), if(capped, ['power_cap'], []), false, dep
    FROM (
        SELECT number, {T0} + {s} + 0.01 * {_u(30)} AS t, concat('r', toString({r})) AS rep,
               if({r} >= {REPLICAS - CANARY}, 'canary', 'prod') AS dep,
               least(100, greatest(0, 35 + 60 * {load} + 6 * {_z(31)})) AS util,
               least(700, 110 + 5.6 * util + 25 * {_z(37)}) AS power, power >= 660 AS capped
        FROM numbers({{start:UInt64}}, {{count:UInt64}})
    )
    """


def _events_sql() -> str:
    return f"""
    INSERT INTO events (t, replica, name, duration_s, since_start_s, deployment, pid)
    SELECT {T0} - 600 + r * 3 + offs[k], concat('r', toString(r)), names[k],
           durs[k], offs[k], if(r >= {REPLICAS - CANARY}, 'canary', 'prod'), toUInt32(1000 + r)
    FROM (SELECT number AS r, ['process_start', 'weights_loaded', 'warmup_done', 'ready'] AS names,
                 [0, 40 + r, 45 + r, 46 + r] AS offs, [NULL, 40 + r, 5, 1] AS durs
          FROM numbers({REPLICAS}))
    ARRAY JOIN arrayEnumerate(names) AS k
    """


def _counts(st: Any) -> tuple[int, int]:
    _, rows = st.query("SELECT (SELECT count() FROM requests), (SELECT count() FROM gpu_samples)")
    return int(rows[0][0]), int(rows[0][1])


def build(home: str, n: int) -> float | None:
    """Fill ``home`` with the store (seconds taken; None: it was there already)."""
    from infdebug.store.base import migrate
    from infdebug.store.client import open_embedded

    if os.path.isdir(home):
        st = open_embedded(home)
        try:
            if _counts(st) == (n, GPU_ROWS):
                print(f"reusing {home} ({n:,} requests)", file=sys.stderr)
                return None
        except Exception:  # not a store of ours: rebuilt
            pass
        finally:
            st.close()
        shutil.rmtree(home)
    st = open_embedded(home)
    t = time.perf_counter()
    try:
        migrate(st)
        sql = _requests_sql(n)
        for start in range(0, n, CHUNK):
            st.command(sql, {"start": start, "count": min(CHUNK, n - start)})
            print(
                f"  {min(n, start + CHUNK):,} requests, {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
            )
        sql = _gpu_sql()
        for start in range(0, GPU_ROWS, 1_000_000):
            st.command(sql, {"start": start, "count": min(1_000_000, GPU_ROWS - start)})
        st.command(_events_sql())
        for table in ("requests", "gpu_samples"):
            st.command(f"OPTIMIZE TABLE {table} FINAL")
        print(f"  built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    finally:
        st.close()
    return time.perf_counter() - t


# --- the baseline: the same queries in this process -----------------------------------------

BASELINE = "SELECT count(), min(t_arrival), max(t_arrival) FROM requests"


def bucket(seconds: float, target: int = 60) -> int:
    """ui.Page.bucket: the chart bucket width the overview uses for a window this long."""
    for w in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if seconds / w <= target:
            return w
    return 86400


def _window_seconds(w: dict[str, Any], t_first: float, t_last: float) -> float:
    lo, hi = max(w["since"], t_first), min(w["until"], t_last + 1)
    return max(1.0, hi - lo)


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def baseline(home: str, repeat: int) -> dict[str, Any]:
    """Every figure the browser run is compared with, and what it needs to know (the span,
    each window's request count, request IDs to search for)."""
    from infdebug.store import q_dashboard as q
    from infdebug.store.client import open_embedded

    st = open_embedded(home)
    res: dict[str, Any] = {"queries": {}}
    try:
        times, _ = _timed(lambda: st.query(BASELINE), repeat)
        res["queries"]["baseline count/min/max"] = times
        span = q.data_span(st)
        res["queries"]["data_span"] = _timed(lambda: q.data_span(st), repeat)[0]
        assert span.t_first is not None and span.t_last is not None
        windows = {
            "all data": {"since": 0.0, "until": 1e11, "replicas": []},
            "last 6 h": {"since": span.t_last - RANGE_6H, "until": 1e11, "replicas": []},
            REPLICA: {"since": 0.0, "until": 1e11, "replicas": [REPLICA]},
        }
        res["counts"] = {}
        for name, w in windows.items():
            width = bucket(_window_seconds(w, span.t_first, span.t_last))
            tag = f" [{name}]"
            res["queries"]["fleet_bins" + tag], bins = _timed(
                lambda w=w, width=width: q.fleet_bins(
                    st, w, width, ttft_budget=1.0, tpot_budget=0.1
                ),
                repeat,
            )
            res["counts"][name] = sum(int(b["requests"]) for b in bins)
            res["queries"]["unit_table" + tag] = _timed(lambda w=w: q.unit_table(st, w), repeat)[0]
            res["queries"]["gpu_starts" + tag], starts = _timed(
                lambda w=w: q.gpu_starts(st, w), repeat
            )
            res["queries"]["gpu_bins" + tag] = _timed(
                lambda w=w, width=width, s=starts: q.gpu_bins(st, w, width, s), repeat
            )[0]
        _, rows = st.query(
            "SELECT request_id FROM requests ORDER BY cityHash64(request_id, 3) LIMIT {k:UInt64}",
            {"k": repeat + 1},
        )
        rids = [str(r[0]) for r in rows]
        res["request_ids"] = rids
        everything = windows["all data"]
        ts = []
        for rid in rids[:repeat]:  # another ID each time, as the browser does
            t = time.perf_counter()
            found = q.search(st, everything, request_id=rid)
            ts.append(time.perf_counter() - t)
            assert len(found) == 1, (rid, found)
        res["queries"]["search by ID"] = ts
        rid = rids[-1]
        res["queries"]["request by ID"], r = _timed(lambda: q.request(st, rid), repeat)
        t0, t1 = float(r["t_arrival"]), float(r["t_arrival"]) + float(r["e2e_s"] or 0)
        res["queries"]["gpu_during"] = _timed(
            lambda: q.gpu_during(st, r["replica"], r["deployment"], t0, t1), repeat
        )[0]
        res["queries"]["default request list"] = _timed(lambda: q.search(st, everything), repeat)[0]
        res["analysis"] = _analysis(st)
        res["span"] = {
            "requests": span.requests,
            "t_first": span.t_first,
            "t_last": span.t_last,
            "gpu_samples": span.gpu_samples,
        }
        res["windows"] = windows
    finally:
        st.close()
    return res


def _analysis(st: Any) -> dict[str, Any]:
    """One ``analyze`` over all data, as the dashboard's worker runs it: total and per
    analyzer seconds, and the findings by severity."""
    from infdebug.analyzers.base import AnalysisContext, analyze

    t = time.perf_counter()
    out = analyze(AnalysisContext(store=st, since=None, until=None, replicas=None))
    total = time.perf_counter() - t
    sev: dict[str, int] = {}
    for f in out.findings:
        sev[f.severity] = sev.get(f.severity, 0) + 1
    return {
        "total_s": total,
        "per_analyzer_s": out.seconds,
        "findings": sev,
        "kinds": sorted({f.kind for f in out.findings}),
        "failed": out.failed,
    }


# --- the dashboard under a tracer -----------------------------------------------------------


def serve(trace: str, argv: list[str]) -> None:
    """Run ``infdebug ARGV`` (the dashboard) with every store call, q_dashboard function and
    analysis run written to ``trace`` (JSON lines: start, seconds, thread, what)."""
    from infdebug.dashboard import runtime
    from infdebug.store import q_dashboard

    sink = open(trace, "a", buffering=1)  # noqa: SIM115  # the process's lifetime
    guard = threading.Lock()

    def emit(**rec: Any) -> None:
        rec["thread"] = threading.current_thread().name
        with guard:
            sink.write(json.dumps(rec) + "\n")

    def store_call(name: str) -> Callable[..., Any]:
        def call(self: Any, sql: str, *a: Any, **kw: Any) -> Any:
            t0 = time.time()
            with self._lock:
                t1 = time.time()
                try:
                    return getattr(self._store, name)(sql, *a, **kw)
                finally:
                    t2 = time.time()
                    emit(
                        kind="store",
                        t=t0,
                        wait_s=t1 - t0,
                        exec_s=t2 - t1,
                        sql=" ".join(sql.split())[:100],
                    )

        return call

    runtime.SharedStore.query = store_call("query")  # type: ignore[method-assign]
    runtime.SharedStore.command = store_call("command")  # type: ignore[method-assign]

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*a: Any, **kw: Any) -> Any:
            t0 = time.time()
            try:
                return fn(*a, **kw)
            finally:
                emit(kind="fn", t=t0, s=time.time() - t0, fn=name)

        return wrapped

    for name in q_dashboard.__all__:
        fn = getattr(q_dashboard, name)
        if callable(fn) and not isinstance(fn, type):
            setattr(q_dashboard, name, wrap(name, fn))
    analyze = runtime.Runtime._analyze

    def traced_analyze(self: Any, window: dict[str, Any]) -> Any:
        t0, c0 = time.time(), time.process_time()
        res = analyze(self, window)
        emit(
            kind="analysis",
            t=t0,
            s=time.time() - t0,
            process_cpu_s=time.process_time() - c0,  # every thread of the dashboard's
            window=window,
            per_analyzer_s=res.seconds,
        )
        return res

    runtime.Runtime._analyze = traced_analyze  # type: ignore[method-assign]
    ask = runtime.Runtime.analysis

    def traced_ask(self: Any, window: Any) -> Any:  # a page asking (feed, its poll)
        emit(kind="ask", t=time.time())
        return ask(self, window)

    runtime.Runtime.analysis = traced_ask  # type: ignore[method-assign]
    _trace_page(wrap, emit)
    from infdebug.cli import main

    sys.argv = ["infdebug", *argv]
    main()


@contextlib.contextmanager
def dashboard(home: str, trace: str, log: str, timeout: float = 120) -> Iterator[str]:
    """The dashboard on ``home`` under ``serve`` on a free port; yields its URL once healthy
    (tests/dashboard_probe.dashboard, with the tracer)."""
    from tests.dashboard_probe import free_port, running

    port = free_port()
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--serve",
        trace,
        "--",
        "--home",
        home,
        "dashboard",
        "--port",
        str(port),
    ]
    env = {k: v for k, v in os.environ.items() if k != "INFDEBUG_CLICKHOUSE_URL"}
    with (
        open(log, "a") as out,
        running(cmd, port, out=out, log=log, timeout=timeout, cwd=REPO, env=env) as url,
    ):
        yield url


def read_trace(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _trace_page(wrap: Callable[[str, Callable[..., Any]], Any], emit: Callable[..., None]) -> None:
    """Time the page's own work: each full script run (``ui.start`` to ``ui.run_marker``),
    the cached data functions, building the charts and handing them to Streamlit."""
    import streamlit as st

    from infdebug.dashboard import charts, data, feed, tables, ui

    for name in ("span", "fleet_bins", "unit_table", "gpu_bins", "search", "request"):
        setattr(data, name, wrap(f"data.{name}", getattr(data, name)))
    for name, fn in list(vars(charts).items()):
        if callable(fn) and fn.__module__ == charts.__name__ and not name.startswith("_"):
            setattr(charts, name, wrap(f"charts.{name}", fn))
    feed.show = wrap("feed.show", feed.show)
    tables.unit_table_view = wrap("tables.unit_table_view", tables.unit_table_view)
    tables.fleet_series = wrap("tables.fleet_series", tables.fleet_series)
    st.altair_chart = wrap("st.altair_chart", st.altair_chart)
    st.dataframe = wrap("st.dataframe", st.dataframe)
    page_config = st.set_page_config  # the first call of app.py: a run begins

    def traced_page_config(*a: Any, **kw: Any) -> Any:
        emit(kind="app_start", t=time.time())
        return page_config(*a, **kw)

    st.set_page_config = traced_page_config
    start, marker = ui.start, ui.run_marker

    def traced_start(*a: Any, **kw: Any) -> Any:
        emit(kind="run_start", t=time.time())
        return start(*a, **kw)

    def traced_marker() -> None:
        marker()
        emit(kind="run_end", t=time.time())

    ui.start, ui.run_marker = traced_start, traced_marker


def split(trace: list[dict[str, Any]], t0: float, t1: float) -> dict[str, float]:
    """What the dashboard did between ``t0`` and ``t1`` (wall clock, the bench's step):
    before its first script run (page load, session; ``to_app_s`` until app.py starts,
    ``app_to_page_s`` from there to the view's ``ui.start``), its full runs, in them its store
    calls (execution and waiting for the store lock), charts (building the Altair specs and
    ``st.altair_chart``), after its last run (delivery, the browser); the analysis worker's
    store calls; and each traced function's seconds (``fn:``)."""
    out = dict.fromkeys(
        (
            "pre_run_s",
            "runs",
            "script_s",
            "page_query_s",
            "page_lock_wait_s",
            "page_queries",
            "charts_s",
            "after_run_s",
            "worker_query_s",
        ),
        0.0,
    )
    fns: dict[str, float] = {}
    starts = [r["t"] for r in trace if r["kind"] == "run_start" and t0 <= r["t"] <= t1]
    ends = [r["t"] for r in trace if r["kind"] == "run_end" and t0 <= r["t"] <= t1]
    apps = [r["t"] for r in trace if r["kind"] == "app_start" and t0 <= r["t"] <= t1]
    if starts and ends:
        out["pre_run_s"] = starts[0] - t0
        if apps and apps[0] <= starts[0]:
            out["to_app_s"] = apps[0] - t0  # the browser, the server taking the rerun
            out["app_to_page_s"] = starts[0] - apps[0]  # app.py, st.navigation, the view
        out["after_run_s"] = t1 - ends[-1]
        for a in starts:  # each run: its start to the first end after it
            b = next((e for e in ends if e >= a), None)
            if b is not None:
                out["runs"] += 1
                out["script_s"] += b - a
    for r in trace:
        if not (t0 <= r["t"] <= t1):
            continue
        worker = r["thread"].startswith("infdebug-")
        if r["kind"] == "store":
            if worker:
                out["worker_query_s"] += min(r["exec_s"], t1 - r["t"])
            else:
                out["page_query_s"] += r["exec_s"]
                out["page_lock_wait_s"] += r["wait_s"]
                out["page_queries"] += 1
        elif r["kind"] == "fn" and not worker:
            fns[r["fn"]] = fns.get(r["fn"], 0.0) + r["s"]
            if r["fn"].startswith(("charts.", "st.altair_chart")):
                out["charts_s"] += r["s"]
    return {**out, **{f"fn:{k}": v for k, v in sorted(fns.items())}}


# --- the browser ----------------------------------------------------------------------------

_METRIC = """
for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
  const l = m.querySelector('[data-testid="stMetricLabel"]');
  const v = m.querySelector('[data-testid="stMetricValue"]');
  if (l && v && l.innerText.trim() === arguments[0]) return v.innerText.trim();
}
return null;
"""
_HEADER = """
for (const h of document.querySelectorAll('h3')) {
  if (h.innerText.trim() === arguments[0]) return true;
}
return false;
"""
# the app's run marker (ui.run_marker): the number of the session's last finished full run
_RUN = "const e = document.getElementById('infdebug-run'); return e ? e.dataset.run : '0';"


def _js(d: Any, script: str, *args: Any) -> Any:
    try:
        return d.execute_script(script, *args)
    except Exception:  # the page is being replaced
        return None


def run_number(d: Any) -> int:
    return int(_js(d, _RUN) or 0)


def until(
    d: Any, check: Callable[[], bool], what: str, after: int = 0, timeout: float = 600.0
) -> float:
    """Seconds until a full run numbered above ``after`` has finished and ``check()`` holds
    (tests/dashboard_probe.wait_for on anything, not only the page's text)."""
    from tests import dashboard_probe as probe

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if run_number(d) > after and check():
            return time.perf_counter() - t0
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}: page says:\n{probe.body(d)[:3000]}")


def text(d: Any) -> str:
    """The page's text. ``document.body.textContent``: WebDriver's ``element.text``
    (probe.body) takes 0.5–2.5 s on the overview, which would blur every figure."""
    return str(_js(d, "return document.body.textContent") or "")


def feed_done(d: Any) -> bool:
    t = text(d)
    return any(s in t for s in FEED_DONE) and FEED_RUNNING not in t


def select(d: Any, widget: str, label: str, option: str) -> Callable[[], None]:
    """Open the ``widget`` (``stSelectbox``, ``stMultiSelect``) labelled ``label`` and find
    ``option``; returns the click on it (the user's action, which the clock starts at)."""
    from selenium.webdriver.common.by import By

    boxes = d.find_elements(By.CSS_SELECTOR, f'[data-testid="{widget}"]')
    box = next(b for b in boxes if label in b.text)
    box.find_element(By.CSS_SELECTOR, '[role="combobox"], input').click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for o in d.find_elements(By.CSS_SELECTOR, '[role="option"]'):
            if o.text.strip() == option:
                return o.click  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"no option {option!r} under {label!r}")


def typed(d: Any, label: str, value: str) -> Callable[[], None]:
    """Type ``value`` into the text input labelled ``label`` (as probe.type_into); returns
    the Enter that submits it (WebDriver types a character at a time: a user pastes)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = d.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(value)
    return lambda: field.send_keys(Keys.ENTER)


class Round:
    """One round's figures (seconds) and each step's wall-clock span (for the trace)."""

    def __init__(self, d: Any, url: str) -> None:
        self.d, self.url = d, url
        self.out: dict[str, float] = {}
        self.marks: list[tuple[str, float, float]] = []

    def overview(self, name: str) -> None:
        """Load the overview: ``name`` when its findings feed is done, ``name (content)``
        when its first run drew everything else."""
        d = self.d
        w0, t0 = time.time(), time.perf_counter()
        d.get(self.url + "/")
        until(d, lambda: "GPU power, temperature, SM clock" in text(d), f"{name}: content")
        self.out[f"{name} (content)"] = time.perf_counter() - t0
        self.marks.append((f"{name} (content)", w0, time.time()))
        until(d, lambda: feed_done(d), f"{name}: the findings feed")
        self.out[name] = time.perf_counter() - t0
        self.marks.append((name, w0, time.time()))

    def change(self, name: str, prepare: Callable[[], Callable[[], None]], want: str) -> None:
        """A filter change, timed from the click on the option: ``name`` when the run that
        shows ``want`` requests is over, ``name + findings`` when the feed is back too."""
        d = self.d
        act = prepare()
        before = run_number(d)
        w0, t0 = time.time(), time.perf_counter()
        act()
        until(d, lambda: _js(d, _METRIC, "requests") == want, name, after=before)
        self.out[name] = time.perf_counter() - t0
        self.marks.append((name, w0, time.time()))
        until(d, lambda: feed_done(d), f"{name}: the findings feed", after=before)
        self.out[name + " + findings"] = time.perf_counter() - t0
        self.marks.append((name + " + findings", w0, time.time()))

    def search(self, rid: str) -> None:
        """The request explorer's list, then one request by ID (timed from the Enter)."""
        d = self.d
        w0, t0 = time.time(), time.perf_counter()
        d.get(self.url + "/requests")
        until(d, lambda: "select a row" in text(d), "the request list")
        self.out["requests page"] = time.perf_counter() - t0
        self.marks.append(("requests page", w0, time.time()))
        enter = typed(d, "request ID", rid)
        before = run_number(d)
        w0, t0 = time.time(), time.perf_counter()
        enter()
        until(d, lambda: bool(_js(d, _HEADER, rid)), f"request {rid}", after=before)
        self.out["search by ID"] = time.perf_counter() - t0
        self.marks.append(("search by ID", w0, time.time()))


def _analysis_done(trace: str, since: float, timeout: float = 900.0) -> float:
    """Wall-clock time the dashboard started after ``since`` finished its warm-up analysis
    of all data (from the trace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in read_trace(trace):
            w = r.get("window") or {}
            full = not w.get("replicas") and w.get("since", 0.0) == 0.0
            if r["kind"] == "analysis" and r["t"] >= since and full:
                return float(r["t"] + r["s"])
        time.sleep(0.2)
    raise AssertionError(f"no warm-up analysis in {timeout:.0f} s")


def browser(home: str, base: dict[str, Any], repeat: int) -> dict[str, Any]:
    """``repeat`` rounds; each: (a) a dashboard opened in the browser as soon as it is up
    (its warm-up analysis of all data still running); (b) another started afresh, opened
    once that analysis is done, then reloaded, filtered, searched."""
    from tests import dashboard_probe as probe

    os.makedirs(SHOTS, exist_ok=True)
    trace_path = os.path.join(SHOTS, "trace.jsonl")
    log = os.path.join(SHOTS, "dashboard.log")
    for p in (trace_path, log):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)
    counts = {k: f"{v:,}" for k, v in base["counts"].items()}
    rounds: list[dict[str, float]] = []
    marks: list[tuple[str, float, float]] = []
    phases: list[tuple[float, float]] = []  # the dashboards opened at start
    for i in range(repeat):
        with probe.chromium() as d:
            a0 = time.time()
            with dashboard(home, trace_path, log) as url:
                r = Round(d, url)
                r.overview("overview at start")
            phases.append((a0, time.time()))
            started = time.time()
            with dashboard(home, trace_path, log) as url:
                up = time.time()
                r.url = url
                r.out["warm-up analysis (after up)"] = _analysis_done(trace_path, started) - up
                r.overview("overview first render")
                if i == 0:
                    probe.shot(d, SHOTS, "overview")
                r.overview("overview reload")
                r.change(
                    "filter → last 6 h",
                    lambda: select(d, "stSelectbox", "time range", "last 6 h"),
                    counts["last 6 h"],
                )
                if i == 0:
                    probe.shot(d, SHOTS, "overview-last-6h")
                r.change(
                    "filter → all data",
                    lambda: select(d, "stSelectbox", "time range", "all data"),
                    counts["all data"],
                )
                d.get(url + "/")  # a fresh page load again
                until(d, lambda: feed_done(d), "the findings feed")
                r.change(
                    f"filter: replica {REPLICA}",
                    lambda: select(d, "stMultiSelect", "replicas", REPLICA),
                    counts[REPLICA],
                )
                if i == 0:
                    probe.shot(d, SHOTS, f"overview-{REPLICA}")
                r.search(base["request_ids"][i])
                if i == 0:
                    probe.shot(d, SHOTS, "request")
        rounds.append(r.out)
        marks.extend(r.marks)
        print(
            f"  round {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.out.items()),
            file=sys.stderr,
        )
    trace = read_trace(trace_path)
    parts: dict[str, list[dict[str, float]]] = {}
    for name, a, b in marks:
        parts.setdefault(name, []).append(split(trace, a, b))
    analyses = [r for r in trace if r["kind"] == "analysis"]
    for an in analyses:
        w, t0, t1 = an["window"], an["t"], an["t"] + an["s"]
        at_start = any(a <= t0 <= b for a, b in phases)
        an["what"] = ",".join(w["replicas"]) or (
            ("last 6 h" if w["since"] else "all data")
            + (" at start, the overview open" if at_start else "")
        )
        an["page_asks"] = sum(1 for x in trace if x["kind"] == "ask" and t0 <= x["t"] <= t1)
    return {
        "rounds": rounds,
        "parts": {k: _median_dicts(v) for k, v in parts.items()},
        "analyses": analyses,
    }


def _median_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in ds for k in d})
    return {k: statistics.median(d.get(k, 0.0) for d in ds) for k in keys}


# --- the report -----------------------------------------------------------------------------


def target_of(figure: str) -> float | None:
    if figure in ("overview first render", "overview at start"):
        return TARGETS["overview first render"]
    if figure.startswith("filter") and not figure.endswith("findings"):
        return TARGETS["filter change"]
    return TARGETS.get(figure)


def report(res: dict[str, Any]) -> None:
    n, base, br = res["requests"], res["baseline"], res["browser"]
    print(
        f"\ndashboard on {n:,} requests, {base['span']['gpu_samples']:,} GPU samples, "
        f"{os.cpu_count()} cores; median of {res['repeat']} round(s), each on a freshly "
        "started dashboard and a fresh page load"
    )
    cols = (
        ("pre-run", "pre_run_s"),
        ("script", "script_s"),
        ("queries", "page_query_s"),
        ("lock w", "page_lock_wait_s"),
        ("charts", "charts_s"),
        ("after", "after_run_s"),
        ("worker q", "worker_query_s"),
    )
    print(
        f"{'browser figure (s)':<38}{'median':>8}{'min':>7}{'target':>7}"
        + "".join(f"{c:>9}" for c, _ in cols)
        + f"{'runs':>5}"
    )
    for k in br["rounds"][0]:
        vals = [r[k] for r in br["rounds"]]
        target = target_of(k)
        p = br["parts"].get(k)
        tail = "".join(f"{p[f]:>9.2f}" for _, f in cols) + f"{p['runs']:>5.0f}" if p else ""
        tgt = f"{target:>7.1f}" if target is not None else f"{'':>7}"
        print(f"{k:<38}{statistics.median(vals):>8.2f}{min(vals):>7.2f}{tgt}{tail}")
    print(
        "pre-run: navigation or input to the first script run; script: the full runs "
        "(ui.start to the run marker), in them\nqueries: the page's store calls, lock w: their "
        "wait for the store lock, charts: Altair specs + st.altair_chart; after: the last run's\n"
        "end to the page showing it; worker q: the analysis worker's store calls meanwhile "
        "(the store runs one call at a time)"
    )
    print(f"\n{'baseline, in process':<38}{'median s':>9}{'first s':>9}")
    for k, v in base["queries"].items():
        print(f"{k:<38}{statistics.median(v):>9.3f}{v[0]:>9.3f}")
    a = base["analysis"]
    print(
        f"\nanalyze over all data (in process): {a['total_s']:.2f} s, findings {a['findings']}"
        + (f", failed {a['failed']}" if a["failed"] else "")
    )
    for k, v in sorted(a["per_analyzer_s"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {k:<36}{v:>8.2f}")
    by_what: dict[str, list[dict[str, Any]]] = {}
    for an in br["analyses"]:
        by_what.setdefault(an["what"], []).append(an)
    print(
        f"\n{'the dashboard process analysing (median)':<44}{'wall s':>8}{'CPU s':>8}"
        f"{'asks':>6}  slowest analyzers (s)"
    )
    for k, ans in by_what.items():
        top = _median_dicts([a["per_analyzer_s"] for a in ans])
        top.pop("(total)", None)
        slow = ", ".join(f"{n} {v:.1f}" for n, v in sorted(top.items(), key=lambda kv: -kv[1])[:3])
        print(
            f"{k:<44}{statistics.median(a['s'] for a in ans):>8.1f}"
            f"{statistics.median(a['process_cpu_s'] for a in ans):>8.1f}"
            f"{statistics.median(a['page_asks'] for a in ans):>6.0f}  {slow}"
        )
    print(
        "CPU: the dashboard process's, all threads; asks: the page asking for the analysis "
        "(its feed, then its poll every 0.3 s)"
    )
    over = base["queries"]
    q_all = sum(statistics.median(over[k]) for k in OVERVIEW_QUERIES)
    med = res["median_s"]
    print(
        f"\noverview first render {med['overview first render']:.2f} s (content "
        f"{med['overview first render (content)']:.2f} s): its queries in process {q_all:.2f} s; "
        f"baseline scan {statistics.median(over['baseline count/min/max']):.3f} s"
    )
    for k in (
        "overview at start",
        "overview first render",
        "filter → last 6 h",
        f"filter: replica {REPLICA}",
        "search by ID",
    ):
        v, t = med[k], target_of(k)
        assert t is not None
        print(f"  {k}: {v:.2f} s {'meets' if v <= t else 'misses'} ≤ {t:g} s ({v / t:.1f}x)")
    print(f"screenshots, trace, results: {SHOTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--keep-store",
        action="store_true",
        help="keep bench/out/dashboard-store-N/ for the next run (else removed)",
    )
    ap.add_argument("--serve", metavar="TRACE", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.rest)
        return
    from tests import dashboard_probe as probe

    missing = probe.browser_missing()
    if missing:
        raise SystemExit(f"no browser: {missing}")
    n = args.requests
    home = os.path.join(OUT, f"dashboard-store-{n}")
    print(f"building {home} …", file=sys.stderr)
    built = build(home, n)
    try:
        print("baseline queries …", file=sys.stderr)
        base = baseline(home, args.repeat)
        print("browser …", file=sys.stderr)
        br = browser(home, base, args.repeat)
    finally:
        if not args.keep_store:
            shutil.rmtree(home, ignore_errors=True)
    res = {
        "requests": n,
        "repeat": args.repeat,
        "build_s": built,
        "baseline": base,
        "browser": br,
        "median_s": {k: statistics.median(r[k] for r in br["rounds"]) for k in br["rounds"][0]},
    }
    with open(os.path.join(SHOTS, f"results-{n}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        report(res)


if __name__ == "__main__":
    main()
