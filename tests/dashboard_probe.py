"""Drive ``infdebug dashboard`` with a real headless Chromium (Debian's ``chromium`` with its
``chromium-driver``, through Selenium): start the server, wait for a page's script run to
finish, click, type, time what a user waits for, and keep screenshots. Used by
tests/test_dashboard_browser.py and bench/dashboard.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

CHROMIUM = os.environ.get("INFDEBUG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("INFDEBUG_CHROMEDRIVER", "/usr/bin/chromedriver")


def browser_missing() -> str | None:
    """Why no browser can run here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    for p in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(p) or shutil.which(p)):
            return f"{p} is absent (apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(
    cmd: list[str],
    port: int,
    *,
    out: Any,
    log: str | None = None,
    timeout: float = 90,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``cmd`` (a dashboard serving on ``port``, output to ``out``); yields its URL once
    ``/_stcore/health`` says ok; terminates it after."""
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited with {proc.returncode} (log: {log})")
            health = url + "/_stcore/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not come up in {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dashboard(
    home: str, *extra: str, port: int | None = None, log: str | None = None, timeout: float = 90
) -> Iterator[str]:
    """``infdebug --home HOME dashboard EXTRA…`` on a free port; yields its URL once healthy."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "infdebug.cli", "--home", home, "dashboard", "--port", str(port)]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        with running([*cmd, *extra], port, out=out, log=log, timeout=timeout) as url:
            yield url
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


@contextlib.contextmanager
def chromium(width: int = 1500, height: int = 1100) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--disable-extensions",
        "--no-first-run",
    ):
        opts.add_argument(a)
    driver = webdriver.Chrome(
        service=Service(shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=opts
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def body(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except Exception:  # the page is being replaced
        return ""


def run_number(driver: Any) -> int:
    """The number of the session's last finished run (the app's run marker; 0: none yet)."""
    try:
        v = driver.execute_script(
            "const e = document.getElementById('infdebug-run'); return e ? e.dataset.run : '0';"
        )
        return int(v or 0)
    except Exception:  # the page is being replaced
        return 0


def wait_for(
    driver: Any,
    check: Callable[[str], bool],
    timeout: float = 60.0,
    what: str = "",
    after: int = 0,
) -> float:
    """Seconds until a run numbered above ``after`` has finished and the page's text
    passes ``check``; raises with the page's text when it never does."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    text = ""
    while time.perf_counter() < deadline:
        if run_number(driver) > after:
            text = body(driver)
            if check(text):
                return time.perf_counter() - t0
        time.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what or check}: page says:\n{text[:1500]}\n…\n{text[-2500:]}"
    )


def has(*needles: str) -> Callable[[str], bool]:
    return lambda text: all(n in text for n in needles)


def open_page(
    driver: Any, url: str, check: Callable[[str], bool], what: str, timeout: float = 90.0
) -> float:
    """Load ``url``; seconds until ``check`` holds and the run is over."""
    t0 = time.perf_counter()
    driver.get(url)
    wait_for(driver, check, timeout, what, after=0)
    return time.perf_counter() - t0


def shot(driver: Any, folder: str, name: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.png")
    driver.save_screenshot(path)
    return path


def choose(driver: Any, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    from selenium.webdriver.common.by import By

    boxes = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]')
    box = next(b for b in boxes if b.text.splitlines()[:1] == [label] or label in b.text)
    box.find_element(
        By.CSS_SELECTOR, '[role="combobox"], input, div[data-baseweb="select"]'
    ).click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for o in driver.find_elements(By.CSS_SELECTOR, '[role="option"]'):
            if o.text.strip() == option:
                o.click()
                return
        time.sleep(0.05)
    raise AssertionError(f"no option {option!r} under {label!r}")


def type_into(driver: Any, label: str, text: str) -> None:
    """Type ``text`` into the text input labelled ``label`` and press Enter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    fields = driver.find_elements(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    if not fields:
        raise AssertionError(f"no text input labelled {label!r}")
    field = fields[0]
    field.send_keys(Keys.CONTROL, "a")  # clear() leaves React's value behind
    field.send_keys(Keys.DELETE)
    field.send_keys(text)
    field.send_keys(Keys.ENTER)


def click_link(driver: Any, href_part: str) -> None:
    """Click the first link whose address contains ``href_part``."""
    from selenium.webdriver.common.by import By

    for a in driver.find_elements(By.TAG_NAME, "a"):
        href = a.get_attribute("href") or ""
        if href_part in href:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", a)
            a.click()
            return
    raise AssertionError(f"no link with {href_part!r}")
