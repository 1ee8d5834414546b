"""Queries behind ``infdebug diff``: labelling the two sides of a store, pairing their
requests, and the per-side aggregates of the diff's sections.

A diff store holds two sides; after ``label_sides`` every request, GPU sample and event
carries its side's label in ``deployment`` (the side's own deployments are read before, by
``side_deployments``). Labels, selectors and thresholds are bound parameters; the only text
formatted into SQL is fixed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.scratch import Scratch

SIDE_TABLES = ("requests", "gpu_samples", "events")
_TIME = {"requests": "t_arrival", "gpu_samples": "t", "events": "t"}


def batches(store: Store) -> list[int]:
    """The load batches the store's rows came from (a side's rows, after loading it)."""
    parts = " UNION ALL ".join(f"SELECT DISTINCT _batch AS b FROM {t}" for t in SIDE_TABLES)
    _, rows = store.query(f"SELECT DISTINCT b FROM ({parts}) ORDER BY b")
    return [int(r[0]) for r in rows]


def side_deployments(store: Store) -> list[str]:
    """The deployments the requests name (before labelling), '' for none."""
    _, rows = store.query("SELECT DISTINCT ifNull(deployment, '') AS d FROM requests ORDER BY d")
    return [str(r[0]) for r in rows]


def label_sides(store: Store, first: Sequence[int], a: str, b: str) -> None:
    """Rows of the batches ``first`` become side ``a``, every other row side ``b`` (one
    mutation per table, waited for: it rewrites the deployment column only)."""
    for t in SIDE_TABLES:
        store.command(
            f"ALTER TABLE {t} UPDATE deployment = if(has({{first:Array(UInt64)}}, _batch), "
            "{a:String}, {b:String}) WHERE 1",
            {"first": [int(x) for x in first], "a": a, "b": b},
            settings={"mutations_sync": 2},
        )


# --- selecting a side of a store --------------------------------------------------------------

SELECTOR_FIELDS = ("replica", "deployment", "engine_version", "model", "engine")


def selector_where(sel: Mapping[str, Any], table: str) -> tuple[str, dict[str, Any]]:
    """The condition of a side selector on ``table`` (``SELECTOR_FIELDS`` = values, and
    ``since`` / ``until`` unix seconds) with its parameters; fields a table lacks select on
    the requests' replicas instead (GPU samples and events of the selected replicas)."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    cols = {"requests": SELECTOR_FIELDS, "gpu_samples": ("replica", "deployment")}.get(
        table, ("replica", "deployment")
    )
    for i, (field, value) in enumerate(sorted(sel.items())):
        if field in ("since", "until"):
            op = ">=" if field == "since" else "<"
            conds.append(f"{_TIME[table]} {op} {{s{i}:Float64}}")
            params[f"s{i}"] = float(value)
        elif field in cols:
            conds.append(f"ifNull({field}, '') = {{s{i}:String}}")
            params[f"s{i}"] = str(value)
    return (" AND ".join(conds) or "1"), params


def count_selected(store: Store, sel: Mapping[str, Any]) -> int:
    where, params = selector_where(sel, "requests")
    _, rows = store.query(f"SELECT count() FROM requests WHERE {where}", params)
    return int(rows[0][0])


def export_side(store: Store, sel: Mapping[str, Any], table: str) -> str:
    """One side's rows of ``table`` as contract JSONL (what ingest loads back), each line
    built by ClickHouse (JSON-text columns embedded as they are, the rest ``toJSONString``)."""
    from infdebug.store.ddl import TABLES

    where, params = selector_where(sel, table)
    if table != "requests" and any(k in sel for k in ("engine_version", "model", "engine")):
        req_where, req_params = selector_where(sel, "requests")
        where += f" AND replica IN (SELECT DISTINCT replica FROM requests WHERE {req_where})"
        params.update(req_params)  # the same selector: the same names, the same values
    kind = {"requests": "request", "gpu_samples": "gpu", "events": "event"}[table]
    fields = [
        f"'\"{c.name}\":', "
        + (f"ifNull({c.name}, 'null')" if c.json else f"ifNull(toJSONString({c.name}), 'null')")
        for c in TABLES[kind].columns
    ]
    line = f'concat(\'{{"kind":"{kind}",\', ' + ", ',', ".join(fields) + ", '}')"
    _, rows = store.query(f"SELECT {line} AS line FROM {table} WHERE {where}", params)
    return "".join(f"{r[0]}\n" for r in rows)


