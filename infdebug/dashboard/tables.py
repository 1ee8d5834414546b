"""The dashboard's tables: the fleet's series from per-replica buckets, the per-replica
percentile table against the fleet, and a frame as a Markdown table (for the report)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def fleet_series(bins: pd.DataFrame, width: int) -> pd.DataFrame:
    g = bins.groupby("t", as_index=False)[["requests", "met", "errors"]].sum()
    g["qps"] = g["requests"] / width
    g["attainment"] = g["met"] / g["requests"].where(g["requests"] > 0)
    return g


def unit_table_view(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    fleet = df[df["unit"] == ""]
    fl = fleet.iloc[0] if len(fleet) else None
    for _, r in df.iterrows():
        row = {
            "replica": "fleet" if r["unit"] == "" else r["replica_label"],
            "requests": int(r["requests"]),
            "errors": int(r["errors"]),
        }
        for m, name in (
            ("ttft_s", "TTFT"),
            ("tpot_s", "TPOT"),
            ("e2e_s", "e2e"),
            ("queue_s", "queue"),
        ):
            q = r[m] if r[m] is not None else [None] * 3
            for label, v in zip(("p50", "p90", "p99"), q, strict=True):
                row[f"{name} {label} ms"] = None if v is None else round(float(v) * 1000, 2)
        if fl is not None and r["unit"] != "":
            fq = fl["tpot_s"] if fl["tpot_s"] is not None else None
            q = r["tpot_s"] if r["tpot_s"] is not None else None
            if fq and q and fq[2]:
                row["TPOT p99 vs fleet"] = round(float(q[2]) / float(fq[2]), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    """A frame as a GitHub Markdown table (cells escaped)."""

    def cell(v: Any) -> str:
        s = "" if v is None or (isinstance(v, float) and v != v) else str(v)
        return s.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])
