"""``infdebug collect prometheus``: scrape engines' and DCGM exporters' ``/metrics``."""

from __future__ import annotations

from typing import Any

import click

from infdebug.cli.collect import collect_group
from infdebug.cli.collect_run import Plan, pump_options, run_plan, scrape_options
from infdebug.cli.context import CliContext, pass_cli


@collect_group.command("prometheus")
@click.option(
    "--target",
    "targets",
    multiple=True,
    required=True,
    metavar="NAME=URL",
    help="Scrape URL as replica NAME (repeatable); a bare host:port gets /metrics.",
)
@scrape_options()
@pump_options()
@pass_cli
def prometheus(obj: CliContext, /, targets: tuple[str, ...], **opts: Any) -> None:
    """Scrape Prometheus /metrics of engines (vLLM, SGLang, TGI, TensorRT-LLM, Dynamo,
    infdebug) and NVIDIA's DCGM exporter every --interval, until SIGINT / SIGTERM.

    \b
      infdebug collect prometheus --target r1=http://r1:8000/metrics \\
          --target r2=http://r2:8000/metrics --interval 10
      infdebug stats --from-metrics --window 5m    TTFT / ITL quantiles per replica

    Samples are stored as exposed (metric_samples); DCGM's GPU fields become gpu records
    (the replica is DCGM's `pod` label where it has one, else NAME). Engine names are
    mapped onto one vocabulary when read (docs/metrics-vocabulary.md says how, and where
    meanings differ). A target that times out, answers an error or garbage is counted and
    tried again next interval; the others go on.
    """
    spool = opts.get("spool_dir")
    plan = Plan(targets=list(targets), spools={"prometheus": spool} if spool else {}, opts=opts)
    run_plan(obj, plan)
