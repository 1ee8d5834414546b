"""The demo behind ``make demo`` leaves nothing behind: its temporary trace directory goes
however the demo ends (done, an error, Ctrl-C, SIGTERM); ``--out DIR`` is kept."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from typing import Any

import pytest

from infdebug.demo import sigterm_as_interrupt, trace_dir_for


@pytest.fixture
def tmp_root(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.mark.parametrize("ending", [None, RuntimeError, KeyboardInterrupt])
def test_the_temporary_trace_dir_is_removed_however_the_demo_ends(
    tmp_root: Any, ending: type[BaseException] | None
) -> None:
    seen: list[str] = []

    def run() -> None:
        with trace_dir_for(None) as d:
            seen.append(d)
            with open(os.path.join(d, "r1.jsonl"), "w") as f:
                f.write("{}\n")
            os.makedirs(os.path.join(d, "logs"))
            if ending is not None:
                raise ending("stop")

    if ending is None:
        run()
    else:
        with pytest.raises(ending):
            run()
    assert seen and seen[0].startswith(str(tmp_root)) and not os.path.exists(seen[0])
    assert os.listdir(tmp_root) == []


def test_out_is_emptied_then_kept(tmp_path: Any) -> None:
    out = tmp_path / "traces"
    out.mkdir()
    (out / "old.jsonl").write_text("{}\n")
    with trace_dir_for(str(out)) as d:
        assert d == str(out) and os.listdir(d) == []
        (out / "new.jsonl").write_text("{}\n")
    assert os.listdir(out) == ["new.jsonl"]


def test_sigterm_unwinds_like_ctrl_c(tmp_root: Any) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(), trace_dir_for(None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # not reached: the handler raises at once
    assert os.listdir(tmp_root) == [] and signal.getsignal(signal.SIGTERM) == before


def test_a_failing_demo_removes_its_trace_dir(
    tmp_root: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(
        "torch", reason="the demo's engine needs torch (pip install -e '.[engine]')"
    )
    from infdebug import demo
    from infdebug.fleet.traces import TraceFormatError

    home = tmp_path / "home"
    (home / "demo" / "model").mkdir(parents=True)
    (home / "demo" / "model" / "config.json").write_text(
        "{}"
    )  # a checkpoint is there: no model is made
    monkeypatch.setenv("INFDEBUG_HOME", str(home))
    bad = tmp_path / "not-a-trace.csv"
    bad.write_text("when,in,out\n")
    with pytest.raises(TraceFormatError):
        demo.main(["--trace", str(bad), "--seconds", "1"])
    assert os.listdir(tmp_root) == []
