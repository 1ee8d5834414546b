"""Queries behind the train-serve skew analyzers (``skew.*``): what the served traffic looks
like, per deployment, in aggregates (length histograms, prompt-token counts of a sample,
special-token presence, sampling-parameter ranges) and in bounded samples (prompts for
skeletons, requests to re-score).

Samples are chosen by a hash of the request ID (the same requests whatever order they were
ingested in, whatever the replicas are called). Every function takes the window parameters
of ``AnalysisContext.window()`` and the served model ("" for every request) and binds them.
The deployment key is ``ifNull(deployment, '')``; fields named ``unit`` hold the
``q_common.UNIT`` value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infdebug.skew_reference import SAMPLING_KEYS
from infdebug.store.base import Store
from infdebug.store.q_common import MODEL as _MODEL
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import earliest_ids, window_params

DEP = "ifNull(deployment, '')"
HASH = "cityHash64(request_id)"
HASH_MOD = 1_000_003  # a hash sample keeps rows whose hash mod this is under a bound
SLICES = 32  # time slices a sample of the window is drawn from
SLICE_MARGIN = 3.0  # slices hold about this many times the rows a sample needs
_STOP_IDS = "JSONExtract(ifNull(sampling, '{}'), 'stop_ids', 'Array(UInt32)')"
_MAX_TOKENS = "JSONExtract(ifNull(sampling, '{}'), 'max_tokens', 'Nullable(Float64)')"
# the prompt's length in tokens: its IDs, else the count the engine reported
PROMPT_LEN = "if(notEmpty(prompt_ids), length(prompt_ids), ifNull(prompt_tokens, 0))"
# the output's length without the stop token that ended it (engines that log it)
OUTPUT_LEN = (
    "if(notEmpty(output_ids), length(output_ids) - toUInt64(finish_reason = 'stop' "
    f"AND has({_STOP_IDS}, output_ids[-1])), ifNull(output_tokens, 0))"
)


def _params(window: Mapping[str, Any], model: str, **extra: Any) -> dict[str, Any]:
    return window_params(window, model=model, **extra)


def deployment_counts(
    store: Store, window: Mapping[str, Any], model: str, *, with_ids: bool = True
) -> dict[str, int]:
    """Requests (with prompt IDs, or all) per deployment ("" for none)."""
    _, rows = store.query(
        f"SELECT {DEP} AS d, count() FROM requests "
        f"WHERE {_WINDOW} AND {_MODEL} AND (notEmpty(prompt_ids) OR NOT {{with_ids:Bool}}) "
        "GROUP BY d ORDER BY d",
        _params(window, model, with_ids=with_ids),
    )
    return {str(d): int(n) for d, n in rows}


def _keep(counts: Mapping[str, int], rows: int) -> tuple[list[str], list[int]]:
    """Per group, the hash bound that keeps about ``rows`` of its rows (all of a small one)."""
    keys = sorted(counts)
    keeps = [HASH_MOD if counts[k] <= rows else max(1, HASH_MOD * rows // counts[k]) for k in keys]
    return keys, keeps


@dataclass(frozen=True)
class Sample:
    """An AND-able condition that keeps about ``want`` rows of each group (a deployment or a
    unit), its bound parameters, and the share of each group's rows it keeps."""

    where: str
    params: dict[str, Any]
    shares: dict[str, float]


