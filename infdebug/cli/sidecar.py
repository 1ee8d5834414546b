"""``infdebug sidecar``: the tracing reverse proxy in front of any OpenAI-compatible engine."""

from __future__ import annotations

from typing import Any

import click

from infdebug.cli.base import CommandFailed, exit_failed
from infdebug.cli.options import tracing_options


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--listen")
    return (host.strip("[]") or "127.0.0.1"), int(port)


@click.command("sidecar")
@click.option(
    "--upstream",
    required=True,
    metavar="URL",
    envvar="INFDEBUG_UPSTREAM",
    help="The engine's base URL (http://127.0.0.1:8000): vLLM, SGLang, TGI, transformers "
    "serve, infdebug serve …",
)
@click.option(
    "--listen",
    default="127.0.0.1:9000",
    show_default=True,
    metavar="HOST:PORT",
    help="Where clients connect (loopback unless told otherwise; 0.0.0.0:9000 in a pod).",
)
@click.option(
    "--replica",
    required=True,
    envvar="INFDEBUG_REPLICA",
    help="This replica's name in traces and metrics (in Kubernetes: the pod name).",
)
@click.option("--deployment", default=None, help="Revision or canary label for every record.")
@click.option(
    "--model-dir",
    default=None,
    metavar="DIR",
    help="The engine's model directory (tokenizer and chat template): token IDs the engine "
    "does not return are derived with it (and marked derived); its fingerprints are recorded.",
)
@click.option(
    "--template",
    default=None,
    metavar="FILE",
    help="A chat template to derive with instead of --model-dir's (the engine's --chat-template).",
)
@click.option(
    "--served-model-name", default=None, help="The model name in records (default: --model-dir's)."
)
@click.option(
    "--engine-name",
    default=None,
    help="The engine's name in records, where the upstream does not say (transformers serve "
    "does not): default what /v1/models' owned_by or the Server header names, else "
    "openai-compatible.",
)
@tracing_options()
@click.option(
    "--upstream-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    metavar="SECONDS",
    help="504 when the upstream sends nothing for this long (a hung engine).",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=64.0,
    show_default=True,
    help="Largest request body passed on, in MiB (413 beyond).",
)
@click.option(
    "--no-tokenize",
    is_flag=True,
    help="Do not ask the upstream's /tokenize for the engine's own prompt IDs.",
)
@click.option("--log-level", default="warning", show_default=True)
def sidecar_cmd(
    upstream: str,
    listen: str,
    replica: str,
    deployment: str | None,
    model_dir: str | None,
    template: str | None,
    served_model_name: str | None,
    engine_name: str | None,
    trace_dir: str | None,
    otlp_endpoint: str | None,
    redact: str,
    trace_max_mb: float,
    trace_max_age: float,
    simulate_gpu: bool,
    gpu_hz: float,
    upstream_timeout: float,
    max_body_mb: float,
    no_tokenize: bool,
    log_level: str,
) -> None:
    """Trace every request to an engine you cannot change, from beside it.

    A transparent reverse proxy for the OpenAI API: clients talk to --listen, every request
    goes to --upstream unchanged and every answer comes back unchanged (streams chunk by
    chunk, never buffered). Chat and completion requests leave the same records, Prometheus
    histograms and OpenTelemetry spans as `infdebug serve`'s own tracer, and the pod's GPUs
    are sampled (NVML, or --simulate-gpu, labelled).

    \b
    Token IDs are the engine's where it returns them (vLLM's return_token_ids, token_id:N
    logprobs) or serves /tokenize (vLLM, SGLang, infdebug serve); otherwise they are
    derived with --model-dir and the record lists them in `derived`.

    \b
    Every other path (/v1/models, /health, /metrics, …) passes through untouched; the
    sidecar's own metrics are at /infdebug/metrics, its health at /infdebug/health.
    An upstream that refuses or hangs is a 502 / 504 with an OpenAI-style error, recorded
    as an errored request; a client that disconnects cancels the upstream request.

    \b
    Examples:
      infdebug sidecar --upstream http://127.0.0.1:8000 --replica pod-a --trace-dir traces/
      infdebug sidecar --upstream http://127.0.0.1:8000 --listen 0.0.0.0:9000 \\
          --replica $POD_NAME --deployment canary --model-dir /models/llama --trace-dir /traces
      infdebug collect logs traces/ --follow     # the records into the store as they come
    """
    try:
        _run(locals())
    except CommandFailed as e:
        exit_failed(e, False)


