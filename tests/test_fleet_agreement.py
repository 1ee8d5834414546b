"""Done-when of the tracer: a 3-replica fleet under replayed Azure load produces JSONL,
/metrics and OTLP spans that agree with each other request for request."""

from __future__ import annotations

import asyncio
import glob
import os
from typing import Any

import pytest

pytest.importorskip("torch", reason="the engine needs torch")
pytest.importorskip("opentelemetry.proto", reason="needs opentelemetry-proto")

import httpx  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from infdebug.fleet.loadgen import run_load  # noqa: E402
from infdebug.fleet.replicas import Fleet  # noqa: E402
from infdebug.fleet.traces import plan, read_trace  # noqa: E402
from infdebug.schema import Request, read_records  # noqa: E402
from infdebug.tracer.engine.make_model import make_model  # noqa: E402


def test_fleet_under_azure_load_exports_agree(tmp_path: Any, shared_data: str) -> None:
    azure = sorted(glob.glob(os.path.join(shared_data, "traces", "azure_llm_2023", "*.csv")))
    assert azure, "no Azure trace in the shared data"
    model = make_model(str(tmp_path / "m"), preset="tiny")
    otlp = OtlpReceiver()
    trace_dir = str(tmp_path / "traces")
    scraped: dict[str, str] = {}
    try:
        with Fleet(
            model,
            3,
            injections=["r2:slow=1.5"],
            base_port=18300,
            trace_dir=trace_dir,
            max_model_len=512,
            extra_args=["--otlp-endpoint", otlp.url, "--simulate-gpu"],
        ) as fleet:
            schedule = plan(
                read_trace(azure[0]),
                duration_s=5,
                rate=4,
                length_scale=0.05,
                max_prompt_tokens=200,
                max_output_tokens=16,
                max_model_len=512,
            )
            run = asyncio.run(run_load(fleet.urls, schedule, concurrency=16, drain_s=60))
            assert run.results and all(r.ok for r in run.results), [
                r.error for r in run.results if not r.ok
            ]
            for i, url in enumerate(fleet.urls, 1):
                scraped[f"r{i}"] = httpx.get(f"{url}/metrics", timeout=10).text
        # the fleet has stopped: every replica flushed its JSONL and its spans
        recs = [
            r
            for f in glob.glob(os.path.join(trace_dir, "*.requests.jsonl"))
            for _, r in read_records(f)
        ]
        assert all(isinstance(r, Request) for r in recs)
        assert len(recs) == len(run.results)
        spans = {
            s["attrs"].get("infdebug.request_id"): s
            for s in otlp.spans
            if "infdebug.request_id" in s["attrs"]
        }
        for rep in ("r1", "r2", "r3"):
            mine = [r for r in recs if isinstance(r, Request) and r.replica == rep]
            assert mine, f"replica {rep} served nothing"
            fams = {f.name: f for f in text_string_to_metric_families(scraped[rep])}
            ttft = {s.name: s.value for s in fams["infdebug_time_to_first_token_seconds"].samples}
            assert ttft["infdebug_time_to_first_token_seconds_count"] == len(mine)
            assert ttft["infdebug_time_to_first_token_seconds_sum"] == pytest.approx(
                sum(r.ttft_s or 0 for r in mine), rel=1e-6, abs=1e-9
            )
            gen = sum(
                s.value
                for s in fams["infdebug_generation_tokens"].samples
                if s.name.endswith("_total")
            )
            assert gen == sum(len(r.output_ids) for r in mine)
            for r in mine:
                sp = spans[r.request_id]
                assert sp["resource"].get("service.name") or sp["attrs"]["infdebug.replica"] == rep
                assert sp["attrs"]["infdebug.replica"] == rep
                assert sp["attrs"]["gen_ai.usage.output_tokens"] == len(r.output_ids)
                assert sp["attrs"]["gen_ai.usage.input_tokens"] == len(r.prompt_ids)
                assert sp["attrs"]["gen_ai.latency.time_to_first_token"] == pytest.approx(
                    r.ttft_s, abs=1e-6
                )
        assert len(spans) == len(recs)
        # the GPU sampler and the lifecycle wrote their records beside the requests
        assert glob.glob(os.path.join(trace_dir, "*.gpu.jsonl")) and glob.glob(
            os.path.join(trace_dir, "*.events.jsonl")
        )
    finally:
        otlp.close()
