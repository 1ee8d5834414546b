"""Rich renderings of results that the CLI and the demo both print: the ``stats`` table,
findings by severity with their evidence, and a training progress bar."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from rich.markup import escape
from rich.table import Table

from infdebug.console import err_console, fmt_ms, id_column, out_console
from infdebug.schema import Finding

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
KEY_VALUES = ("count", "requests", "share", "rate", "rest_rate", "p_value", "p_holm", "z")
EVIDENCE_KEYS = (
    "cause",
    "request_ids",
    "first_seen",
    "first_diverging_index",
    "first_diverging_token",
    "eot_id",
    "eot_piece",
    "first_eot_position",
    "stop_ids_in_force",
    "loop_ids",
    "loop_pieces",
    "period",
)


def stats_table(res: list[Any]) -> Table:
    """The ``stats`` table: one row per replica within its deployment (``r3 (canary)``)."""
    t = Table(
        show_edge=False,
        header_style="bold",
        title="latency per replica (deployment), ms: p50 p90 p99 (n samples)",
    )
    id_column(t, "replica")
    t.add_column("requests", justify="right")
    t.add_column("errors", justify="right")
    for metric in ("TTFT", "inter-token", "end-to-end"):
        t.add_column(metric, justify="right")
    for r in res:
        cells = [escape(r.label), str(r.requests), str(r.errors)]
        for s in (r.ttft_s, r.itl_s, r.e2e_s):
            cells.append(f"{fmt_ms(s.p50)} {fmt_ms(s.p90)} {fmt_ms(s.p99)}\n[dim]n={s.n}[/]")
        t.add_row(*cells)
    return t


def metric_stats_table(res: list[Any]) -> Table:
    """The ``stats --from-metrics`` table: one row per replica (and window)."""
    import datetime as dt

    t = Table(
        show_edge=False,
        header_style="bold",
        title="from scraped metrics, ms: p50 p90 p99 (n); > : past the highest bucket edge",
    )
    id_column(t, "replica")
    t.add_column("window (UTC)")
    for metric in ("TTFT", "inter-token", "per-output-token", "end-to-end", "queue"):
        t.add_column(metric, justify="right")
    t.add_column("req/s", justify="right")
    t.add_column("gen tok/s", justify="right")
    t.add_column("KV max", justify="right")
    for r in res:
        w0 = dt.datetime.fromtimestamp(r.start, dt.UTC).strftime("%m-%d %H:%M:%S")
        w1 = dt.datetime.fromtimestamp(r.end, dt.UTC).strftime("%H:%M:%S")
        label = escape(r.replica) + (f"\n[dim]{escape(r.engine)}[/]" if r.engine else "")
        cells = [
            label,
            f"{w0}–{w1}" + ("\n[yellow]since start[/]" if r.basis != "increase" else ""),
        ]
        for term in ("ttft_seconds", "itl_seconds", "tpot_seconds", "e2e_seconds", "queue_seconds"):
            s = r.hists.get(term)
            if s is None:
                cells.append("[dim]–[/]")
                continue
            parts = [
                (">" if s.capped[q] else "") + fmt_ms(s.quantiles[q]) for q in (0.5, 0.9, 0.99)
            ]
            cells.append(" ".join(parts) + f"\n[dim]n={s.n:,.0f}[/]")
        req = r.rates.get("requests_finished_total")
        gen = r.rates.get("generation_tokens_total")
        kv = r.gauges.get("kv_cache_usage_ratio", {}).get("max")
        cells.append("[dim]–[/]" if req is None else f"{req:,.2f}")
        cells.append("[dim]–[/]" if gen is None else f"{gen:,.1f}")
        cells.append("[dim]–[/]" if kv is None else f"{kv:.0%}")
        if r.resets:
            cells[0] += f"\n[yellow]{r.resets} reset(s)[/]"
        t.add_row(*cells)
    return t


def _short(v: Any, limit: int = 120) -> str:
    s = v if isinstance(v, str) else msgspec.json.encode(v).decode()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def print_findings(findings: list[Finding], failed: dict[str, str], n_requests: int) -> None:
    """Findings grouped by severity, each with its key values and evidence."""
    if not findings:
        out_console.print(f"[green]no findings[/] over {n_requests} requests")
    for sev in ("error", "warning", "info"):
        group = [f for f in findings if f.severity == sev]
        if not group:
            continue
        style = SEVERITY_STYLE[sev]
        out_console.print(f"\n[{style}]{sev.upper()}[/] ({len(group)})")
        for f in group:
            out_console.print(
                f"  [{style}]{escape(f.kind)}[/]: {escape(f.summary)}", highlight=False
            )
            vals = {k: v for k, v in (f.values or {}).items() if k in KEY_VALUES}
            if vals:
                out_console.print(
                    "    values: "
                    + ", ".join(f"{k}={escape(_short(v, 40))}" for k, v in vals.items()),
                    highlight=False,
                )
            for k in EVIDENCE_KEYS:
                v = (f.evidence or {}).get(k)
                if v is not None and v != []:
                    if k == "first_seen" and isinstance(v, int | float):
                        v = dt.datetime.fromtimestamp(v, dt.UTC).isoformat(timespec="seconds")
                    out_console.print(f"    {k}: {escape(_short(v))}", highlight=False)
    for name, why in sorted(failed.items()):
        err_console.print(
            f"[bold red]analyzer {escape(name)} failed:[/] {escape(why)}", highlight=False
        )


@contextlib.contextmanager
def training_progress(enabled: bool = True) -> Iterator[Callable[[int, int, float], None] | None]:
    """An ``on_step(step, steps, loss)`` for make_model's training: a rich progress bar with
    the loss on a terminal, else a line on stderr every tenth of the steps; None if not
    ``enabled``."""
    if not enabled:
        yield None
        return
    if not err_console.is_terminal:

        def line(step: int, steps: int, loss: float) -> None:
            if step == steps or step % max(1, steps // 10) == 0:
                err_console.print(
                    f"training: step {step}/{steps}, loss {loss:.3f}", highlight=False
                )

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=err_console,
    )
    task = bar.add_task("training", total=None, loss="…")

    def update(step: int, steps: int, loss: float) -> None:
        if step == 1:
            bar.start()  # once the tokenizer is trained and the data made
        bar.update(task, completed=step, total=steps, loss=f"{loss:.3f}")

    try:
        yield update
    finally:
        bar.stop()
