"""The dashboard in a real browser: ``infdebug dashboard`` started as a user starts it, driven
by headless Chromium (Debian's ``chromium`` + ``chromium-driver`` through Selenium). Every
page opened, a finding clicked through to its token diff, a request found by ID, a filter
changed, and a followed log directory appearing live. Screenshots and the timings a user
waits for land in ``test-artifacts/dashboard/`` (reported, never asserted).

Skipped where no browser is installed, unless ``INFDEBUG_REQUIRE_BROWSER=1`` (CI sets it,
after installing one), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import dashboard_probe as probe
from tests.conftest import REPO
from tests.test_dashboard import BIG_PROMPT, HOSTILE_ID, hostile_records

ARTIFACTS = os.environ.get("INFDEBUG_ARTIFACTS", os.path.join(REPO, "test-artifacts", "dashboard"))
_missing = probe.browser_missing()
if _missing and os.environ.get("INFDEBUG_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"INFDEBUG_REQUIRE_BROWSER=1 but {_missing}")
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"no browser: {_missing}")

TIMINGS: dict[str, Any] = {}


def _infdebug(home: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "infdebug.cli", "--home", str(home), *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The dashboard on a store loaded from sample_logs/, and a browser."""
    home = tmp_path_factory.mktemp("browser") / "home"
    hostile = tmp_path_factory.mktemp("hostile") / "hostile.requests.jsonl"
    hostile_records(hostile)  # a quoted replica and ID, a 10 MB prompt, a 100k-token request
    _infdebug(home, "ingest", os.path.join(REPO, "sample_logs"), str(hostile))
    # the sample fleet's tokenizer: the small preset's (the same fingerprint), for the pieces
    model = tmp_path_factory.mktemp("model") / "small"
    _infdebug(home, "make-model", str(model), "--preset", "small", "--chat-format", "llama3")
    log = str(tmp_path_factory.mktemp("log") / "dashboard.log")
    with (
        probe.dashboard(str(home), "--model", str(model), log=log) as url,
        probe.chromium() as driver,
    ):
        yield url, driver
    TIMINGS["store_requests"] = 323
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(os.path.join(ARTIFACTS, "timings.json"), "w") as f:
        json.dump(TIMINGS, f, indent=1)
    print("\ndashboard timings (s):", json.dumps(TIMINGS))


FEED_DONE = ("error ·", "No findings over this window")


def _feed_done(text: str) -> bool:
    return any(s in text for s in FEED_DONE)


def test_overview_first_render_and_findings(site: tuple[str, Any]) -> None:
    url, d = site
    t0 = time.perf_counter()
    d.get(url + "/")
    probe.wait_for(d, probe.has("Per replica against the fleet", "TTFT p99"), 90, "the overview")
    TIMINGS["overview_first_render_s"] = round(time.perf_counter() - t0, 3)
    probe.wait_for(d, _feed_done, 90, "the findings feed")
    TIMINGS["overview_findings_s"] = round(time.perf_counter() - t0, 3)
    text = probe.body(d)
    for needle in (
        "Fleet overview",
        "replica.latency_regression",
        "template.double_bos",
        "r2 (canary)",
        "r3 (canary)",
        "Per replica against the fleet",
        "SIMULATED",
    ):
        assert needle in text, needle
    probe.shot(d, ARTIFACTS, "overview")


# the "details" link of the one finding card whose text names KIND (and no other finding)
_LINK_OF = """
const kind = arguments[0];
for (const a of document.querySelectorAll('a[href*="finding?id="]')) {
  let el = a;
  for (let i = 0; i < 15 && el; i++) {
    el = el.parentElement;
    const t = el ? el.innerText : "";
    const cards = (t.match(/\\b(error|warning|info)\\b [a-z_]+\\.[a-z_]+ ·/g) || []).length;
    if (cards > 1) break;  // climbed past this link's own card
    if (cards === 1 && t.includes(kind)) return a;
  }
}
return null;
"""


def _eventually_link(d: Any, kind: str, timeout: float = 30.0) -> Any:
    """The finding's link once the feed shows it (a rerun may be redrawing it just now)."""
    deadline = time.monotonic() + timeout
    while True:
        link = d.execute_script(_LINK_OF, kind)
        if link is not None:
            return link
        assert time.monotonic() < deadline, probe.body(d)[:2000]
        time.sleep(0.2)


