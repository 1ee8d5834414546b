"""The Prometheus scraper, its spool and ``stats --from-metrics``: real expositions (the
shared data's SGLang and vLLM snapshots), live prometheus_client registries shaped as
vLLM V1 exposes them, targets that fail in each way, counter resets, DCGM into gpu records."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from infdebug.collectors.prom_snapshot import read_exposition
from infdebug.collectors.record_spool import RecordSink, record_loader
from infdebug.collectors.scrape import Scraper, Target, to_records
from infdebug.collectors.spool import Spool
from infdebug.collectors.spool_loader import SpoolLoader
from infdebug.store.base import Store
from infdebug.store.q_metrics import Hist, increase, merge, metric_stats, quantile

HERE = os.path.dirname(__file__)
SGLANG = "sglang_metrics_gemma2-9b_docs_2024-11.prom"
VLLM_V0 = "vllm_metrics_v0_qwen2.5-coder-1.5b_aibrix-docs.prom"
TTFT_EDGES = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5)


# -- a scriptable /metrics server ---------------------------------------------------------------
class Engine:
    """``/metrics`` of a fake engine: ``body`` (bytes or a callable), ``status``, ``delay``."""

    def __init__(self) -> None:
        self.body: Any = b""
        self.status = 200
        self.delay = 0.0
        self.hits = 0
        eng = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                eng.hits += 1
                if eng.delay:
                    time.sleep(eng.delay)
                body = eng.body() if callable(eng.body) else eng.body
                self.send_response(eng.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def engines() -> Iterator[Any]:
    made: list[Engine] = []

    def make() -> Engine:
        made.append(Engine())
        return made[-1]

    yield make
    for e in made:
        e.close()


class VllmV1:
    """A prometheus_client registry with vLLM V1's names and TTFT edges."""

    def __init__(self) -> None:
        self.reg = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "TTFT",
            labels,
            buckets=TTFT_EDGES,
            registry=self.reg,
        ).labels("m", "0")
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "ITL",
            labels,
            buckets=(0.01, 0.025, 0.05, 0.1),
            registry=self.reg,
        ).labels("m", "0")
        self.ok = Counter(
            "vllm:request_success", "finished", [*labels, "finished_reason"], registry=self.reg
        ).labels("m", "0", "stop")
        self.gen = Counter("vllm:generation_tokens", "tokens", labels, registry=self.reg).labels(
            "m", "0"
        )

    def serve(self, n: int, ttft: float, itl: float) -> None:
        for _ in range(n):
            self.ttft.observe(ttft)
            self.itl.observe(itl)
            self.ok.inc()
            self.gen.inc(10)

    def body(self) -> bytes:
        return bytes(generate_latest(self.reg))


def _load(spool: Spool, store: Store) -> SpoolLoader:
    loader = record_loader(spool, lambda: store, "prometheus")
    loader.load_once(store)
    return loader


# -- the histogram arithmetic ------------------------------------------------------------------
def test_quantile_interpolates_inside_its_bucket_as_histogram_quantile_does() -> None:
    h = Hist([0.1, 0.2, 0.4], [10.0, 30.0, 40.0], 40.0)
    assert quantile(h, 0.25)[0] == pytest.approx(0.1 + 0.1 * (10 - 10) / 20)  # rank 10: edge
    assert quantile(h, 0.5)[0] == pytest.approx(0.1 + 0.1 * (20 - 10) / 20)
    assert quantile(h, 0.1)[0] == pytest.approx(0.1 * 4 / 10)  # first bucket from 0
    over = Hist([0.1], [5.0], 10.0)  # half past the last finite edge
    assert quantile(over, 0.9) == (0.1, True)


def test_counter_resets_add_the_new_value_whole() -> None:
    def minus(c: float, p: float) -> float | None:
        return c - p if c >= p else None

    inc = increase([(0, 100.0), (10, 150.0), (20, 30.0), (30, 50.0)], minus, 0.0)
    assert inc is not None and inc.value == 50 + 30 + 20 and inc.resets == 1
    assert increase([(0, 7.0)], minus, 0.0).since_start  # type: ignore[union-attr]


