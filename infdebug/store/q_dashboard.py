"""The incident dashboard's queries: fleet over time, one replica's distributions and timeline,
request search and lookup, GPU state around a request. SQL here, values bound, never formatted.

Everything is cut by a window (``q_common.WINDOW``: arrival time and replicas) and grouped by
the unit (a replica within its deployment). Per-request latency figures that need no
per-token array are read from scalar columns so that a million-request store answers within
the page's budget: time per output token (TPOT, the request's mean inter-token gap) is
``(e2e − TTFT) / (output tokens − 1)``, and only a single replica's drill-down reads the
token-time arrays for the true inter-token gaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store import q_gpu
from infdebug.store.base import Store, query_dicts
from infdebug.store.ddl import SELECT_STAR_SETTINGS, STORAGE_ONLY
from infdebug.store.q_common import UNIT, WINDOW, window_params
from infdebug.store.q_workload import FAILED, OUTPUT_LEN, PROMPT_LEN

__all__ = [
    "METRICS",
    "DataSpan",
    "counterpart",
    "data_span",
    "finish_reasons",
    "fleet_bins",
    "gpu_bins",
    "gpu_during",
    "gpu_starts",
    "histogram",
    "identity",
    "length_histogram",
    "request",
    "search",
    "unit_table",
]

# TPOT from scalar columns; NULL with fewer than two output tokens or without timings
TPOT = (
    f"if(e2e_s IS NOT NULL AND ttft_s IS NOT NULL AND ifNull({OUTPUT_LEN}, 0) >= 2, "
    f"(e2e_s - ttft_s) / (ifNull({OUTPUT_LEN}, 0) - 1), NULL)"
)
# metric name → SQL expression (seconds)
METRICS: dict[str, str] = {
    "ttft_s": "ttft_s",
    "tpot_s": TPOT,
    "e2e_s": "e2e_s",
    "queue_s": "queue_s",
}
_UNIT_IS = "({unit:String} = '' OR " + UNIT + " = {unit:String})"
BUCKET = "toFloat64(intDiv(toInt64(t_arrival), {width:Int64}) * {width:Int64})"


def _metric(name: str) -> str:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}") from None


@dataclass(frozen=True)
class DataSpan:
    """What the store holds: requests, first and last arrival, GPU samples."""

    requests: int
    t_first: float | None
    t_last: float | None
    gpu_samples: int

    @property
    def empty(self) -> bool:
        return self.requests == 0 and self.gpu_samples == 0


def data_span(store: Store) -> DataSpan:
    _, rows = store.query(
        "SELECT (SELECT count() FROM requests), (SELECT min(t_arrival) FROM requests), "
        "(SELECT max(t_arrival) FROM requests), (SELECT count() FROM gpu_samples)"
    )
    n, a, b, g = rows[0]
    n = int(n or 0)
    return DataSpan(n, float(a) if n else None, float(b) if n else None, int(g or 0))


def fleet_bins(
    store: Store,
    window: Mapping[str, Any],
    width: int,
    *,
    ttft_budget: float | None,
    tpot_budget: float | None,
) -> list[dict[str, Any]]:
    """Per unit and time bucket of ``width`` seconds: requests, errors, TTFT and TPOT
    p50/p99, and the requests meeting the SLO (not failed, within each given budget)."""
    slo = (
        f"NOT {FAILED}"
        " AND ({no_ttft:Bool} OR ifNull(ttft_s, 1e18) <= {ttft:Float64})"
        " AND ({no_tpot:Bool} OR ifNull(tpot, 0) <= {tpot:Float64})"
    )
    return query_dicts(
        store,
        f"""
        SELECT {UNIT} AS unit, {BUCKET} AS t, count() AS requests,
               countIf({FAILED}) AS errors,
               quantileIf(0.5)(ttft_s, ttft_s IS NOT NULL) AS ttft_p50,
               quantileIf(0.99)(ttft_s, ttft_s IS NOT NULL) AS ttft_p99,
               quantileIf(0.5)(tpot, tpot IS NOT NULL) AS tpot_p50,
               quantileIf(0.99)(tpot, tpot IS NOT NULL) AS tpot_p99,
               countIf({slo}) AS met
        FROM (SELECT *, {TPOT} AS tpot FROM requests WHERE {WINDOW})
        GROUP BY unit, t
        ORDER BY unit, t
        """,
        window_params(
            window,
            width=max(1, int(width)),
            no_ttft=ttft_budget is None,
            ttft=float(ttft_budget or 0.0),
            no_tpot=tpot_budget is None,
            tpot=float(tpot_budget or 0.0),
        ),
    )


def unit_table(store: Store, window: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per unit, then the whole fleet (``unit`` = ''): requests, errors and p50/p90/p99 of
    TTFT, TPOT, end-to-end and queue time (exact quantiles)."""
    cols = ", ".join(
        f"quantilesExactIf(0.5, 0.9, 0.99)({m}, {m} IS NOT NULL) AS {m}" for m in METRICS
    )
    inner = ", ".join(f"{expr} AS {m}" for m, expr in METRICS.items() if m != expr)
    return query_dicts(
        store,
        f"""
        SELECT unit, count() AS requests,
               countIf(failed) AS errors, {cols}
        FROM (SELECT {UNIT} AS unit, {FAILED} AS failed, ttft_s, e2e_s, queue_s, {inner}
              FROM requests WHERE {WINDOW})
        GROUP BY unit WITH ROLLUP
        ORDER BY unit = '', unit
        """,
        window_params(window),
    )


