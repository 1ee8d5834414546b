"""``infdebug collect gpu``: NVML samples of this host's GPUs, for engines with no tracer."""

from __future__ import annotations

from typing import Any

from infdebug.cli.collect import collect_group
from infdebug.cli.collect_run import Plan, gpu_options, pump_options, run_plan
from infdebug.cli.context import CliContext, pass_cli


@collect_group.command("gpu")
@gpu_options()
@pump_options()
@pass_cli
def gpu(obj: CliContext, /, **opts: Any) -> None:
    """Sample power, temperature, clocks, utilisation, memory and throttle reasons of every
    GPU this process sees (NVML, through the tracer's sampler) into gpu records, and XID
    errors into events, until SIGINT / SIGTERM.

    \b
      infdebug collect gpu --gpu-replica r1 --gpu-hz 2
      infdebug collect gpu --simulate-gpu        no GPU: a synthetic signal, marked simulated

    For engines whose own tracer does not sample the GPU (any engine behind `infdebug
    sidecar`, or none at all). Samples are spooled before they are loaded.
    """
    spool = opts.get("spool_dir")
    run_plan(obj, Plan(gpu=True, spools={"gpu": spool} if spool else {}, opts=opts))