def test_merging_histograms_with_different_edges_keeps_every_count() -> None:
    a = Hist([0.1, 1.0], [5.0, 10.0], 10.0, 2.0)
    b = Hist([0.5], [4.0], 4.0, 1.0)
    m = merge([a, b])
    assert m is not None and m.total == 14 and m.sum == 3.0
    assert m.edges == [0.1, 0.5, 1.0] and m.cum[-1] == 14
    assert m.cum[0] == pytest.approx(5 + 4 * 0.1 / 0.5)  # b read at 0.1 by interpolation


# -- real expositions ----------------------------------------------------------------------------
def test_the_real_sglang_snapshot_gives_its_quantiles_since_start(
    store: Store, shared_data: str
) -> None:
    path = os.path.join(shared_data, "logs", SGLANG)
    recs, rejects = read_exposition(path, "sg")
    assert not rejects
    RecordSink("t", "test").load(store, [b"".join(_enc(r) for r in recs)], 1)
    [st] = metric_stats(store)
    assert st.replica == "sg" and st.engine == "sglang" and st.basis == "since_start"
    ttft = st.hists["ttft_seconds"]
    # an independent reading of the file's own buckets: the 50th percentile request
    fam = {r.name: r for r in recs if r.type == "histogram"}["sglang:time_to_first_token_seconds"]
    assert fam.buckets is not None and fam.count is not None
    assert ttft.n == fam.count
    edges = sorted((float(k), v) for k, v in fam.buckets.items() if k != "+Inf")
    lo, hi = next(
        (edges[i - 1], edges[i]) for i in range(1, len(edges)) if edges[i][1] >= fam.count / 2
    )
    assert lo[0] <= (ttft.quantiles[0.5] or 0) <= hi[0]
    assert ttft.mean == pytest.approx((fam.sum or 0) / fam.count)
    assert st.prefix_cache_hit_ratio == pytest.approx(0.1061)  # SGLang 0.3's percent, as a ratio
    assert "itl_seconds" in st.hists and "e2e_seconds" in st.hists


def _enc(r: Any) -> bytes:
    from infdebug.schema import encode_record

    return encode_record(r)


# -- the scraper -------------------------------------------------------------------------------
def test_scrapes_of_a_live_engine_give_the_window_increase_and_survive_a_restart(
    store: Store, engines: Any, tmp_path: Any
) -> None:
    eng = engines()
    v1 = VllmV1()
    v1.serve(100, ttft=0.05, itl=0.02)  # before the collector: history, never in a window
    eng.body = v1.body
    spool = Spool(str(tmp_path / "spool"))
    sc = Scraper([Target("r1", eng.url)], spool, interval=60)
    sc.scrape_once()
    v1.serve(100, ttft=0.4, itl=0.08)
    time.sleep(0.05)
    sc.scrape_once()
    _load(spool, store)
    [st] = metric_stats(store)
    assert st.basis == "increase" and st.engine == "vllm-v1" and st.resets == 0
    ttft = st.hists["ttft_seconds"]
    assert ttft.n == 100  # the history before the first scrape is not in the window
    assert 0.25 < (ttft.quantiles[0.5] or 0) <= 0.5  # all 100 in (0.25, 0.5]
    assert st.hists["itl_seconds"].n == 100
    assert st.rates["requests_finished_total"] > 0 and st.rates["generation_tokens_total"] > 0

    # the engine restarts: its counters start again from zero
    v2 = VllmV1()
    v2.serve(20, ttft=0.9, itl=0.08)
    eng.body = v2.body
    time.sleep(0.05)
    sc.scrape_once()
    _load(spool, store)
    [st] = metric_stats(store)
    assert st.resets >= 1
    assert st.hists["ttft_seconds"].n == 120  # 100 + the 20 after the reset, none lost
    p99 = st.hists["ttft_seconds"].quantiles[0.99] or 0
    assert 0.75 < p99 <= 1.0