# --- pairing ----------------------------------------------------------------------------------

# What a prompt is when pairing without request IDs: its messages, else its rendered text,
# else its token IDs; with the sampling parameters that change an answer.
_CONTENT = (
    "multiIf(notEmpty(ifNull(messages, '')), ifNull(messages, ''), "
    "notEmpty(ifNull(prompt_text, '')), ifNull(prompt_text, ''), toString(prompt_ids))"
)
_SAMPLING = (
    "tuple(JSONExtractRaw(ifNull(sampling, '{}'), 'temperature'), "
    "JSONExtractRaw(ifNull(sampling, '{}'), 'top_p'), "
    "JSONExtractRaw(ifNull(sampling, '{}'), 'top_k'), "
    "JSONExtractRaw(ifNull(sampling, '{}'), 'max_tokens'), "
    "JSONExtractRaw(ifNull(sampling, '{}'), 'seed'))"
)
_GREEDY = (
    "(JSONExtract(ifNull(sampling, '{}'), 'temperature', 'Nullable(Float64)') = 0 "
    "OR JSONHas(ifNull(sampling, '{}'), 'seed') AND NOT JSONType(ifNull(sampling, '{}'), "
    "'seed') = 'Null')"
)

# One row per request of a side: its pairing keys (the k-th request of a content key on one
# side meets the k-th on the other, by arrival).
_KEYED = f"""
    SELECT request_id, deployment AS side, t_arrival,
           cityHash64({_CONTENT}, {_SAMPLING}) AS ckey,
           row_number() OVER (PARTITION BY deployment, ckey ORDER BY t_arrival, request_id) AS k
    FROM requests
"""

PAIRS = f"""
    WITH ids AS (
        SELECT request_id FROM requests
        WHERE deployment IN ({{a:String}}, {{b:String}})
        GROUP BY request_id
        HAVING countIf(deployment = {{a:String}}) = 1 AND countIf(deployment = {{b:String}}) = 1
    )
    SELECT x.request_id AS a_id, y.request_id AS b_id, 'request_id' AS how
    FROM (SELECT request_id FROM requests WHERE deployment = {{a:String}}
          AND request_id IN (SELECT request_id FROM ids)) AS x
    JOIN (SELECT request_id FROM requests WHERE deployment = {{b:String}}
          AND request_id IN (SELECT request_id FROM ids)) AS y ON x.request_id = y.request_id
    UNION ALL
    SELECT x.request_id, y.request_id, 'prompt'
    FROM (SELECT * FROM ({_KEYED}) WHERE side = {{a:String}}
          AND request_id NOT IN (SELECT request_id FROM ids)) AS x
    JOIN (SELECT * FROM ({_KEYED}) WHERE side = {{b:String}}
          AND request_id NOT IN (SELECT request_id FROM ids)) AS y
      ON x.ckey = y.ckey AND x.k = y.k
"""


@dataclass(frozen=True)
class PairStats:
    by_request_id: int
    by_prompt: int
    a_only: int
    b_only: int
    prompt_ids_differ: int
    prompt_text_differ: int
    greedy_pairs: int
    outputs_differ: int
    finish_changed: int


_PAIRED = f"""
    SELECT p.how AS how, p.a_id AS a_id, p.b_id AS b_id,
           ra.prompt_ids AS a_pids, rb.prompt_ids AS b_pids,
           ifNull(ra.prompt_text, '') AS a_text, ifNull(rb.prompt_text, '') AS b_text,
           ra.output_ids AS a_out, rb.output_ids AS b_out,
           ra.output_logprobs AS a_lp, rb.output_logprobs AS b_lp,
           ifNull(toString(ra.finish_reason), '') AS a_fin,
           ifNull(toString(rb.finish_reason), '') AS b_fin,
           ra.greedy AND rb.greedy AS greedy,
           notEmpty(a_pids) AND notEmpty(b_pids) AND a_pids != b_pids AS ids_differ,
           notEmpty(a_text) AND notEmpty(b_text) AND a_text != b_text AS text_differ,
           greedy AND NOT ids_differ AND notEmpty(a_out) AND notEmpty(b_out)
               AND arraySlice(a_out, 1, least(length(a_out), length(b_out)))
                   != arraySlice(b_out, 1, least(length(a_out), length(b_out))) AS out_differ
    FROM ({PAIRS}) AS p
    JOIN (SELECT request_id, prompt_ids, prompt_text, output_ids, output_logprobs,
                 finish_reason, {_GREEDY} AS greedy
          FROM requests WHERE deployment = {{a:String}}) AS ra ON p.a_id = ra.request_id
    JOIN (SELECT request_id, prompt_ids, prompt_text, output_ids, output_logprobs,
                 finish_reason, {_GREEDY} AS greedy
          FROM requests WHERE deployment = {{b:String}}) AS rb ON p.b_id = rb.request_id
"""


