"""``infdebug make-model`` and ``infdebug serve``: the reference engine's commands.

torch is imported only when one of these runs, so the core CLI stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import Any

import click

from infdebug.cli.options import json_option, tracing_options
from infdebug.console import err_console, fail, fmt_seconds, print_json
from infdebug.limits import ENV_BODY_TIMEOUT, ENV_HEADER_TIMEOUT, ENV_MAX_BODY_MB
from infdebug.render import training_progress
from infdebug.tracer.engine.faults import FAULTS, fault_specs


@click.command("make-model")
@click.argument("out_dir", metavar="DIR")
@click.option(
    "--preset",
    type=click.Choice(["tiny", "small"]),
    default="tiny",
    show_default=True,
    help="tiny: 2 layers, d=64 (tests); small: 4 layers, d=256, vocab ≈ 8k (benchmarks).",
)
@click.option(
    "--arch", type=click.Choice(["llama", "mistral", "qwen2"]), default="llama", show_default=True
)
@click.option(
    "--chat-format",
    type=click.Choice(["chatml", "llama3"]),
    default="chatml",
    show_default=True,
    help="Special tokens and chat template of the trained tokenizer.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--train",
    "do_train",
    is_flag=True,
    help="Train the weights to chat on the shipped corpus (seconds to a minute on a CPU): "
    "the model "
    "answers in words and ends its turns. Without it the weights are random "
    "(greedy decoding loops).",
)
@click.option(
    "--train-steps",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Training steps (implies --train; default: the preset's recipe, see train.py).",
)
@json_option()
def make_model_cmd(
    out_dir: str,
    preset: str,
    arch: str,
    chat_format: str,
    seed: int,
    do_train: bool,
    train_steps: int | None,
    as_json: bool,
) -> None:
    """Write a checkpoint with a real tokenizer and chat template to DIR: random weights, or
    with --train weights trained to chat.

    The tokenizer is trained here, in process, on text shipped with infdebug, and so is the
    model with --train; nothing is downloaded. The result is an ordinary Hugging Face model
    directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a
    chat template; training.json with the recipe when trained). The same options give the
    same files.
    """
    from infdebug.tracer.engine.make_model import TRAINING, make_model

    steps = train_steps or (0 if do_train else None)
    with training_progress(enabled=not as_json) as on_step:
        path = make_model(
            out_dir,
            preset=preset,
            arch=arch,
            chat_format=chat_format,
            seed=seed,
            train_steps=steps,
            on_step=on_step,
        )
    training: dict[str, Any] | None = None
    if steps is not None:
        with open(os.path.join(path, TRAINING), encoding="utf-8") as f:
            training = json.load(f)
    if as_json:
        print_json(
            {
                "model_dir": os.path.abspath(path),
                "preset": preset,
                "arch": arch,
                "chat_format": chat_format,
                "trained": training is not None,
                "training": training,
            }
        )
        return
    weights = "random-weight"
    if training is not None:
        weights = "trained"
        click.echo(
            f"trained {training['steps']} steps in {fmt_seconds(training['seconds'])}: "
            f"loss {training['first_loss']:.2f} → {training['loss']:.2f}"
        )
    click.echo(f"wrote a {weights} {preset} {arch} checkpoint ({chat_format}) to {path}")
    click.echo(f"serve it: infdebug serve --model {path} --port 8000")


@click.command("serve")
@click.option(
    "--model",
    "model_dir",
    required=True,
    metavar="DIR",
    help="A local Hugging Face checkpoint directory.",
)
@click.option(
    "--replica",
    default="replica-0",
    show_default=True,
    help="This replica's name in traces and metrics.",
)
@click.option(
    "--deployment", default=None, help="Revision or canary label recorded with every request."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback unless told otherwise).",
)
@click.option("--port", default=8000, show_default=True)
@click.option(
    "--served-model-name",
    default=None,
    help="The model name clients use (default: the directory name).",
)
@tracing_options()
@click.option(
    "--inject",
    "injects",
    multiple=True,
    metavar="FAULT",
    help=f"Inject a fault: {fault_specs()}. Repeatable; listed in /health.",
)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option(
    "--max-batch", default=32, show_default=True, help="Running requests per decode step."
)
@click.option(
    "--max-model-len", default=2048, show_default=True, help="Context length (prompt + output)."
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    envvar=ENV_MAX_BODY_MB,
    help="Largest request body accepted, in MiB (413 beyond, before the body is read).",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    envvar=ENV_HEADER_TIMEOUT,
    help="Close a connection that has not sent a request's headers within this time.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    envvar=ENV_BODY_TIMEOUT,
    help="Answer 408 to a request whose body has not arrived within this time.",
)
@click.option(
    "--trace-logprobs",
    is_flag=True,
    help="Log every request's chosen-token logprobs in its trace (output_logprobs), asked "
    "for or not: what skew.logprobs compares against a float32 re-scoring (--model).",
)
@click.option("--log-level", default="warning", show_default=True)
def serve_cmd(
    model_dir: str,
    replica: str,
    deployment: str | None,
    host: str,
    port: int,
    served_model_name: str | None,
    trace_dir: str | None,
    otlp_endpoint: str | None,
    redact: str,
    trace_max_mb: float,
    trace_max_age: float,
    injects: tuple[str, ...],
    device: str | None,
    max_batch: int,
    max_model_len: int,
    simulate_gpu: bool,
    gpu_hz: float,
    max_body_mb: float,
    header_timeout: float,
    body_timeout: float,
    trace_logprobs: bool,
    log_level: str,
) -> None:
    """Serve a checkpoint with an OpenAI-compatible API (completions, chat, streaming).

    \b
    Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
    GET /metrics (Prometheus, always on).
    Works with the official openai client:
      client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

    \b
    Faults for --inject (each a real change to the serving path):
    {faults}
    """
    from infdebug.limits import Limits, MiB
    from infdebug.tracer.engine.replica import InjectionError, Injections, Replica
    from infdebug.tracer.engine.server import serve

    if not os.path.isdir(model_dir):
        fail(f"--model {model_dir}: not a directory (make one with: infdebug make-model DIR)")
    try:
        limits = Limits(
            max_body_bytes=max(1, int(max_body_mb * MiB)),
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
        )
        inj = Injections.parse(list(injects))
        rep = Replica(
            model_dir,
            name=replica,
            deployment=deployment,
            served_model_name=served_model_name,
            injections=inj,
            device=device,
            max_batch=max_batch,
            max_model_len=max_model_len,
            trace_dir=trace_dir,
            otlp_endpoint=otlp_endpoint,
            redact=redact,  # type: ignore[arg-type]
            trace_logprobs=trace_logprobs,
            trace_max_bytes=int(trace_max_mb * 1024 * 1024) if trace_max_mb > 0 else None,
            trace_max_age_s=trace_max_age or None,
            simulate_gpu=simulate_gpu,
            gpu_hz=gpu_hz,
        )
    except (InjectionError, ValueError, OSError) as e:
        fail(str(e))
    err_console.print(
        f"[bold]infdebug serve[/]: {rep.model_name} as {replica} on http://{host}:{port}/v1"
        + (f" · injected: {', '.join(inj.raw)}" if inj.raw else "")
        + (f" · trace: {rep.trace.path}" if rep.trace else "")
        + (f" · otlp: {rep.otlp_endpoint}" if rep.otlp_endpoint else "")
        + (f" · redact: {redact}" if redact != "none" else ""),
        highlight=False,
    )

    def _term(signum: int, frame: Any) -> None:  # SIGTERM: shut down cleanly, flush the trace
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    with contextlib.suppress(KeyboardInterrupt):
        serve(rep, host=host, port=port, log_level=log_level, limits=limits)
    sys.exit(0)


serve_cmd.help = (serve_cmd.help or "").replace(
    "{faults}", "\n    ".join(f"  {f.spec:<16} {f.what}" for f in FAULTS)
)


def register(group: click.Group) -> None:
    group.add_command(make_model_cmd)
    group.add_command(serve_cmd)
