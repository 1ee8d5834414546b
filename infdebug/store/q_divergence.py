"""Queries behind ``replica.output_divergence``: requests that should have given the same
output — the same model, the same prompt IDs, greedy decoding (temperature 0) or the same
seed with the same sampling parameters — grouped in SQL by a hash of the prompt IDs and the
sampling that decides the tokens (not ``max_tokens`` or stop sets: those only decide where an
output ends, so outputs are compared on their common length), with one representative
output per unit (the earliest request) of each group served by two units or more.

Parsing the sampling JSON is what costs (≈ 0.6 s per key per million rows in chDB), so it
is parsed last and least: first the prompt-ID hashes served by two units or more (the
materialised ``prompt_ids_hash``, no JSON; a hash sample of the prompts past
``max_rows`` requests, whole groups kept), then one row per prompt, unit and sampling string
(the earliest), and only those rows' sampling is parsed, once, into a tuple.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infdebug.store.base import Store
from infdebug.store.q_common import MODEL as _MODEL
from infdebug.store.q_common import UNIT as _UNIT
from infdebug.store.q_common import WINDOW as _WINDOW
from infdebug.store.q_common import window_params

HASH_MOD = 1_000_003
# the parameters that decide the tokens, parsed once per representative row
_SAMPLING = (
    "'Tuple(temperature Nullable(Float64), seed Nullable(Int64), top_p Nullable(Float64), "
    "top_k Nullable(Float64), min_p Nullable(Float64), repetition_penalty Nullable(Float64), "
    "presence_penalty Nullable(Float64), frequency_penalty Nullable(Float64))'"
)
_GREEDY = "ifNull(sp.temperature = 0, false)"
# greedy: the penalties still decide the tokens; sampled: the seed and every parameter
_KEY = (
    f"cityHash64(m, h, {_GREEDY}, if({_GREEDY}, toJSONString((sp.repetition_penalty, "
    "sp.presence_penalty, sp.frequency_penalty)), toJSONString(sp)))"
)
_HAS_IDS = "notEmpty(prompt_ids) AND notEmpty(output_ids)"


@dataclass(frozen=True)
class GroupOutput:
    """One unit's representative output in a group of requests that should agree."""

    group: int
    unit: str
    request_id: str  # the unit's earliest request of the group
    t_arrival: float
    output_ids: list[int]
    output_logprobs: list[float]  # [] where not logged (or not one per output ID)
    requests: int  # the unit's requests in the group
    variants: int  # distinct outputs among them
    greedy: bool
    prompt_len: int


@dataclass(frozen=True)
class GroupSample:
    outputs: list[GroupOutput]
    requests: int  # requests with prompt and output IDs in the window
    prompt_share: float  # the share of prompt hashes looked at (1.0: all)


def group_outputs(
    store: Store, window: Mapping[str, Any], model: str, max_groups: int, max_rows: int
) -> GroupSample:
    """Per group served by two units or more (of at most ``max_groups`` prompts: the lowest
    prompt-ID hashes), each unit's earliest output."""
    p = window_params(window, model=model, max_groups=max_groups)
    _, n = store.query(
        f"SELECT count() FROM requests WHERE {_WINDOW} AND {_MODEL} AND {_HAS_IDS}", p
    )
    total = int(n[0][0]) if n else 0
    keep = HASH_MOD if total <= max_rows else max(1, HASH_MOD * max_rows // total)
    _, rows = store.query(
        f"""
        WITH shared AS (
            SELECT prompt_ids_hash AS h FROM requests
            WHERE {_WINDOW} AND {_MODEL} AND {_HAS_IDS}
              AND prompt_ids_hash % {HASH_MOD} < {{keep:UInt64}}
            GROUP BY h HAVING uniqExact(cityHash64(replica, ifNull(deployment, ''))) >= 2
            ORDER BY h LIMIT {{max_groups:UInt64}}
        ),
        reps AS (
            SELECT prompt_ids_hash AS h, {_UNIT} AS unit, ifNull(model, '') AS m,
                   argMin((request_id, t_arrival, output_ids,
                           if(length(output_logprobs) = length(output_ids), output_logprobs, []),
                           length(prompt_ids)),
                          (t_arrival, request_id)) AS first,
                   count() AS n, groupUniqArray(cityHash64(output_ids)) AS outs,
                   JSONExtract(ifNull(any(sampling), '{{}}'), {_SAMPLING}) AS sp
            FROM requests
            WHERE {_WINDOW} AND {_MODEL} AND {_HAS_IDS}
              AND prompt_ids_hash IN (SELECT h FROM shared)
            GROUP BY h, unit, m, cityHash64(ifNull(sampling, ''))
        )
        SELECT g, unit, best.1, best.2, best.3, best.4, best.5, requests, length(variants), greedy
        FROM (
            SELECT {_KEY} AS g, unit, {_GREEDY} AS greedy,
                   argMin(first, (first.2, first.1)) AS best, sum(n) AS requests,
                   arrayDistinct(arrayFlatten(groupArray(outs))) AS variants
            FROM reps
            WHERE {_GREEDY} OR sp.seed IS NOT NULL
            GROUP BY g, unit, greedy
        )
        ORDER BY g, unit
        """,
        {**p, "keep": keep},
    )
    outputs = [
        GroupOutput(
            int(g),
            str(unit),
            str(rid),
            float(t),
            [int(x) for x in out],
            [float(x) for x in lps],
            int(n),
            int(v),
            bool(greedy),
            int(plen),
        )
        for g, unit, rid, t, out, lps, plen, n, v, greedy in rows
    ]
    return GroupSample(outputs, total, keep / HASH_MOD)