def paired_source(store: Store, a: str, b: str, scratch: Scratch | None) -> str:
    """The paired requests of sides ``a`` and ``b`` (``_PAIRED``) as a table expression:
    built once into ``scratch`` (every section reads them), else the subquery."""
    name = scratch.table(_PAIRED, {"a": a, "b": b}) if scratch is not None else None
    return name or f"({_PAIRED})"


def pair_stats(store: Store, a: str, b: str, src: str = "") -> PairStats:
    sql = f"""
        SELECT countIf(how = 'request_id'), countIf(how = 'prompt'),
               (SELECT countIf(deployment = {{a:String}}) FROM requests),
               (SELECT countIf(deployment = {{b:String}}) FROM requests),
               countIf(ids_differ), countIf(text_differ), countIf(greedy AND NOT ids_differ),
               countIf(out_differ),
               countIf(a_fin != b_fin)
        FROM {src or f"({_PAIRED})"}
    """
    _, rows = store.query(sql, {"a": a, "b": b})
    r = rows[0]
    pairs = int(r[0]) + int(r[1])
    return PairStats(
        int(r[0]),
        int(r[1]),
        int(r[2]) - pairs,
        int(r[3]) - pairs,
        int(r[4]),
        int(r[5]),
        int(r[6]),
        int(r[7]),
        int(r[8]),
    )


def differing_pairs(
    store: Store, a: str, b: str, what: str, limit: int, src: str = ""
) -> list[dict[str, Any]]:
    """The first ``limit`` pairs (by request ID) whose ``what`` (``ids``, ``text``, ``out``)
    differ, with both sides' sequences."""
    cond = {"ids": "ids_differ", "text": "text_differ", "out": "out_differ"}[what]
    cols = ["a_id", "b_id", "how", "a_pids", "b_pids", "a_text", "b_text"]
    cols += ["a_out", "b_out", "a_lp", "b_lp", "a_fin", "b_fin"]
    sql = f"""
        SELECT {", ".join(cols)} FROM {src or f"({_PAIRED})"}
        WHERE {cond}
        ORDER BY a_id, b_id
        LIMIT {{limit:UInt32}}
    """
    _, rows = store.query(sql, {"a": a, "b": b, "limit": limit})
    return [dict(zip(cols, r, strict=True)) for r in rows]


def finish_changes(store: Store, a: str, b: str, src: str = "") -> list[tuple[str, str, int]]:
    """Paired requests whose finish reason changed: (side a's, side b's, count)."""
    sql = f"""
        SELECT a_fin, b_fin, count() AS n FROM {src or f"({_PAIRED})"}
        WHERE a_fin != b_fin GROUP BY a_fin, b_fin ORDER BY n DESC, a_fin, b_fin
    """
    _, rows = store.query(sql, {"a": a, "b": b})
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


# --- per side ---------------------------------------------------------------------------------