def gpu_starts(store: Store, window: Mapping[str, Any]) -> q_gpu.UnitStarts:
    """Which unit each GPU sample belongs to (q_gpu's attribution: samples carry a replica
    name, reused across deployments, and older samples no deployment)."""
    spans = q_gpu.gpu_replica_spans(store, window)
    return q_gpu.unit_starts(q_gpu.unit_spans(store, window), sorted(spans))


def gpu_bins(
    store: Store,
    window: Mapping[str, Any],
    width: int,
    starts: q_gpu.UnitStarts,
    unit: str = "",
) -> list[dict[str, Any]]:
    """GPU samples per unit, GPU and time bucket (on the sample's time): mean power, max
    temperature, mean SM clock, mean utilisation, whether any sample had a slowdown reason,
    whether they are simulated. ``unit``: that unit's only."""
    gq = q_gpu.gpu_params(window, starts, busy_util=0.0)
    uids = [i + 1 for i, u in enumerate(starts.unit_list) if not unit or u == unit]
    rows = query_dicts(
        store,
        f"""
        SELECT uid, gpu_index AS gpu,
               toFloat64(intDiv(toInt64(t), {{width:Int64}}) * {{width:Int64}}) AS t,
               avg(power_w) AS power_w, max(temp_c) AS temp_c, avg(sm_clock_mhz) AS sm_clock_mhz,
               avg(util_pct) AS util_pct, max(thr) AS throttled,
               max(simulated) AS simulated, count() AS samples
        FROM {q_gpu.GPU_UNITS}
        WHERE has({{uids:Array(UInt32)}}, uid)
        GROUP BY uid, gpu, t
        ORDER BY uid, gpu, t
        """,
        {**gq.params, "width": max(1, int(width)), "uids": uids},
    )
    for r in rows:
        r["unit"] = starts.unit_of(int(r.pop("uid")))
    return rows


def histogram(
    store: Store, window: Mapping[str, Any], metric: str, unit: str, bins_per_decade: int = 10
) -> list[dict[str, Any]]:
    """Log-spaced histogram of ``metric`` (``METRICS``, or ``itl_s``: every inter-token gap,
    read from the token times) for ``unit`` against the rest of the fleet: per bin its lower
    edge in seconds, the unit's count and the others' count."""
    if metric == "itl_s":
        value_src = (
            f"SELECT {UNIT} = {{unit:String}} AS mine, gap AS x FROM requests "
            "ARRAY JOIN arrayPopFront(arrayDifference(token_times_s)) AS gap "
            f"WHERE {WINDOW} AND gap > 0"
        )
    else:
        value_src = (
            f"SELECT {UNIT} = {{unit:String}} AS mine, {_metric(metric)} AS x FROM requests "
            f"WHERE {WINDOW}"
        )
    return query_dicts(
        store,
        f"""
        SELECT pow(10, b / {{k:Float64}}) AS lo, countIf(mine) AS unit, countIf(NOT mine) AS rest
        FROM (SELECT mine, toInt64(floor(log10(x) * {{k:Float64}})) AS b
              FROM ({value_src}) WHERE x > 0)
        GROUP BY b ORDER BY b
        """,
        window_params(window, unit=unit, k=float(bins_per_decade)),
    )