def _run(p: dict[str, Any]) -> None:
    import os

    import uvicorn

    from infdebug import __version__
    from infdebug.httpguard import guarded_protocol
    from infdebug.limits import Limits, MiB
    from infdebug.sidecar.proxy import Sidecar, SidecarConfig
    from infdebug.text.model_text import ModelText
    from infdebug.tracer.tracer import ReplicaInfo
    from infdebug.tracer.wiring import TracerConfig, make_tracer

    host, port = _listen(str(p["listen"]))
    upstream = str(p["upstream"])
    if not upstream.startswith(("http://", "https://")):
        raise CommandFailed(f"--upstream: expected an http:// or https:// URL, got {upstream!r}")
    mt = None
    model_dir = p["model_dir"]
    if model_dir:
        try:
            mt = ModelText.load(str(model_dir), str(p["template"]) if p["template"] else None)
        except Exception as e:
            raise CommandFailed(f"--model-dir {model_dir}: {e}") from None
    model = str(
        p["served_model_name"]
        or (os.path.basename(os.path.normpath(str(model_dir))) if model_dir else "")
    )
    max_mb, max_age = float(p["trace_max_mb"]), float(p["trace_max_age"])
    telemetry = make_tracer(
        TracerConfig(
            trace_dir=p["trace_dir"],
            otlp_endpoint=p["otlp_endpoint"],
            redact=p["redact"],
            trace_max_bytes=int(max_mb * MiB) if max_mb > 0 else None,
            trace_max_age_s=max_age if max_age > 0 else None,
            simulate_gpu=bool(p["simulate_gpu"]),
            gpu_hz=float(p["gpu_hz"]),
        ),
        ReplicaInfo(
            replica=str(p["replica"]),
            model=model,
            deployment=p["deployment"],
            engine=p["engine_name"] or "openai-compatible",
            tokenizer_fp=mt.tokenizer_fp if mt else None,
            template_fp=mt.template_fp if mt else None,
        ),
    )
    limits = Limits(max_body_bytes=int(float(p["max_body_mb"]) * MiB), body_timeout_s=60.0)
    side = Sidecar(
        SidecarConfig(
            upstream=upstream,
            upstream_timeout_s=float(p["upstream_timeout"]),
            limits=limits,
            ask_tokenize=not p["no_tokenize"],
        ),
        telemetry,
        model_text=mt,
        engine_name=p["engine_name"],
    )
    click.echo(
        f"infdebug {__version__} sidecar: http://{host}:{port} -> {upstream} "
        f"(replica {p['replica']}, traces {p['trace_dir'] or 'metrics only'})",
        err=True,
    )
    telemetry.start()
    try:
        uvicorn.run(
            side.app,
            host=host,
            port=port,
            log_level=str(p["log_level"]),
            timeout_graceful_shutdown=10,
            http=guarded_protocol(limits),
            loop=_loop(),
            server_header=False,  # the upstream's Server and Date pass through, not ours too
            date_header=False,
        )
    finally:
        telemetry.stop()


def _loop() -> str:
    """uvloop where installed: at 64 streams most of the sidecar's CPU was the event loop's
    own select and socket writes (bench/sidecar.py), which uvloop does in C."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def register(cli: click.Group) -> None:
    cli.add_command(sidecar_cmd)
