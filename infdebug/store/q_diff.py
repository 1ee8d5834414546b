"""Queries behind ``infdebug diff``: labelling the two sides of a store, pairing their
requests, and the per-side aggregates of the diff's sections.

A diff store holds two sides: every request, GPU sample and event carries its side's label
in ``deployment``, set as it is loaded (``side_assign``), and its own deployment beside it
(``side_deployments``). Labels, selectors and thresholds are bound parameters; the only text
formatted into SQL is fixed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.scratch import Scratch

SIDE_TABLES = ("requests", "gpu_samples", "events")
_TIME = {"requests": "t_arrival", "gpu_samples": "t", "events": "t"}


# The side's own deployment, kept beside the label for the report: a column only a diff's
# temporary store has (``prepare``).
OWN_DEPLOYMENT = "own_deployment"
COMPACT_BELOW = 1 << 50  # parts smaller than this are compact: all of them


def prepare(store: Store) -> None:
    """Give a (temporary) diff store the column each row's own deployment is kept in, and
    parts written as one file each and never merged: a diff's store lives for one run;
    creating a wide part's hundred-odd files was a third of loading a 1 GB log (6.2 s
    against 4.5 s, with less memory), and background merges competed with the analyzers."""
    for t in SIDE_TABLES:
        store.command(
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {OWN_DEPLOYMENT} "
            "LowCardinality(Nullable(String))"
        )
        store.command(
            f"ALTER TABLE {t} MODIFY SETTING min_bytes_for_wide_part = {COMPACT_BELOW}, "
            f"min_rows_for_wide_part = {COMPACT_BELOW}"
        )
        # nor merged: merges of the parts just loaded took the CPU the analyzers then wanted
        store.command(f"SYSTEM STOP MERGES {t}")


def side_assign() -> dict[str, dict[str, str]]:
    """What a side's load stores (``Ingestor(assign=…)``): its label (the bound parameter
    ``side``) in ``deployment``, the line's own deployment in ``own_deployment``. Labelling
    at load costs nothing; a mutation afterwards rewrote the column of every part (3 s on
    two 200 MB logs)."""
    return {t: {"deployment": "{side:String}", OWN_DEPLOYMENT: "`deployment`"} for t in SIDE_TABLES}


def side_deployments(store: Store, label: str) -> list[str]:
    """The deployments side ``label``'s requests named in its logs, '' for none."""
    _, rows = store.query(
        f"SELECT DISTINCT ifNull({OWN_DEPLOYMENT}, '') AS d FROM requests "
        "WHERE deployment = {label:String} ORDER BY d",
        {"label": label},
    )
    return [str(r[0]) for r in rows]


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
# else its token IDs (by the stored hashes of the last two); with the sampling parameters
# that change an answer.
_CONTENT = (
    "multiIf(notEmpty(ifNull(messages, '')), cityHash64(ifNull(messages, '')), "
    "notEmpty(ifNull(prompt_text, '')), prompt_text_hash, prompt_ids_hash)"
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

# One row per request of either side with its content key: built once per diff (the JSON
# of the sampling parameters is read here only).
_KEYED = f"""
    SELECT request_id, deployment AS side, t_arrival,
           cityHash64({_CONTENT}, {_SAMPLING}) AS ckey
    FROM requests WHERE deployment IN ({{a:String}}, {{b:String}})
"""


def _pairs(keyed: str) -> str:
    """The pairs from ``keyed`` (``_KEYED``'s rows): by request ID where it is on each side
    once, else the k-th unpaired request of a content key on one side meets the k-th on the
    other, by arrival."""
    side = (
        "SELECT request_id, ckey, row_number() OVER (PARTITION BY ckey "
        "ORDER BY t_arrival, request_id) AS k FROM {keyed} WHERE side = {{{s}:String}} "
        "AND request_id NOT IN (SELECT request_id FROM ids)"
    )
    return f"""
    WITH ids AS (
        SELECT request_id FROM {keyed}
        GROUP BY request_id
        HAVING countIf(side = {{a:String}}) = 1 AND countIf(side = {{b:String}}) = 1
    )
    SELECT request_id AS a_id, request_id AS b_id, 'request_id' AS how FROM ids
    UNION ALL
    SELECT x.request_id, y.request_id, 'prompt'
    FROM ({side.format(keyed=keyed, s="a")}) AS x
    JOIN ({side.format(keyed=keyed, s="b")}) AS y ON x.ckey = y.ckey AND x.k = y.k
    """


PAIRS = _pairs(f"({_KEYED})")


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


# The pairs, with what differs between the two requests of each: only keys and flags, so
# that the table a diff builds once stays small (the sequences of the few pairs a section
# shows are fetched by ``differing_pairs``). Prompts compare by their stored hashes.
_SIDE_ROWS = f"""
    SELECT request_id, notEmpty(prompt_ids) AS has_ids, prompt_ids_hash AS ih,
           notEmpty(ifNull(prompt_text, '')) AS has_text, prompt_text_hash AS th,
           output_ids, ifNull(toString(finish_reason), '') AS fin, {_GREEDY} AS greedy
    FROM requests WHERE deployment = {{side:String}}
"""


def _paired(pairs: str) -> str:
    return f"""
    SELECT p.how AS how, p.a_id AS a_id, p.b_id AS b_id,
           ra.fin AS a_fin, rb.fin AS b_fin,
           ra.greedy AND rb.greedy AS greedy,
           ra.has_ids AND rb.has_ids AND ra.ih != rb.ih AS ids_differ,
           ra.has_text AND rb.has_text AND ra.th != rb.th AS text_differ,
           greedy AND NOT ids_differ AND notEmpty(ra.output_ids) AND notEmpty(rb.output_ids)
               AND arraySlice(ra.output_ids, 1, least(length(ra.output_ids),
                                                      length(rb.output_ids)))
                   != arraySlice(rb.output_ids, 1, least(length(ra.output_ids),
                                                         length(rb.output_ids))) AS out_differ
    FROM ({pairs}) AS p
    JOIN ({_SIDE_ROWS.replace("{side:String}", "{a:String}")}) AS ra ON p.a_id = ra.request_id
    JOIN ({_SIDE_ROWS.replace("{side:String}", "{b:String}")}) AS rb ON p.b_id = rb.request_id
    """


_PAIRED = _paired(PAIRS)


def paired_source(store: Store, a: str, b: str, scratch: Scratch | None) -> str:
    """The paired requests of sides ``a`` and ``b`` (``_PAIRED``) as a table expression:
    built once into ``scratch`` (every section reads them), else the subquery."""
    params = {"a": a, "b": b}
    keyed = scratch.table(_KEYED, params) if scratch is not None else None
    if scratch is None or keyed is None:
        return f"({_PAIRED})"
    return scratch.table(_paired(_pairs(keyed)), params) or f"({_PAIRED})"


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
    differ, with both sides' sequences (read for just those pairs)."""
    cond = {"ids": "ids_differ", "text": "text_differ", "out": "out_differ"}[what]
    cols = ["a_id", "b_id", "how", "a_pids", "b_pids", "a_text", "b_text"]
    cols += ["a_out", "b_out", "a_lp", "b_lp", "a_fin", "b_fin"]
    seq = (
        "SELECT request_id, prompt_ids, ifNull(prompt_text, '') AS text, output_ids, "
        "output_logprobs FROM requests WHERE deployment = {{{side}:String}} "
        "AND request_id IN (SELECT {key} FROM picked)"
    )
    sql = f"""
        WITH picked AS (
            SELECT a_id, b_id, how, a_fin, b_fin FROM {src or f"({_PAIRED})"}
            WHERE {cond} ORDER BY a_id, b_id LIMIT {{limit:UInt32}}
        )
        SELECT d.a_id, d.b_id, d.how, ra.prompt_ids, rb.prompt_ids, ra.text, rb.text,
               ra.output_ids, rb.output_ids, ra.output_logprobs, rb.output_logprobs,
               d.a_fin, d.b_fin
        FROM picked AS d
        JOIN ({seq.format(side="a", key="a_id")}) AS ra ON d.a_id = ra.request_id
        JOIN ({seq.format(side="b", key="b_id")}) AS rb ON d.b_id = rb.request_id
        ORDER BY d.a_id, d.b_id
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
        SELECT side, sum(n), toFloat64(sum(clk_s)) / sum(n), toFloat64(sum(pw_s)) / sum(n),
               toFloat64(sum(tc_s)) / sum(n), toFloat64(sum(ut_s)) / sum(n),
               sumMap(reasons) AS rs, toFloat64(sum(toDecimal128(energy, 6))), max(sim), rs.1,
               rs.2
        FROM (
            -- summed as decimals: a float sum's last digits follow the order parts are read in
            SELECT ifNull(deployment, '') AS side, replica, gpu_index, count() AS n,
                   sum(toDecimal128(ifNull(sm_clock_mhz, 0), 6)) AS clk_s,
                   sum(toDecimal128(ifNull(power_w, 0), 6)) AS pw_s,
                   sum(toDecimal128(ifNull(temp_c, 0), 6)) AS tc_s,
                   sum(toDecimal128(ifNull(util_pct, 0), 6)) AS ut_s,
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