def test_failing_targets_are_counted_by_reason_and_never_stop_the_others(
    store: Store, engines: Any, tmp_path: Any, shared_data: str
) -> None:
    good, err, garbage, slow, half = engines(), engines(), engines(), engines(), engines()
    with open(os.path.join(shared_data, "logs", SGLANG), "rb") as fh:
        good.body = fh.read()
    err.status, err.body = 500, b"internal error"
    garbage.body = b"<html><body>login required</body></html>"
    slow.delay, slow.body = 2.0, good.body
    line = b'sglang:num_requests_running{name="google/gemma-2-9b-it"} 0.0'
    assert line in good.body
    half.body = good.body.replace(line, line[:-3] + b"zero", 1)
    spool = Spool(str(tmp_path / "spool"))
    said: list[str] = []
    sc = Scraper(
        [
            Target(n, e.url)
            for n, e in (
                ("good", good),
                ("err", err),
                ("garbage", garbage),
                ("slow", slow),
                ("half", half),
            )
        ]
        + [Target("gone", "http://127.0.0.1:9/metrics")],
        spool,
        timeout=0.5,
        say=said.append,
    )
    sc.scrape_once()
    sc.scrape_once()
    by = {s.target.name: s for s in sc.targets}
    assert by["good"].ok == 2 and not by["good"].failed
    assert by["err"].failed == {"http_500": 2}
    assert by["garbage"].failed == {"garbage": 2}
    assert by["slow"].failed == {"timeout": 2}
    assert by["gone"].failed == {"unreachable": 2}
    assert by["half"].ok == 2 and by["half"].rejected_lines == 2  # one bad line, the rest kept
    assert sum("failed" in line for line in said) == 4  # said once per target, not per scrape
    _load(spool, store)
    _, rows = store.query("SELECT replica, count() FROM metric_samples GROUP BY replica")
    got = dict(rows)
    assert set(got) == {"good", "half"} and got["good"] == 2 * len(
        read_exposition(os.path.join(shared_data, "logs", SGLANG), "x")[0]
    )
    assert sc.stats()["targets_down"] == 4


def test_dcgm_fields_become_gpu_records_under_the_pod_that_holds_the_gpu(
    store: Store, engines: Any, tmp_path: Any
) -> None:
    eng = engines()
    with open(os.path.join(HERE, "data", "prom", "dcgm.prom"), "rb") as fh:
        eng.body = fh.read()
    recs, _ = to_records(eng.body, Target("node1", eng.url), 1000.0)
    gpus = [r for r in recs if r.__class__.__name__ == "GpuSample"]
    assert gpus and all(g.power_w is not None and g.temp_c is not None for g in gpus)
    assert not any(getattr(r, "name", "") == "DCGM_FI_DEV_POWER_USAGE" for r in recs)
    spool = Spool(str(tmp_path / "spool"))
    Scraper([Target("node1", eng.url)], spool).scrape_once()
    _load(spool, store)
    _, rows = store.query("SELECT replica, gpu_index, power_w, sm_clock_mhz FROM gpu_samples")
    assert len(rows) == len(gpus)
    assert all(r[2] is not None and r[2] > 0 for r in rows)


def test_a_load_cut_short_is_undone_and_loaded_once(
    store: Store, engines: Any, tmp_path: Any
) -> None:
    eng = engines()
    v1 = VllmV1()
    v1.serve(5, 0.05, 0.02)
    eng.body = v1.body
    spool = Spool(str(tmp_path / "spool"))
    sc = Scraper([Target("r1", eng.url)], spool)
    for _ in range(3):
        sc.scrape_once()

    class Dies(RecordSink):
        def load(self, store: Store, payloads: list[bytes], batch: int) -> Any:
            super().load(store, payloads, batch)
            raise KeyboardInterrupt  # killed between the insert and the commit

    with pytest.raises(KeyboardInterrupt):
        SpoolLoader(spool, lambda: store, Dies("prometheus", "x")).load_once(store)
    assert store.query("SELECT count() FROM metric_samples")[1][0][0] > 0  # half loaded
    said: list[str] = []
    SpoolLoader(spool, lambda: store, RecordSink("prometheus", "x"), say=said.append).load_once(
        store
    )
    per_scrape = len(to_records(v1.body(), Target("r1", eng.url), 0)[0])
    assert store.query("SELECT count() FROM metric_samples")[1][0][0] == 3 * per_scrape
    assert any("cut short" in line for line in said)