def test_click_finding_through_to_token_diff(site: tuple[str, Any]) -> None:
    url, d = site
    probe.open_page(d, url + "/", _feed_done, "the findings feed")
    # the double-BOS finding's "details" link: the first finding link after its title
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        StaleElementReferenceException,
    )

    for attempt in range(5):  # a rerun still finishing may redraw the feed under the click
        link = _eventually_link(d, "template.double_bos")
        try:
            d.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
            t0 = time.perf_counter()
            n = probe.run_number(d)
            link.click()
            break
        except (StaleElementReferenceException, ElementClickInterceptedException):
            assert attempt < 4, "the finding's link kept being redrawn"
            time.sleep(0.5)
    probe.wait_for(
        d, probe.has("Finding detail", "first divergence at token 1"), 60, "token diff", after=n
    )
    TIMINGS["finding_click_to_token_diff_s"] = round(time.perf_counter() - t0, 3)
    text = probe.body(d)
    assert "template.double_bos · r3 (canary)" in text
    from selenium.webdriver.common.by import By

    chips = d.find_elements(By.CSS_SELECTOR, "span.tk.first")
    # the second BOS, outlined as the divergence, with its piece (a special token)
    assert chips and "5072" in chips[0].text and "<|begin_of_text|>" in chips[0].text
    assert "sp" in (chips[0].get_attribute("class") or "").split()
    probe.shot(d, ARTIFACTS, "finding-token-diff")


@pytest.mark.parametrize(
    "path,needles",
    [
        (
            "/replica?unit=r2%1Fcanary",
            (
                "Replica drill-down",
                "r2 (canary) against the rest",
                "Start-up phases",
                "Finish reasons",
            ),
        ),
        ("/requests", ("Request explorer", "select a row")),
        ("/workload", ("Workload", "replicas needed", "requests per minute")),
        (
            "/report",
            ("Incident report", "Download the incident report", "## Timeline".replace("## ", "")),
        ),
    ],
)
def test_each_page_opens(site: tuple[str, Any], path: str, needles: tuple[str, ...]) -> None:
    url, d = site
    t = probe.open_page(d, url + path, probe.has(*needles), path)
    name = path.strip("/").split("?")[0]
    TIMINGS[f"{name}_render_s"] = round(t, 3)
    assert "Traceback" not in probe.body(d)
    probe.shot(d, ARTIFACTS, name)


def test_search_request_by_id(site: tuple[str, Any]) -> None:
    url, d = site
    probe.open_page(d, url + "/requests", probe.has("select a row"), "the request list")
    rid = "chatcmpl-91cad173f589410abf010f42"
    t0 = time.perf_counter()
    n = probe.run_number(d)
    probe.type_into(d, "request ID", rid)
    probe.wait_for(
        d, probe.has(rid, "prompt token IDs", "GPU during the request"), 30, "request", after=n
    )
    TIMINGS["search_by_id_s"] = round(time.perf_counter() - t0, 3)
    assert "r3 (canary)" in probe.body(d)
    probe.shot(d, ARTIFACTS, "request")


def test_huge_and_hostile_requests_render(site: tuple[str, Any]) -> None:
    url, d = site
    for rid, name in (("big-prompt", "big_prompt"), ("long-ids", "long_ids")):
        t = probe.open_page(d, f"{url}/requests?id={rid}", probe.has(rid, "show all"), rid)
        TIMINGS[f"{name}_render_s"] = round(t, 3)
        assert len(probe.body(d)) < len(BIG_PROMPT) // 10  # cut, not 10 MB into the page
        probe.shot(d, ARTIFACTS, f"request-{name}")
    from urllib.parse import quote

    probe.open_page(
        d, f"{url}/requests?id={quote(HOSTILE_ID)}", probe.has(HOSTILE_ID), "hostile ID"
    )
    assert "r9'\"; DROP TABLE requests;" in probe.body(d)  # the replica, shown as it is


def test_time_range_filter_change(site: tuple[str, Any]) -> None:
    url, d = site
    probe.open_page(d, url + "/", _feed_done, "the findings feed")
    t0 = time.perf_counter()
    n = probe.run_number(d)
    probe.choose(d, "time range", "last 15 min")
    probe.wait_for(d, probe.has("Per replica against the fleet"), 60, "the overview", after=n)
    TIMINGS["filter_change_s"] = round(time.perf_counter() - t0, 3)
    probe.wait_for(d, _feed_done, 60, "the re-filtered findings", after=n)
    TIMINGS["filter_change_findings_s"] = round(time.perf_counter() - t0, 3)
    assert "requests" in probe.body(d)


def test_follow_shows_a_fleet_as_it_writes(tmp_path: Path) -> None:
    """``--follow`` runs the tailer inside the dashboard's process: files written after the
    page opened appear on it (auto-refresh is on while following)."""
    home, traces = tmp_path / "home", tmp_path / "traces"
    traces.mkdir()
    with (
        probe.dashboard(str(home), "--follow", str(traces), "--interval", "0.3") as url,
        probe.chromium() as d,
    ):
        probe.open_page(d, url + "/", probe.has("no requests yet", "Following"), "empty store")
        for f in sorted((Path(REPO) / "sample_logs" / "canary").glob("*.jsonl")):
            shutil.copy(f, traces / f.name)
        t0 = time.perf_counter()
        probe.wait_for(
            d, probe.has("Fleet overview", "r2 (canary)", "requests"), 90, "the followed records"
        )
        TIMINGS["follow_to_page_s"] = round(time.perf_counter() - t0, 3)
        probe.wait_for(d, _feed_done, 90, "findings of the followed fleet")
        assert "template.double_bos" in probe.body(d)
        probe.shot(d, ARTIFACTS, "follow")