def side_summary(store: Store) -> dict[str, dict[str, Any]]:
    """Per side: requests, replicas, models, engines, versions, fingerprints, time span,
    mean QPS, prompt and output length quantiles, finish reasons, errors."""
    plen = "if(notEmpty(prompt_ids), length(prompt_ids), toUInt64(ifNull(prompt_tokens, 0)))"
    olen = (
        "if(notEmpty(output_ids), length(output_ids), "
        "toUInt64(ifNull(output_tokens, length(token_times_s))))"
    )
    sql = f"""
        SELECT ifNull(deployment, '') AS side, count(), groupUniqArray(replica),
               groupUniqArray(ifNull(model, '')), groupUniqArray(ifNull(engine, '')),
               groupUniqArray(ifNull(engine_version, '')),
               groupUniqArray(ifNull(tokenizer_fp, '')), groupUniqArray(ifNull(template_fp, '')),
               min(t_arrival), max(t_arrival),
               quantilesExact(0.5, 0.9, 0.99)({plen}), quantilesExact(0.5, 0.9, 0.99)({olen}),
               sumMap([ifNull(toString(finish_reason), 'none')], [toUInt64(1)]) AS fr,
               countIf(isNotNull(error)), sum({olen}), fr.1, fr.2
        FROM requests GROUP BY side ORDER BY side
    """
    _, rows = store.query(sql)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        span = float(r[9]) - float(r[8])
        out[str(r[0])] = {
            "requests": int(r[1]),
            "replicas": sorted(map(str, r[2])),
            "models": sorted(map(str, r[3])),
            "engine": sorted(map(str, r[4])),
            "engine_version": sorted(map(str, r[5])),
            "tokenizer_fp": sorted(map(str, r[6])),
            "template_fp": sorted(map(str, r[7])),
            "t_first": float(r[8]),
            "t_last": float(r[9]),
            "qps": (int(r[1]) / span) if span > 0 else None,
            "prompt_tokens": [float(x) for x in r[10]],
            "output_tokens": [float(x) for x in r[11]],
            "finish_reasons": dict(zip(map(str, r[15]), map(int, r[16]), strict=True)),
            "errors": int(r[13]),
            "output_tokens_total": int(r[14]),
        }
    return out


def length_samples(store: Store, side: str, limit: int = 20_000) -> tuple[list[int], list[int]]:
    """Up to ``limit`` prompt and output lengths of a side (a deterministic sample, by
    request ID hash): what the comparability tests take."""
    plen = "if(notEmpty(prompt_ids), length(prompt_ids), toUInt64(ifNull(prompt_tokens, 0)))"
    olen = (
        "if(notEmpty(output_ids), length(output_ids), "
        "toUInt64(ifNull(output_tokens, length(token_times_s))))"
    )
    sql = f"""
        SELECT groupArray({{limit:UInt32}})(p), groupArray({{limit:UInt32}})(o)
        FROM (SELECT {plen} AS p, {olen} AS o FROM requests WHERE deployment = {{side:String}}
              ORDER BY cityHash64(request_id), request_id)
    """
    _, rows = store.query(sql, {"side": side, "limit": limit})
    return [int(x) for x in rows[0][0]], [int(x) for x in rows[0][1]]


def gpu_by_side(store: Store) -> dict[str, dict[str, Any]]:
    """Per side: GPU samples, mean SM clock, power, temperature, utilisation, the share of
    samples under each throttle reason, energy used (counter deltas per GPU), simulated."""
    sql = """
        SELECT side, sum(n), sum(clk_s) / sum(n), sum(pw_s) / sum(n), sum(tc_s) / sum(n),
               sum(ut_s) / sum(n), sumMap(reasons) AS rs, sum(energy), max(sim), rs.1, rs.2
        FROM (
            SELECT ifNull(deployment, '') AS side, replica, gpu_index, count() AS n,
                   sum(ifNull(sm_clock_mhz, 0)) AS clk_s, sum(ifNull(power_w, 0)) AS pw_s,
                   sum(ifNull(temp_c, 0)) AS tc_s, sum(ifNull(util_pct, 0)) AS ut_s,
                   sumMap(arrayMap(x -> x, throttle_reasons),
                          arrayMap(x -> toUInt64(1), throttle_reasons)) AS reasons,
                   max(ifNull(energy_j, 0)) - min(ifNull(energy_j, 0)) AS energy,
                   max(simulated) AS sim
            FROM gpu_samples GROUP BY side, replica, gpu_index
        )
        GROUP BY side ORDER BY side
    """
    _, rows = store.query(sql)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        n = int(r[1])
        out[str(r[0])] = {
            "samples": n,
            "sm_clock_mhz": float(r[2]),
            "power_w": float(r[3]),
            "temp_c": float(r[4]),
            "util_pct": float(r[5]),
            "throttle_share": {str(k): int(v) / n for k, v in zip(r[9], r[10], strict=True) if n},
            "energy_j": float(r[7]),
            "simulated": bool(r[8]),
        }
    return out