def _sample(
    store: Store,
    window: Mapping[str, Any],
    model: str,
    counts: Mapping[str, int],
    want: int,
    by: str = DEP,
) -> Sample:
    """About ``want`` rows of each group of ``counts`` (keys: values of ``by``): first
    ``SLICES`` evenly spaced slices of the window's time span, as wide as needed (the
    primary key, on replica and arrival time, skips the granules outside them, so the large
    columns of the rest are never read; a hash of the request ID alone would touch every
    granule), then a hash of the request ID within them."""
    # wide enough for the smallest group that has ``want`` rows to give them (a smaller group
    # gives what its slices hold)
    big = [n for n in counts.values() if want > 0 and n >= want]
    frac = min(1.0, SLICE_MARGIN * want / min(big)) if big else 1.0
    where, params = "1", dict[str, Any]()
    if frac < 1.0:
        _, b = store.query(
            f"SELECT min(t_arrival), max(t_arrival) FROM requests WHERE {_WINDOW} AND {_MODEL}",
            _params(window, model),
        )
        lo, hi = (float(b[0][0]), float(b[0][1])) if b and b[0][0] is not None else (0.0, 0.0)
        if hi > lo:
            step = (hi - lo) / SLICES
            parts = []
            for i in range(SLICES):
                parts.append(
                    f"(t_arrival >= {{sl_a{i}:Float64}} AND t_arrival < {{sl_b{i}:Float64}})"
                )
                params[f"sl_a{i}"] = lo + i * step
                params[f"sl_b{i}"] = lo + i * step + frac * step
            where = "(" + " OR ".join(parts) + ")"
        else:
            frac = 1.0
    keys, keeps = _keep({k: max(1, int(n * frac)) for k, n in counts.items()}, want)
    where += (
        f" AND {HASH} % {HASH_MOD} < transform({by}, {{s_keys:Array(String)}}, "
        f"{{s_keeps:Array(UInt64)}}, toUInt64({HASH_MOD}))"
    )
    params.update(s_keys=keys, s_keeps=keeps)
    shares = {k: frac * kp / HASH_MOD for k, kp in zip(keys, keeps, strict=True)}
    return Sample(where, params, shares)


@dataclass
class LengthHistograms:
    deployment: str
    prompt: Counter[int] = field(default_factory=Counter)
    output: Counter[int] = field(default_factory=Counter)  # requests with room to finish only
    outputs_left_out: int = 0  # finished requests whose max_tokens was under the room asked


def length_histograms(
    store: Store, window: Mapping[str, Any], model: str, room: int, per_deployment: int
) -> dict[str, LengthHistograms]:
    """Per deployment (a hash sample of about ``per_deployment`` requests of each): prompt
    lengths of the requests with a prompt, and output lengths of the requests that finished
    (stop or length) with ``max_tokens`` ≥ ``room`` or none."""
    counts = deployment_counts(store, window, model, with_ids=False)
    if not counts:
        return {}
    smp = _sample(store, window, model, counts, per_deployment)
    roomy = f"(isNull({_MAX_TOKENS}) OR {_MAX_TOKENS} >= {{room:Float64}})"
    finished = "finish_reason IN ('stop', 'length')"
    _, rows = store.query(
        f"""
        SELECT d, which, len, count() FROM (
            SELECT {DEP} AS d, pair.1 AS which, pair.2 AS len FROM requests
            ARRAY JOIN [('p', toUInt64({PROMPT_LEN})),
                        ('o', toUInt64(if({finished} AND {roomy}, {OUTPUT_LEN}, 0))),
                        ('x', toUInt64({finished} AND NOT {roomy}))] AS pair
            WHERE {_WINDOW} AND {_MODEL} AND {smp.where}
        )
        WHERE len > 0
        GROUP BY d, which, len
        ORDER BY d, which, len
        """,
        _params(window, model, room=float(room), **smp.params),
    )
    out: dict[str, LengthHistograms] = {}
    for d, which, length, n in rows:
        h = out.setdefault(str(d), LengthHistograms(str(d)))
        if which == "p":
            h.prompt[int(length)] += int(n)
        elif which == "o":
            h.output[int(length)] += int(n)
        else:
            h.outputs_left_out += int(n)
    return out


@dataclass
class TokenSample:
    deployment: str
    requests: int  # requests in the sample
    counts: Counter[int]  # prompt token ID → occurrences in the sample
    population: int  # requests with prompt IDs in the deployment


