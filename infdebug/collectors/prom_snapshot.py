"""Prometheus exposition snapshots (``curl …/metrics > r1.prom``) as contract ``metrics`` records.

The text is parsed by prometheus_client's own parser
(``prometheus_client.parser.text_string_to_metric_families``). That parser stops at the
first line it cannot read, so each line is first checked on its own: a malformed line is
rejected with its file and line number, and the rest of the snapshot loads.

One record per sample, except:

* a histogram is one record per label set (``le`` left out of the labels), with
  ``buckets`` (le → cumulative count), ``sum`` and ``count``;
* a summary is one record per label set (``quantile`` left out) with ``sum`` and
  ``count``, plus one record per quantile (its ``quantile`` label kept, ``value`` set).

Counters keep their exposed sample name (``vllm:prompt_tokens_total``). The replica is
the file name (``r1.prom`` → ``r1``) unless ``--replica`` names it; the time is the
sample's own timestamp where the exposition carries one, else the file's mtime.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from infdebug.collectors.readers_base import replica_from_path
from infdebug.collectors.rejects import Reject, RejectSink
from infdebug.schema import MetricSample, MetricType, encode_record, open_bytes

INSTALL_HINT = "pip install 'infdebug[engine]'  (or: pip install prometheus-client)"
_TYPES: dict[str, MetricType] = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Numbered = list[tuple[int, str, Any]]  # (line number, name as exposed, prometheus_client Sample)


class PrometheusUnavailable(RuntimeError):
    """prometheus-client is not installed."""


def _parser() -> Any:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as e:
        raise PrometheusUnavailable(
            "reading Prometheus expositions needs prometheus-client, which is not installed "
            f"({e}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return text_string_to_metric_families


@dataclass
class PromReport:
    path: str
    records: int = 0
    rejects: list[Reject] = field(default_factory=list)
    error: str | None = None
    notes: dict[str, int] = field(default_factory=dict)  # readers_base.Converted's; none yet


def prom_replica(path: str) -> str:
    """``scrapes/r1.prom`` (or ``r1.prom.gz``) -> ``r1``."""
    p = path.removesuffix(".gz")
    return replica_from_path(
        p.removesuffix(".prom") if p.endswith(".prom") and len(os.path.basename(p)) > 5 else path
    )


def read_exposition(
    path: str, replica: str | None = None
) -> tuple[list[MetricSample], list[Reject]]:
    """Records and rejected lines of one exposition file (OSError if it cannot be read)."""
    mtime = os.stat(path).st_mtime
    with open_bytes(path) as fh:
        data = fh.read()
    return parse_exposition(data, replica or prom_replica(path), mtime, path)


def parse_exposition(
    data: bytes, replica: str, t: float, source: str
) -> tuple[list[MetricSample], list[Reject]]:
    """Records and rejected lines of one exposition's bytes (a file's, a scrape's); ``t``:
    the time of samples without a timestamp of their own; ``source``: named in rejects (and
    in the ValueError when the parser refuses the whole text)."""
    parse = _parser()
    path, mtime = source, t
    raw_lines = data.split(b"\n")
    rejects: list[Reject] = []
    good: list[str] = []
    sample_lines: list[
        tuple[int, str]
    ] = []  # (line number, exposed name) of each sample kept, in order
    for n, raw in enumerate(raw_lines, 1):
        text = raw.decode("utf-8", errors="replace").strip()
        if not text or (text.startswith("#") and not text.startswith(("# HELP ", "# TYPE "))):
            continue
        why = _check_line(parse, text, raw)
        if why:
            rejects.append(Reject(path, n, why, None, raw))
            continue
        good.append(text)
        if not text.startswith("#"):
            m = _NAME.match(text)
            sample_lines.append((n, m.group(0) if m else ""))
    try:
        families = list(parse("\n".join(good) + "\n"))
    except Exception as e:  # noqa: BLE001 - every line parsed alone; the whole still failed
        raise ValueError(
            f"{path}: not a Prometheus exposition the parser accepts: {type(e).__name__}: {e}"
        ) from None
    rep = replica
    # The parser keeps line order, one Sample per sample line: number them back.
    lines = (
        iter(sample_lines) if sum(len(f.samples) for f in families) == len(sample_lines) else None
    )
    records = list(_records(families, rep, mtime, path, lines, rejects))
    for r in rejects:
        if 0 < r.line <= len(raw_lines):
            r.raw = raw_lines[r.line - 1]  # the line as written, not as parsed
    rejects.sort(key=lambda r: r.line)
    return records, rejects


def _check_line(parse: Any, text: str, raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"malformed exposition line: invalid UTF-8 at byte {e.start}"
    try:
        fams = list(parse(text + "\n"))
    except Exception as e:  # noqa: BLE001 - the parser raises ValueError, IndexError, …
        detail = str(e).strip() or "expected `name{labels} value [timestamp]`, `# HELP` or `# TYPE`"
        return f"malformed exposition line: {detail}"
    if not text.startswith("#") and not any(f.samples for f in fams):
        return "malformed exposition line: no sample in it"
    return None


def _finite(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def _records(
    families: Iterable[Any],
    replica: str,
    mtime: float,
    path: str,
    lines: Iterator[tuple[int, str]] | None,
    rejects: list[Reject],
) -> Iterator[MetricSample]:
    for fam in families:
        numbered: Numbered = []
        for s in fam.samples:
            n, exposed = next(lines) if lines is not None else (0, "")
            # prometheus_client renames a counter sample ``foo`` to ``foo_total``: undo it.
            numbered.append((n, exposed if s.name == exposed + "_total" else s.name, s))
        kind = _TYPES.get(fam.type, "untyped")
        if kind in ("histogram", "summary"):
            yield from _grouped(fam.name, kind, numbered, replica, mtime, path, rejects)
            continue
        for _, name, s in numbered:
            yield MetricSample(
                t=s.timestamp if s.timestamp is not None else mtime,
                replica=replica,
                name=name,
                type=kind,
                labels=dict(s.labels) or None,
                value=_finite(s.value),
            )


def _grouped(
    name: str,
    kind: MetricType,
    samples: Numbered,
    replica: str,
    mtime: float,
    path: str,
    rejects: list[Reject],
) -> Iterator[MetricSample]:
    """A histogram's (or summary's) samples, one record per label set."""
    split = "le" if kind == "histogram" else "quantile"
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    quantiles: list[MetricSample] = []
    for n, _, s in samples:
        labels = {k: v for k, v in s.labels.items() if k != split}
        key = tuple(sorted(labels.items()))
        g = groups.setdefault(
            key, {"labels": labels, "t": None, "buckets": {}, "sum": None, "count": None}
        )
        if g["t"] is None and s.timestamp is not None:
            g["t"] = s.timestamp
        if s.name == name + "_sum":
            g["sum"] = _finite(s.value)
        elif s.name == name + "_count":
            g["count"] = _finite(s.value)
        elif kind == "histogram":
            le = s.labels.get("le")
            if le is None or not math.isfinite(float(s.value)):
                why = "no `le` label" if le is None else "a count that is not a finite number"
                rejects.append(_sample_reject(path, n, f"histogram {name}: a bucket with {why}", s))
                continue
            g["buckets"][le] = float(s.value)
        elif split in s.labels:
            quantiles.append(
                MetricSample(
                    t=s.timestamp if s.timestamp is not None else mtime,
                    replica=replica,
                    name=name,
                    type="summary",
                    labels=dict(s.labels),
                    value=_finite(s.value),
                )
            )
        else:
            rejects.append(
                _sample_reject(path, n, f"summary {name}: a sample without a `quantile` label", s)
            )
    for g in groups.values():
        if not (g["buckets"] or g["sum"] is not None or g["count"] is not None):
            continue  # every sample of it was rejected
        yield MetricSample(
            t=g["t"] if g["t"] is not None else mtime,
            replica=replica,
            name=name,
            type=kind,
            labels=g["labels"] or None,
            buckets=g["buckets"] or None,
            sum=g["sum"],
            count=g["count"],
        )
    yield from quantiles


def _sample_reject(path: str, line: int, reason: str, s: Any) -> Reject:
    labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
    return Reject(path, line, reason, None, f"{s.name}{{{labels}}} {s.value}".encode())


def convert_exposition(
    path: str, out_path: str, replica: str | None = None, *, rejects: RejectSink | None = None
) -> PromReport:
    """Write the records of an exposition file to ``out_path`` as contract JSONL; malformed
    lines go to ``report.rejects`` (and ``rejects``); ``report.error`` when nothing could be
    read."""
    report = PromReport(path)
    try:
        records, bad = read_exposition(path, replica)
    except (OSError, EOFError, ValueError, PrometheusUnavailable) as e:
        report.error = (
            str(e) if not isinstance(e, OSError | EOFError) else f"cannot read {path}: {e}"
        )
        return report
    with open(out_path, "wb") as out:
        for rec in records:
            out.write(encode_record(rec))
    report.records = len(records)
    report.rejects = bad
    if rejects is not None:
        for r in bad:
            rejects.add(r)
    return report