def length_histogram(
    store: Store, window: Mapping[str, Any], bins_per_decade: int = 10
) -> list[dict[str, Any]]:
    """Log-spaced histogram of prompt and output lengths (tokens): lower edge, kind, count."""
    return query_dicts(
        store,
        f"""
        SELECT pow(10, b / {{k:Float64}}) AS lo, kind, count() AS requests
        FROM (SELECT kind, toInt64(floor(log10(n) * {{k:Float64}})) AS b
              FROM (SELECT [toFloat64(ifNull({PROMPT_LEN}, 0)),
                            toFloat64(ifNull({OUTPUT_LEN}, 0))] AS ns
                    FROM requests WHERE {WINDOW})
              ARRAY JOIN ns AS n, ['prompt', 'output'] AS kind
              WHERE n > 0)
        GROUP BY kind, b ORDER BY kind, b
        """,
        window_params(window, k=float(bins_per_decade)),
    )


def finish_reasons(store: Store, window: Mapping[str, Any], unit: str) -> list[dict[str, Any]]:
    """Requests of ``unit`` by finish reason (``error`` where an error was logged)."""
    return query_dicts(
        store,
        f"""
        SELECT if(error IS NOT NULL, 'error', ifNull(finish_reason, '(none)')) AS finish_reason,
               count() AS requests
        FROM requests WHERE {WINDOW} AND {UNIT} = {{unit:String}}
        GROUP BY finish_reason ORDER BY requests DESC, finish_reason
        """,
        window_params(window, unit=unit),
    )


def identity(store: Store, window: Mapping[str, Any], unit: str) -> list[dict[str, Any]]:
    """What ``unit`` served as: model, engine and version, tokenizer and template
    fingerprints, with the requests and first/last arrival of each combination."""
    return query_dicts(
        store,
        f"""
        SELECT ifNull(model, '') AS model, ifNull(engine, '') AS engine,
               ifNull(engine_version, '') AS engine_version,
               ifNull(tokenizer_fp, '') AS tokenizer_fp, ifNull(template_fp, '') AS template_fp,
               count() AS requests, min(t_arrival) AS first, max(t_arrival) AS last
        FROM requests WHERE {WINDOW} AND {UNIT} = {{unit:String}}
        GROUP BY model, engine, engine_version, tokenizer_fp, template_fp
        ORDER BY first
        """,
        window_params(window, unit=unit),
    )


SEARCH_COLUMNS = (
    "request_id, replica, ifNull(deployment, '') AS deployment, t_arrival, ttft_s, e2e_s, "
    f"{TPOT} AS tpot_s, ifNull({PROMPT_LEN}, 0) AS prompt_tokens, "
    f"ifNull({OUTPUT_LEN}, 0) AS output_tokens, "
    "if(error IS NOT NULL, 'error', ifNull(finish_reason, '')) AS finish_reason"
)
ORDERS = {
    "newest": "t_arrival DESC",
    "oldest": "t_arrival",
    "slowest e2e": "e2e_s DESC NULLS LAST",
    "slowest TTFT": "ttft_s DESC NULLS LAST",
    "slowest TPOT": "tpot_s DESC NULLS LAST",
}