def test_stats_from_metrics_cli_windows(store_factory: Any, engines: Any, tmp_path: Any) -> None:
    """The CLI on a store with two replicas scraped over time: a row per replica and window."""
    from click.testing import CliRunner

    from infdebug.cli import cli

    home = str(tmp_path / "home")
    eng1, eng2 = engines(), engines()
    a, b = VllmV1(), VllmV1()
    eng1.body, eng2.body = a.body, b.body
    spool = Spool(str(tmp_path / "spool"))
    sc = Scraper([Target("r1", eng1.url), Target("r2", eng2.url)], spool)
    for i in range(4):
        a.serve(10, 0.05, 0.02)
        b.serve(10, 0.5 if i >= 2 else 0.05, 0.02)  # r2 gets slow half way
        sc.scrape_once()
        time.sleep(0.3)
    from infdebug.store import open_store

    st = open_store(home=home)
    try:
        _load(spool, st)
        _, rows = st.query("SELECT min(t), max(t) FROM metric_samples")
        t0, t1 = rows[0]
    finally:
        st.close()
    res = CliRunner().invoke(
        cli,
        [
            "--home",
            home,
            "stats",
            "--from-metrics",
            "--json",
            "--window",
            f"{(t1 - t0) / 2 + 0.01}",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    rows_ = doc["replicas"]
    assert {r["replica"] for r in rows_} == {"r1", "r2"}
    r2 = [r for r in rows_ if r["replica"] == "r2"]
    assert len(r2) == 2
    assert r2[-1]["latency"]["ttft_seconds"]["p50"] > 0.25 > r2[0]["latency"]["ttft_seconds"]["p50"]
    table = CliRunner().invoke(cli, ["--home", home, "stats", "--from-metrics"])
    assert table.exit_code == 0 and "r2" in table.output and "vllm-v1" in table.output
    bad = CliRunner().invoke(cli, ["--home", home, "stats", "--window", "5m"])
    assert bad.exit_code == 2 and "--from-metrics" in bad.output


def test_a_full_spool_refuses_scrapes_counts_them_and_warns_once(
    engines: Any, tmp_path: Any, shared_data: str
) -> None:
    eng = engines()
    with open(os.path.join(shared_data, "logs", SGLANG), "rb") as fh:
        eng.body = fh.read()
    said: list[str] = []
    spool = Spool(str(tmp_path / "spool"), max_bytes=8192)
    sc = Scraper([Target("r1", eng.url)], spool, say=said.append)
    for _ in range(6):
        sc.scrape_once()
    assert spool.size() <= 8192
    assert sc.refused >= 3 and sc.stats()["scrapes_refused"] == sc.refused
    assert sum("is full" in line for line in said) == 1


def test_collect_gpu_without_a_gpu_says_so_and_exits_2(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from infdebug.cli import cli
    from infdebug.tracer.gpu import make_probe

    probe = make_probe(False)
    if probe is not None:
        probe.close()
        pytest.skip("NVML sees a GPU here: collect gpu would sample it")
    res = CliRunner().invoke(
        cli, ["--home", str(tmp_path / "h"), "collect", "gpu", "--status-listen", "off"]
    )
    assert res.exit_code == 2, res.output
    assert "no GPU to sample" in res.output and "--simulate-gpu" in res.output


def test_the_real_vllm_v0_snapshot_reads_as_v0_and_minus_one_is_no_data(
    store: Store, shared_data: str
) -> None:
    recs, rejects = read_exposition(os.path.join(shared_data, "logs", VLLM_V0), "v0")
    assert not rejects
    RecordSink("t", "test").load(store, [b"".join(_enc(r) for r in recs)], 1)
    [st] = metric_stats(store)
    assert st.engine == "vllm-v0" and st.basis == "since_start"
    assert st.prefix_cache_hit_ratio is None  # the gauge reads -1: prefix caching off
    assert st.gauges["kv_cache_usage_ratio"]["max"] == 0.0
    assert set(st.gauges) >= {"requests_running", "requests_waiting"}