def prompt_token_counts(
    store: Store, window: Mapping[str, Any], model: str, per_deployment: int
) -> dict[str, TokenSample]:
    """Per deployment: the prompt-token unigram counts of up to ``per_deployment`` requests
    (the lowest request-ID hashes)."""
    counts = deployment_counts(store, window, model)
    if not counts:
        return {}
    smp = _sample(store, window, model, counts, 4 * per_deployment)
    p = _params(window, model, n=per_deployment, **smp.params)
    pick = f"""
        SELECT request_id FROM requests
        WHERE {_WINDOW} AND {_MODEL} AND notEmpty(prompt_ids) AND {smp.where}
        ORDER BY {DEP}, {HASH}, request_id
        LIMIT {{n:UInt64}} BY {DEP}"""
    _, sizes = store.query(
        f"SELECT {DEP} AS d, count() FROM requests WHERE request_id IN ({pick}) "
        f"AND {_WINDOW} AND {_MODEL} AND notEmpty(prompt_ids) AND {smp.where} GROUP BY d",
        p,
    )
    _, rows = store.query(
        f"""
        SELECT d, id, count() FROM (
            SELECT {DEP} AS d, prompt_ids FROM requests
            PREWHERE request_id IN ({pick})
            WHERE {_WINDOW} AND {_MODEL} AND notEmpty(prompt_ids) AND {smp.where}
        )
        ARRAY JOIN prompt_ids AS id
        GROUP BY d, id
        """,
        p,
    )
    out = {str(d): TokenSample(str(d), int(n), Counter(), counts.get(str(d), 0)) for d, n in sizes}
    for d, tid, n in rows:
        if str(d) in out:
            out[str(d)].counts[int(tid)] += int(n)
    return out


@dataclass
class SpecialCounts:
    unit: str
    requests: int  # prompts looked at
    present: dict[int, int]  # special ID → prompts holding it at least once
    double_bos: int  # prompts starting with the BOS twice
    missing_bos: int  # prompts not starting with the BOS
    double_bos_ids: list[str]
    missing_bos_ids: list[str]
    present_ids: dict[int, list[str]]  # special ID → the earliest prompts holding it


def special_counts(
    store: Store,
    window: Mapping[str, Any],
    model: str,
    special_ids: Sequence[int],
    bos_id: int | None,
    per_deployment: int,
) -> list[SpecialCounts]:
    """Per unit: how many of its prompts (a hash sample of about ``per_deployment`` per
    deployment) hold each special ID, and start with the BOS twice or without it."""
    counts = deployment_counts(store, window, model)
    if not counts:
        return []
    smp = _sample(store, window, model, counts, per_deployment)
    bos = -1 if bos_id is None else int(bos_id)
    p = _params(window, model, sp=sorted(set(special_ids)), bos=bos, **smp.params)
    where = f"{_WINDOW} AND {_MODEL} AND notEmpty(prompt_ids) AND {smp.where}"
    dbl = "(prompt_ids[1] = {bos:Int64} AND prompt_ids[2] = {bos:Int64})"
    miss = "(prompt_ids[1] != {bos:Int64})"
    _, rows = store.query(
        f"""
        SELECT {_UNIT} AS unit, count(), countIf({dbl}), countIf({miss}),
               {earliest_ids(5, dbl)}, {earliest_ids(5, miss)}
        FROM requests WHERE {where}
        GROUP BY unit ORDER BY unit
        """,
        p,
    )
    out = {
        str(r[0]): SpecialCounts(
            str(r[0]),
            int(r[1]),
            {},
            int(r[2]),
            int(r[3]),
            [str(x) for x in r[4]],
            [str(x) for x in r[5]],
            {},
        )
        for r in rows
    }
    _, prows = store.query(
        f"""
        SELECT unit, sid, count(), {earliest_ids(5)} FROM (
            SELECT {_UNIT} AS unit, t_arrival, request_id,
                   arrayDistinct(arrayFilter(x -> has({{sp:Array(UInt32)}}, x), prompt_ids)) AS s
            FROM requests WHERE {where}
        )
        ARRAY JOIN s AS sid
        GROUP BY unit, sid ORDER BY unit, sid
        """,
        p,
    )
    for unit, sid, n, ids in prows:
        if str(unit) in out:
            out[str(unit)].present[int(sid)] = int(n)
            out[str(unit)].present_ids[int(sid)] = [str(x) for x in ids]
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class PromptRow:
    deployment: str
    unit: str
    request_id: str
    t_arrival: float
    messages: str | None  # JSON as stored
    prompt_text: str | None
    prompt_ids: list[int]  # only where there is no prompt text
    template_fp: str | None


