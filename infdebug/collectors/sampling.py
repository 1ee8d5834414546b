"""Trace sampling at ingest: which requests keep their full token arrays and texts.

At fleet scale the token arrays and texts are nearly all of a request's bytes
(bench/storage.py: about 4.8 kB of ~4.9 kB); the aggregates (latencies, token counts,
finish reason, fingerprints) are ~70 B. ``TraceSample`` keeps every anomalous request
whole (an error, a finish other than ``stop`` or none, a TTFT, end-to-end time or
inter-token gap past its limit) and a ``share`` of the others, chosen by a hash of the
request ID and ``seed`` (the same request is chosen on every load and every node); the
rest are stored with their aggregates only: no IDs, times, logprobs, texts or messages,
and ``prompt_tokens``/``output_tokens`` filled from the arrays' lengths where the engine
gave none.

It is SQL over the read row (``Table.assign``), so the fast and careful ingest paths
apply it alike; values are bound parameters. ``INFDEBUG_TRACE_SAMPLE`` or
``infdebug ingest --trace-sample`` set the share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infdebug.errors import InputError
from infdebug.store.ddl import TABLES

# Dropped from a request that is not kept whole (by the empty value of its type). The times
# are stored as ``token_offsets_us`` (``token_times_s`` is an ALIAS of it, store/ddl.py).
TRACE_COLUMNS: dict[str, str] = {
    "token_offsets_us": "[]",
    "prompt_ids": "[]",
    "output_ids": "[]",
    "output_logprobs": "[]",
    "prompt_text": "NULL",
    "output_text": "NULL",
    "messages": "NULL",
}
SCALE = 1_000_000  # the share in parts per million


@dataclass(frozen=True)
class TraceSample:
    """Keep anomalous requests and ``share`` of the rest with their full traces."""

    share: float = 1.0
    seed: int = 0
    ttft_limit_s: float = 2.0
    gap_limit_s: float = 0.5
    e2e_limit_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1:
            raise InputError(f"trace sample share {self.share!r}: expected 0..1")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"trace sample seed {self.seed!r}: expected 0..2^63-1")

    @property
    def active(self) -> bool:
        return self.share < 1

    def keep_sql(self) -> str:
        """True for a read request row that keeps its traces."""
        cols = {c.name: c for c in TABLES["request"].columns}
        times = cols["token_times_s"].select  # either form of the times
        gap = f"arrayMax(arrayPopFront(arrayDifference({times})))"
        anomalous = (
            "`error` IS NOT NULL OR ifNull(`finish_reason`, '') != 'stop' "
            "OR ifNull(`ttft_s`, 0) > {ts_ttft:Float64} "
            "OR ifNull(`e2e_s`, 0) > {ts_e2e:Float64} "
            f"OR (length({times}) > 1 AND {gap} > {{ts_gap:Float64}})"
        )
        chosen = "cityHash64({ts_seed:UInt64}, `request_id`) % " + str(SCALE)
        return f"(({anomalous}) OR {chosen} < {{ts_ppm:UInt64}})"

    def assign(self) -> dict[str, dict[str, str]]:
        """The ``Ingestor(assign=…)`` for the requests table (empty when inactive)."""
        if not self.active:
            return {}
        cols = {c.name: c for c in TABLES["request"].stored_columns}
        keep = self.keep_sql()
        out = {
            name: f"if({keep}, {cols[name].select}, {empty})"
            for name, empty in TRACE_COLUMNS.items()
        }
        for count, arr in (("prompt_tokens", "prompt_ids"), ("output_tokens", "output_ids")):
            n = f"nullIf(toUInt32(length({cols[arr].select})), 0)"
            out[count] = f"if({keep}, {cols[count].select}, ifNull({cols[count].select}, {n}))"
        return {"requests": out}

    def params(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {
            "ts_seed": self.seed,
            "ts_ppm": round(self.share * SCALE),
            "ts_ttft": self.ttft_limit_s,
            "ts_gap": self.gap_limit_s,
            "ts_e2e": self.e2e_limit_s,
        }


def merge_assign(
    *parts: tuple[dict[str, dict[str, str]], dict[str, Any]],
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """Several ``(assign, params)`` as one; a column given twice is an error."""
    assign: dict[str, dict[str, str]] = {}
    params: dict[str, Any] = {}
    for a, p in parts:
        for table, cols in a.items():
            have = assign.setdefault(table, {})
            both = set(have) & set(cols)
            if both:
                raise InputError(f"{table}: {', '.join(sorted(both))} assigned twice")
            have.update(cols)
        params.update(p)
    return assign, params