def search(
    store: Store,
    window: Mapping[str, Any],
    *,
    request_id: str = "",
    unit: str = "",
    finish_reason: str = "",
    text: str = "",
    min_e2e_s: float | None = None,
    order: str = "newest",
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Requests matching every filter given (an exact request ID ignores the window), in
    ``ORDERS[order]``, at most ``limit``. ``text``: a substring of the prompt or output."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; one of {', '.join(ORDERS)}")
    if request_id:
        where = "request_id = {rid:String}"
    else:
        where = (
            f"{WINDOW} AND {_UNIT_IS}"
            " AND ({fr:String} = '' OR if(error IS NOT NULL, 'error', ifNull(finish_reason, ''))"
            " = {fr:String})"
            " AND ({text:String} = '' OR positionCaseInsensitiveUTF8(ifNull(prompt_text, ''),"
            " {text:String}) > 0 OR positionCaseInsensitiveUTF8(ifNull(output_text, ''),"
            " {text:String}) > 0)"
            " AND ({no_min:Bool} OR ifNull(e2e_s, 0) >= {min_e2e:Float64})"
        )
    return query_dicts(
        store,
        f"SELECT {SEARCH_COLUMNS} FROM requests WHERE {where} "
        f"ORDER BY {ORDERS[order]}, request_id LIMIT {{limit:UInt64}}",
        window_params(
            window,
            rid=request_id,
            unit=unit,
            fr=finish_reason,
            text=text,
            no_min=min_e2e_s is None,
            min_e2e=float(min_e2e_s or 0.0),
            limit=max(1, int(limit)),
        ),
    )


def request(store: Store, request_id: str) -> dict[str, Any] | None:
    """Every stored field of one request (the earliest, if the ID was logged twice): the
    token times as ``token_times_s`` (an ALIAS), not the columns that hold them."""
    cols, rows = store.query(
        "SELECT * EXCEPT (_file, _batch, _ingested_at) FROM requests "
        "WHERE request_id = {rid:String} ORDER BY t_arrival LIMIT 1",
        {"rid": request_id},
        SELECT_STAR_SETTINGS,
    )
    if not rows:
        return None
    return {c: v for c, v in zip(cols, rows[0], strict=True) if c not in STORAGE_ONLY}


def counterpart(store: Store, request_id: str, prefer_units: list[str] | None = None) -> str | None:
    """A request on another unit with the same prompt as ``request_id`` (the same logged
    prompt text, else the same messages) and the same model: from one of ``prefer_units``
    when any has one; the earliest such. None: no other unit served that prompt."""
    _, rows = store.query(
        f"""
        WITH me AS (SELECT prompt_text, messages, model, {UNIT} AS unit FROM requests
                    WHERE request_id = {{rid:String}} ORDER BY t_arrival LIMIT 1)
        SELECT request_id FROM requests
        WHERE request_id != {{rid:String}}
          AND {UNIT} != (SELECT unit FROM me)
          AND ifNull(model, '') = ifNull((SELECT model FROM me), '')
          AND if((SELECT prompt_text FROM me) IS NOT NULL,
                 prompt_text = (SELECT prompt_text FROM me),
                 (SELECT messages FROM me) IS NOT NULL AND messages = (SELECT messages FROM me))
        ORDER BY has({{prefer:Array(String)}}, {UNIT}) DESC, t_arrival, request_id
        LIMIT 1
        """,
        {"rid": request_id, "prefer": list(prefer_units or [])},
    )
    return str(rows[0][0]) if rows else None


def gpu_during(
    store: Store, replica: str, deployment: str | None, t0: float, t1: float, pad_s: float = 2.0
) -> list[dict[str, Any]]:
    """The GPU samples of a replica (of its deployment, or written without one) from ``pad_s``
    before ``t0`` to ``pad_s`` after ``t1``."""
    return query_dicts(
        store,
        """
        SELECT t, gpu_index AS gpu, power_w, temp_c, sm_clock_mhz, util_pct, throttle_reasons,
               simulated
        FROM gpu_samples
        WHERE replica = {replica:String}
          AND (deployment IS NULL OR deployment = {dep:String})
          AND t >= {t0:Float64} AND t <= {t1:Float64}
        ORDER BY gpu_index, t
        LIMIT 20000
        """,
        {"replica": replica, "dep": deployment or "", "t0": t0 - pad_s, "t1": t1 + pad_s},
    )