def prompt_sample(
    store: Store, window: Mapping[str, Any], model: str, per_deployment: int
) -> list[PromptRow]:
    """Up to ``per_deployment`` prompts of each deployment (lowest request-ID hashes) with
    their messages and text (or IDs, where no text was logged)."""
    counts = deployment_counts(store, window, model)
    if not counts:
        return []
    smp = _sample(store, window, model, counts, 4 * per_deployment)
    _, rows = store.query(
        f"""
        SELECT {DEP} AS d, {_UNIT}, request_id, t_arrival, messages, prompt_text,
               if(prompt_text IS NULL, prompt_ids, []), template_fp
        FROM requests
        WHERE request_id IN (
            SELECT request_id FROM requests
            WHERE {_WINDOW} AND {_MODEL} AND (prompt_text IS NOT NULL OR notEmpty(prompt_ids))
              AND {smp.where}
            ORDER BY {DEP}, {HASH}, request_id
            LIMIT {{n:UInt64}} BY {DEP})
          AND {_WINDOW} AND {_MODEL} AND {smp.where}
        ORDER BY d, {HASH}, request_id
        """,
        _params(window, model, n=per_deployment, **smp.params),
    )
    return [
        PromptRow(str(d), str(u), str(rid), float(t), m, text, [int(x) for x in ids], fp)
        for d, u, rid, t, m, text, ids, fp in rows
    ]


@dataclass(frozen=True)
class SamplingRange:
    deployment: str
    key: str
    requests: int  # requests that set the parameter (to a number)
    below: int
    above: int
    low: float
    high: float
    outside_ids: list[str]


# parsed once per row (each JSON key apart costs a parse of its own)
_SAMPLING_TUPLE = (
    "JSONExtract(ifNull(sampling, '{}'), 'Tuple("
    + ", ".join(f"{k} Nullable(Float64)" for k in SAMPLING_KEYS)
    + ")')"
)
_SAMPLING_VALUES = "[" + ", ".join(f"sp.{k}" for k in SAMPLING_KEYS) + "]"


