"""sample_logs/generate.py makes a valid small fleet whose token IDs match its text."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from typing import Any

from conftest import REPO

from infdebug.schema import GpuSample, LineError, Request, read_records


def test_generator_makes_a_three_replica_fleet(tmp_path: Any) -> None:
    out = tmp_path / "fleet"
    subprocess.run([sys.executable, os.path.join(REPO, "sample_logs", "generate.py"), "--out", str(out),
                    "--requests", "60"], check=True, capture_output=True, timeout=120)
    recs = [r for f in sorted(os.listdir(out)) for _, r in read_records(str(out / f))]
    assert not [r for r in recs if isinstance(r, LineError)]
    reqs = [r for r in recs if isinstance(r, Request)]
    assert Counter(r.replica for r in reqs) == {"r1": 20, "r2": 20, "r3": 20}
    gpus = [r for r in recs if isinstance(r, GpuSample)]
    assert gpus and all(g.simulated for g in gpus)  # synthetic GPU data is labelled as such
    for r in reqs:
        assert r.prompt_ids and r.output_ids and len(r.token_times_s) == len(r.output_ids)
        assert r.token_times_s == sorted(r.token_times_s)
        assert r.prompt_text and r.prompt_text.endswith("<|im_start|>assistant\n")
    # r3 is the slow replica by construction
    def med_gap(rep: str) -> float:
        gaps = sorted(b - a for r in reqs if r.replica == rep for a, b in zip(r.token_times_s, r.token_times_s[1:], strict=False))
        return gaps[len(gaps) // 2]
    assert med_gap("r3") > 1.15 * med_gap("r1")


def test_committed_sample_logs_are_valid() -> None:
    d = os.path.join(REPO, "sample_logs", "fleet")
    files = sorted(os.listdir(d))
    assert files
    for f in files:
        bad = [(n, r) for n, r in read_records(os.path.join(d, f), strict=True) if isinstance(r, LineError)]
        assert not bad, (f, bad[:3])
