"""Shared fixtures: a real store per test (chDB always; a ClickHouse server as well where
INFDEBUG_TEST_CLICKHOUSE_URL is set), record builders, and the path to ../shared/data."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from infdebug.schema import GpuSample, MetricSample, Request
from infdebug.store import Store, open_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("INFDEBUG_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))
SERVER_URL = os.environ.get("INFDEBUG_TEST_CLICKHOUSE_URL")

BACKENDS = ["chdb"] + (["server"] if SERVER_URL else [])


def server_url_for(db: str) -> str:
    assert SERVER_URL
    u = urlparse(SERVER_URL)
    return u._replace(path="/" + db).geturl()


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """Returns a function that opens the test's store (the same one each call)."""
    opened: list[Store] = []
    db = f"infdebug_test_{uuid.uuid4().hex[:10]}"

    def open_() -> Store:
        if request.param == "chdb":
            st = open_store(home=str(tmp_path / "home"))
        else:
            st = open_store(clickhouse=server_url_for(db))
        opened.append(st)
        return st

    open_.backend = request.param  # type: ignore[attr-defined]
    open_.home = str(tmp_path / "home")  # type: ignore[attr-defined]
    open_.url = server_url_for(db) if request.param == "server" else None  # type: ignore[attr-defined]
    yield open_
    for st in opened:
        with contextlib.suppress(Exception):
            st.close()
    if request.param == "server":
        st = open_store(clickhouse=server_url_for(db))
        st.command(f"DROP DATABASE IF EXISTS {db}")
        st.close()


@pytest.fixture
def store(store_factory: Any) -> Iterator[Store]:
    st = store_factory()
    yield st
    st.close()


@pytest.fixture
def shared_data() -> str:
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set INFDEBUG_SHARED_DATA)")
    return SHARED_DATA


def make_request(i: int = 0, **kw: Any) -> Request:
    base: dict[str, Any] = dict(
        request_id=f"req-{i}",
        replica=f"r{i % 3}",
        t_arrival=1_764_000_000.0 + i,
        deployment="stable",
        model="m",
        engine="test",
        engine_version="0",
        queue_s=0.001,
        prefill_s=0.01,
        ttft_s=0.02 + 0.001 * (i % 7),
        e2e_s=0.1,
        token_times_s=[0.02, 0.03, 0.045],
        messages=[{"role": "user", "content": f"hello {i}"}],
        prompt_text=f"<s>hello {i}",
        prompt_ids=[1, 22, 333 + i],
        output_text="hi there",
        output_ids=[7, 8, 2],
        finish_reason="stop",
        sampling={"temperature": 0.0, "max_tokens": 16, "stop_ids": [2]},
    )
    base.update(kw)
    return Request(**base)


def make_gpu(i: int = 0, **kw: Any) -> GpuSample:
    base: dict[str, Any] = dict(
        t=1_764_000_000.0 + i, replica="r0", power_w=200.0 + i, temp_c=60.0, throttle_reasons=[]
    )
    base.update(kw)
    return GpuSample(**base)


def make_metric(i: int = 0, **kw: Any) -> MetricSample:
    base: dict[str, Any] = dict(
        t=1_764_000_000.0 + i, replica="r0", name="x_total", type="counter", value=float(i)
    )
    base.update(kw)
    return MetricSample(**base)