def sampling_ranges(
    store: Store,
    window: Mapping[str, Any],
    model: str,
    ranges: Mapping[str, tuple[float, float]],
    off_values: Mapping[str, float],
    per_deployment: int,
) -> tuple[list[SamplingRange], dict[str, float]]:
    """Per deployment (a hash sample of about ``per_deployment`` requests of each) and
    parameter of ``ranges`` (key → (low, high), keys of ``SAMPLING_KEYS``): requests that set
    it, how many below ``low`` / above ``high``, the range served, the earliest outside; and
    the share of each deployment's requests sampled. ``off_values``: parameters whose value
    ≤ 0 means "off" (top_k), read as this value."""
    keys = sorted(k for k in ranges if k in SAMPLING_KEYS)
    counts = deployment_counts(store, window, model, with_ids=False)
    if not keys or not counts:
        return [], {}
    smp = _sample(store, window, model, counts, per_deployment)
    off = "transform(key, {off_keys:Array(String)}, {off_vals:Array(Float64)}, nan)"
    _, rows = store.query(
        f"""
        SELECT d, key, count(), countIf(v < lo), countIf(v > hi), min(v), max(v),
               {earliest_ids(5, "v < lo OR v > hi")}
        FROM (
            SELECT d, t_arrival, request_id, key, raw,
                   if(isNaN({off}) OR raw > 0, raw, {off}) AS v,
                   transform(key, {{keys:Array(String)}}, {{los:Array(Float64)}}, nan) AS lo,
                   transform(key, {{keys:Array(String)}}, {{his:Array(Float64)}}, nan) AS hi
            FROM (
                SELECT {DEP} AS d, t_arrival, request_id, {_SAMPLING_TUPLE} AS sp
                FROM requests WHERE {_WINDOW} AND {_MODEL} AND {smp.where}
            )
            ARRAY JOIN {{all_keys:Array(String)}} AS key, {_SAMPLING_VALUES} AS raw
            WHERE has({{keys:Array(String)}}, key) AND raw IS NOT NULL
        )
        GROUP BY d, key ORDER BY d, key
        """,
        _params(
            window,
            model,
            keys=keys,
            all_keys=list(SAMPLING_KEYS),
            los=[float(ranges[k][0]) for k in keys],
            his=[float(ranges[k][1]) for k in keys],
            off_keys=sorted(off_values),
            off_vals=[float(off_values[k]) for k in sorted(off_values)],
            **smp.params,
        ),
    )
    out = [
        SamplingRange(
            str(r[0]),
            str(r[1]),
            int(r[2]),
            int(r[3]),
            int(r[4]),
            float(r[5]),
            float(r[6]),
            [str(x) for x in r[7]],
        )
        for r in rows
    ]
    return out, smp.shares


@dataclass(frozen=True)
class RescoreRow:
    unit: str
    request_id: str
    prompt_ids: list[int]
    output_ids: list[int]
    output_logprobs: list[float]
    greedy: bool


GREEDY = (
    "ifNull(JSONExtract(ifNull(sampling, '{}'), 'temperature', 'Nullable(Float64)') = 0, false)"
)


def rescore_sample(
    store: Store, window: Mapping[str, Any], model: str, per_unit: int
) -> list[RescoreRow]:
    """Up to ``per_unit`` requests of each unit (lowest request-ID hashes) that logged
    prompt and output IDs and either output logprobs or greedy decoding: what re-scoring
    can compare. The sampling JSON is parsed only on a hash prefilter of each unit's rows,
    widened until it holds enough (or is every row)."""
    ids = "notEmpty(prompt_ids) AND notEmpty(output_ids)"
    cond = f"(length(output_logprobs) = length(output_ids) OR {GREEDY})"
    _, counts = store.query(
        f"SELECT {_UNIT} AS unit, count() FROM requests "
        f"WHERE {_WINDOW} AND {_MODEL} AND {ids} GROUP BY unit",
        _params(window, model),
    )
    sizes = {str(u): int(n) for u, n in counts}
    want = 8 * per_unit
    rows: list[tuple[Any, ...]] = []
    while sizes:
        smp = _sample(store, window, model, sizes, want, by=_UNIT)
        _, rows = store.query(
            f"""
            SELECT {_UNIT} AS unit, request_id, prompt_ids, output_ids,
                   if(length(output_logprobs) = length(output_ids), output_logprobs, []),
                   {GREEDY}
            FROM requests
            WHERE {_WINDOW} AND {_MODEL} AND {ids}
              AND {smp.where} AND {cond}
            ORDER BY unit, {HASH}, request_id
            LIMIT {{n:UInt64}} BY unit
            """,
            _params(window, model, n=per_unit, **smp.params),
        )
        found = Counter(str(r[0]) for r in rows)
        short = [u for u, share in smp.shares.items() if share < 1.0]
        if all(found[u] >= per_unit for u in short):
            break
        want *= 16  # a unit's prefilter held too few requests that can be compared: widen it
    return [
        RescoreRow(
            str(u),
            str(rid),
            [int(x) for x in p],
            [int(x) for x in o],
            [float(x) for x in lp],
            bool(g),
        )
        for u, rid, p, o, lp, g in rows
    ]
