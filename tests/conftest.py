"""Shared fixtures: a real store per test (chDB always; a ClickHouse server as well where
INFDEBUG_TEST_CLICKHOUSE_URL is set), record builders, and the path to ../shared/data.

Made once per session and shared: the migrated empty chDB home each test's ``store`` is a copy
of, and the trained chat model of ``livefleet.trained_model`` (trained in the background from
the session's start, where a collected module will need it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import msgspec
import pytest

from infdebug.schema import GpuSample, MetricSample, Request, offsets_us
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


# --- the trained model, made beside the first tests -------------------------------------------
# Training the chat model that several modules share (``livefleet.trained_model``) takes a
# CPU for some seconds, and the tests before the first that needs it leave the second CPU
# idle: the session starts it in a process of its own where it will be needed, and
# ``trained_model`` waits for that process (or trains in process where it failed).
TRAINED_MODEL = ("tiny", "llama", "llama3")  # livefleet.trained_model's defaults
TRAINING: dict[str, subprocess.Popen[bytes]] = {}
_TRAIN = """
import sys
import torch
torch.set_num_threads(1)
from infdebug.tracer.engine.make_model import make_model
make_model(sys.argv[1], preset=sys.argv[2], arch=sys.argv[3], chat_format=sys.argv[4],
           train_steps=0)
"""


def trained_model_path(base: Any, preset: str, arch: str, chat_format: str) -> str:
    return str(base / "trained-models" / f"{preset}-{arch}-{chat_format}")


def wait_for_training(path: str) -> None:
    """If the session is training the model at ``path`` in the background, wait for it; a
    failed run leaves nothing behind (the caller then trains in process)."""
    proc = TRAINING.pop(path, None)
    if proc is None:
        return
    if proc.wait(timeout=900) != 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _train_in_background(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    if any(hasattr(getattr(it, "module", None), "trained_model") for it in request.session.items):
        path = trained_model_path(tmp_path_factory.getbasetemp(), *TRAINED_MODEL)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".log", "wb") as log:
            TRAINING[path] = subprocess.Popen(
                [sys.executable, "-c", _TRAIN, path, *TRAINED_MODEL],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
    yield
    for proc in TRAINING.values():  # not waited for: the session ended first
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def migrated_home(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded store's home as ``open_store`` leaves an empty one: every migration
    applied, then closed. Made once per session (when the first test that needs it opens its
    own store, which would close any other embedded store this process holds all the same),
    and copied for each test that asks for a fresh store."""
    from infdebug.store.base import migrate
    from infdebug.store.client import open_embedded

    home = str(tmp_path_factory.getbasetemp() / "migrated-home")
    st = open_embedded(home)
    try:
        migrate(st)
    finally:
        st.close()
    return home


def copy_home(src: str, dst: str) -> str:
    """A copy of the store home ``src`` at ``dst`` (the table directories' links are relative,
    and stay so), without its lock and owner files."""
    top = os.path.abspath(src)
    shutil.copytree(
        src,
        dst,
        symlinks=True,
        ignore=lambda d, names: ["lock", "owner.json"] if os.path.abspath(d) == top else [],
    )
    return dst


@pytest.fixture
def store(store_factory: Any, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A fresh store: on chDB, a copy of ``migrated_home`` (the same tables and migrations
    as migrating an empty home, without running every migration again for each test)."""
    if store_factory.backend == "chdb" and not os.path.exists(store_factory.home):
        copy_home(request.getfixturevalue("migrated_home"), store_factory.home)
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


def as_stored(rec: Any) -> Any:
    """``rec`` as the store gives it back: a request's token times to the microsecond (the
    store keeps them as integer microseconds, store/ddl.py migration 10)."""
    if isinstance(rec, Request) and rec.token_times_s:
        times = [u / 1e6 for u in offsets_us(rec.token_times_s)]
        return msgspec.structs.replace(rec, token_times_s=times)
    return rec


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
