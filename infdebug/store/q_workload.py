"""Queries behind ``infdebug workload``: arrivals per minute, token-length distributions,
prefix-block reuse, SLO counts per replica and start-up events.

Every function takes the store and the window parameters of ``AnalysisContext.window()``
(``since``, ``until``, ``replicas``) and binds them; nothing is formatted into SQL but our
own constants. Only aggregates come back: one row per minute that saw a request, one row per
replica, a few numbers; the start-up events, which are a handful per replica start.

Definitions the SQL shares with ``infdebug.workload`` (which documents them):

- a request's prompt length is ``length(prompt_ids)`` when the IDs were logged, else the
  engine-reported ``prompt_tokens``; its output length is ``length(output_ids)``, else
  ``output_tokens``, else the number of logged token times;
- a request failed when it logged an error or finished with ``error`` / ``abort``;
- its mean time per output token is ``(e2e_s − ttft_s) / (output tokens − 1)``, or from
  the token times (``(last − first) / (n − 1)``) where e2e or TTFT is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import WINDOW, make_unit, window_params

PROMPT_LEN = "if(notEmpty(prompt_ids), length(prompt_ids), prompt_tokens)"
OUTPUT_LEN = (
    "multiIf(notEmpty(output_ids), length(output_ids), output_tokens IS NOT NULL, "
    "output_tokens, notEmpty(token_times_s), length(token_times_s), NULL)"
)
FAILED = "(error IS NOT NULL OR ifNull(finish_reason, '') IN ('error', 'abort'))"
MINUTE = "toInt64(floor((t_arrival - {t0:Float64}) / 60))"

# The chained hash of each whole block of prompt tokens: ``cs`` is the running sum (mod 2^64)
# of a 64-bit mix of (position, token) over the prompt, and block k's hash is its value at
# the block's last token, so it covers blocks 1..k (the prefix): two prompts share it only
# if they share that whole prefix. An additive hash of independent mixes: vectorised
# (intHash64, arrayCumSum), one pass over the IDs, and two different prefixes collide with
# probability about 2^-64.
TOKEN_MIX = (
    "arrayCumSum(arrayMap((x, i) -> intHash64(bitOr(bitShiftLeft(toUInt64(i), 32), "
    "toUInt64(x))), prompt_ids, arrayEnumerate(prompt_ids)))"
)
# Indexing ``cs`` at each block end was the fast form: a bound block size inside an
# arrayFilter lambda ran 2-3x slower.
BLOCK_HASHES = (
    "arrayMap(k -> cs[k * {block:UInt32}], "
    "range(1, intDiv(length(prompt_ids), {block:UInt32}) + 1))"
)


def _window(w: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return window_params(w, **extra)


def _where(w: Mapping[str, Any]) -> str:
    """The window's condition; none for the whole store (the default window), which lets
    ClickHouse answer count/min/max from part metadata and skip a filter on every row."""
    p = window_params(w)
    if p["since"] <= 0.0 and p["until"] >= 1e11 and not p["replicas"]:
        return "1"
    return WINDOW


@dataclass(frozen=True)
class Span:
    """The requests of the window: how many, and the first and last arrival."""

    requests: int
    t_first: float | None
    t_last: float | None


def span(store: Store, window: Mapping[str, Any]) -> Span:
    _, rows = store.query(
        f"SELECT count(), min(t_arrival), max(t_arrival) FROM requests WHERE {_where(window)}",
        _window(window),
    )
    n = int(rows[0][0]) if rows else 0
    if n == 0:
        return Span(0, None, None)
    return Span(n, float(rows[0][1]), float(rows[0][2]))


def minute_bins(
    store: Store, window: Mapping[str, Any], t0: float
) -> list[tuple[int, int, float, float, float]]:
    """Per minute since ``t0`` that saw a request: (minute, requests, first arrival, last
    arrival, sum of squared gaps between consecutive arrivals within the minute)."""
    where = _where(window)
    _, rows = store.query(
        f"""
        SELECT {MINUTE} AS m, count(), min(t_arrival), max(t_arrival),
               arraySum(g -> g * g, arrayDifference(arraySort(groupArray(t_arrival))))
        FROM requests
        WHERE {where}
        GROUP BY m
        ORDER BY m
        """,
        _window(window, t0=t0),
    )
    return [(int(m), int(n), float(a), float(b), float(s)) for m, n, a, b, s in rows]


@dataclass(frozen=True)
class LengthStats:
    """Token-length aggregates: n, mean and (p50, p90, p99) of prompt and output lengths
    (exact quantiles, linear interpolation), and the logged prompt-cache hits."""

    prompt_n: int
    prompt_mean: float | None
    prompt_q: tuple[float, float, float] | None
    output_n: int
    output_mean: float | None
    output_q: tuple[float, float, float] | None
    cache_requests: int  # requests that logged cached_prompt_tokens (and a prompt length)
    cached_tokens: int
    cache_prompt_tokens: int  # prompt tokens of those requests


def lengths(store: Store, window: Mapping[str, Any]) -> LengthStats:
    # Plain UInt32 values with a flag and -If aggregates: twice as fast as Nullable ones.
    where = _where(window)
    _, rows = store.query(
        f"""
        SELECT countIf(pk), avgIf(p, pk), quantilesExactInclusiveIf(0.5, 0.9, 0.99)(p, pk),
               countIf(ok), avgIf(o, ok), quantilesExactInclusiveIf(0.5, 0.9, 0.99)(o, ok),
               countIf(ck), sumIf(c, ck), sumIf(p, ck)
        FROM (
            SELECT {PROMPT_LEN} IS NOT NULL AS pk, toUInt32(ifNull({PROMPT_LEN}, 0)) AS p,
                   {OUTPUT_LEN} IS NOT NULL AS ok, toUInt32(ifNull({OUTPUT_LEN}, 0)) AS o,
                   pk AND cached_prompt_tokens IS NOT NULL AS ck,
                   ifNull(cached_prompt_tokens, 0) AS c
            FROM requests WHERE {where}
        )
        """,
        _window(window),
    )
    r = rows[0]

    def q(n: Any, v: Any) -> tuple[float, float, float] | None:
        return (float(v[0]), float(v[1]), float(v[2])) if int(n) and v else None

    return LengthStats(
        int(r[0]),
        float(r[1]) if int(r[0]) else None,
        q(r[0], r[2]),
        int(r[3]),
        float(r[4]) if int(r[3]) else None,
        q(r[3], r[5]),
        int(r[6]),
        int(r[7] or 0),
        int(r[8] or 0),
    )


@dataclass(frozen=True)
class UnitSlo:
    """One replica's (unit's) SLO counts, decode time and its best whole minute."""

    unit: str  # q_common's unit: replica within deployment
    requests: int
    failed: int
    judged: int  # requests the budgets could be checked on (or that failed)
    met: int
    decode_s: float  # Σ time from first to last output token, of requests with ≥ 2 tokens
    decode_steps: int  # Σ (output tokens − 1) of those requests
    best_minute_requests: int  # the most requests in one whole minute that met the goal
    best_minute: int | None  # which minute (since t0; the first of equals); None: none qualified


def unit_slo(
    store: Store,
    window: Mapping[str, Any],
    *,
    t0: float,
    whole_minutes: int,
    ttft_s: float | None,
    tpot_s: float | None,
    goal: float,
) -> list[UnitSlo]:
    """Per unit: requests, failed, judged and SLO-meeting counts under the budgets (a budget
    of None is not checked), decode time and steps, and its busiest whole minute among those
    whose SLO attainment reached ``goal`` (every whole minute when no budget is given).

    A request meets the SLO when it did not fail, its TTFT ≤ ``ttft_s`` and its mean time per
    output token ≤ ``tpot_s`` (not checked with fewer than two output tokens, where it is
    undefined). It is judged when it failed or every given budget could be checked."""
    use_ttft, use_tpot = ttft_s is not None, tpot_s is not None
    where = _where(window)
    # e2e and TTFT where logged; the token times only for the rows that lack them (PREWHERE
    # on the cheap columns keeps the token-time arrays of the other rows unread). Values are
    # plain (not Nullable) with a flag beside each: Nullable arithmetic ran twice as slow.
    n_out = f"toUInt32(ifNull({OUTPUT_LEN}, 0)) AS n_out, {OUTPUT_LEN} IS NOT NULL AS n_known"
    rows_sql = f"""
        SELECT replica, deployment, t_arrival, {FAILED} AS failed, {n_out},
               1 AS ttft_known, assumeNotNull(ttft_s) AS ttft,
               assumeNotNull(e2e_s) - assumeNotNull(ttft_s) AS dec,
               toInt64(n_out) - 1 AS steps, n_known AND n_out >= 2 AS tpot_known
        FROM requests WHERE {where} AND e2e_s IS NOT NULL AND ttft_s IS NOT NULL
        UNION ALL
        SELECT replica, deployment, t_arrival, {FAILED} AS failed, {n_out},
               ttft_s IS NOT NULL OR notEmpty(token_times_s) AS ttft_known,
               if(ttft_s IS NULL, token_times_s[1], assumeNotNull(ttft_s)) AS ttft,
               if(length(token_times_s) >= 2, token_times_s[-1] - token_times_s[1], 0) AS dec,
               toInt64(length(token_times_s)) - 1 AS steps, length(token_times_s) >= 2 AS tpot_known
        FROM requests WHERE {where} AND (e2e_s IS NULL OR ttft_s IS NULL)
    """
    tpot = "if(tpot_known, dec / steps, 0)"
    tpot_na = "(n_known AND n_out <= 1)"
    judged = (
        "(failed OR ((NOT {use_ttft:Bool} OR ttft_known) "
        f"AND (NOT {{use_tpot:Bool}} OR tpot_known OR {tpot_na})))"
    )
    met = (
        f"({judged} AND NOT failed "
        "AND (NOT {use_ttft:Bool} OR ttft <= {ttft:Float64}) "
        f"AND (NOT {{use_tpot:Bool}} OR {tpot_na} OR tpot <= {{tpot:Float64}}))"
    )
    qualifies = (
        "m < {whole:Int64} AND (NOT ({use_ttft:Bool} OR {use_tpot:Bool}) "
        "OR (j > 0 AND k >= {goal:Float64} * j))"
    )
    _, rows = store.query(
        f"""
        SELECT replica, deployment, sum(n), sum(f), sum(j), sum(k), sum(ds), sum(st),
               maxIf(n, {qualifies}), argMaxIf(m, (n, -m), {qualifies}), countIf({qualifies})
        FROM (
            SELECT replica, deployment, {MINUTE} AS m, count() AS n, countIf(failed) AS f,
                   countIf({judged}) AS j, countIf({met}) AS k,
                   sumIf(dec, NOT failed AND tpot_known) AS ds,
                   sumIf(steps, NOT failed AND tpot_known) AS st
            FROM (SELECT *, {tpot} AS tpot FROM ({rows_sql}))
            GROUP BY replica, deployment, m
        )
        GROUP BY replica, deployment
        ORDER BY replica, deployment
        """,
        _window(
            window,
            t0=t0,
            whole=whole_minutes,
            use_ttft=use_ttft,
            use_tpot=use_tpot,
            ttft=float(ttft_s or 0.0),
            tpot=float(tpot_s or 0.0),
            goal=float(goal),
        ),
    )
    return [
        UnitSlo(
            make_unit(str(r[0]), None if r[1] is None else str(r[1])),
            int(r[2]),
            int(r[3]),
            int(r[4]),
            int(r[5]),
            float(r[6] or 0.0),
            int(r[7] or 0),
            int(r[8] or 0),
            int(r[9]) if int(r[10]) else None,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class PrefixCounts:
    """Whole prompt-ID blocks of the window: how many, and how many distinct prefixes."""

    requests: int  # requests that logged prompt IDs
    tokens: int  # their prompt tokens (partial last blocks and short prompts included)
    blocks: int  # whole blocks
    distinct: int  # distinct chained block hashes among them


def prefix_counts(store: Store, window: Mapping[str, Any], block: int) -> PrefixCounts:
    """Block counts for prefix reuse with an unbounded cache: every whole block whose
    chained hash an earlier request already had is a reuse, so the reused blocks are the
    blocks less the distinct hashes (which request came first does not change the count)."""
    params = _window(window, block=block)
    where = _where(window)
    _, rows = store.query(
        f"""
        SELECT count(), sum(length(prompt_ids))
        FROM requests WHERE {where} AND notEmpty(prompt_ids)
        """,
        params,
    )
    n, tokens = int(rows[0][0]), int(rows[0][1] or 0)
    if n == 0:
        return PrefixCounts(0, 0, 0, 0)
    _, rows = store.query(
        f"""
        SELECT count(), uniqExact(h)
        FROM (
            SELECT {TOKEN_MIX} AS cs, {BLOCK_HASHES} AS bh
            FROM requests
            WHERE {where} AND length(prompt_ids) >= {{block:UInt32}}
        )
        ARRAY JOIN bh AS h
        """,
        params,
    )
    return PrefixCounts(n, tokens, int(rows[0][0]), int(rows[0][1]))


def startup_events(
    store: Store, window: Mapping[str, Any], limit: int = 200_000
) -> list[tuple[str, str | None, int | None, str, float, float | None, float | None]]:
    """Lifecycle events in the window, by replica then time: (replica, deployment, pid,
    name, t, duration_s, since_start_s). Events are a handful per replica start."""
    _, rows = store.query(
        """
        SELECT replica, deployment, pid, name, t, duration_s, since_start_s
        FROM events
        WHERE t >= {since:Float64} AND t < {until:Float64}
          AND (empty({replicas:Array(String)}) OR has({replicas:Array(String)}, replica))
          AND name IN ('process_start', 'weights_loaded', 'warmup_done', 'ready', 'shutdown')
        ORDER BY replica, ifNull(deployment, ''), t, name
        LIMIT {limit:UInt64}
        """,
        _window(window, limit=limit),
    )
    return [
        (
            str(r[0]),
            None if r[1] is None else str(r[1]),
            None if r[2] is None else int(r[2]),
            str(r[3]),
            float(r[4]),
            None if r[5] is None else float(r[5]),
            None if r[6] is None else float(r[6]),
        )
        for r in rows
    ]
