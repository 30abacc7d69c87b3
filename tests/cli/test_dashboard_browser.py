"""The web backend's dashboard in a real browser.

Debian's headless ``chromium`` loads ``examples/web_backend.py``'s page (the app in its own
process, its local trainer in a child process), starts a run with the page's button, and the
test reads the DOM through the Chrome DevTools Protocol. CDP goes over
``--remote-debugging-pipe`` (NUL-separated JSON on file descriptors 3 and 4), so no websocket
library is needed.

Without chromium the test skips, except in CI (``CI`` set) where it fails: ``.ci/run``
installs it. ``DASHBOARD_SCREENSHOT=docs/dashboard.png`` also saves the page after the 20-step
run there (that is how the docs' screenshot, docs/dashboard.png, is made).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_backend.py"
TOKEN = "dashboard-test-token-0123456789"
STALL_LIMIT_MS = 50.0


def _chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


class Browser:
    """A headless chromium driven over the DevTools pipe: just enough CDP for this test."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            executable,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a small /dev/shm
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--window-size=1200,860",
            "about:blank",
        ]
        # chromium reads commands on fd 3 and writes replies on fd 4 (bash, not dash: the pipes'
        # descriptors may have two digits).
        redirect = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.process = subprocess.Popen(
            ["bash", "-c", redirect, "bash", *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached page, once attached) and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:  # events (no id) are not needed
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply["result"]
                    return result
            readable, _, _ = select.select(
                [self._from_browser], [], [], max(0.0, deadline - time.monotonic())
            )
            if not readable:
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self._buffer += chunk

    def open(self, url: str) -> None:
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self._session = attached["sessionId"]
        self.call("Page.navigate", url=url)

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page and return its value (JSON-able)."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is still loading
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                line = self.js("document.getElementById('run-line')?.innerText")
                raise TimeoutError(f"still falsy after {timeout} s: {expression} ({line})")
            time.sleep(0.05)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self._session = None
            self.call("Browser.close", timeout=5)
            self.process.wait(5)
        except (OSError, TimeoutError, EOFError, RuntimeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)



@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    """examples/web_backend.py serving on a free loopback port (its own process)."""
    port = free_port()
    log = (tmp_path / "app.log").open("w")
    root = str(EXAMPLE.parent.parent)  # the example imports firetitan_async from this checkout
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["WEB_BACKEND_TOKEN"] = TOKEN  # the page gets it from its address (#token=)
    process = subprocess.Popen(
        # 50 ms per reply: the local trainer answers as slowly as a small remote one.
        [sys.executable, str(EXAMPLE), "--port", str(port), "--latency-ms", "50"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "PYTHONPATH": path},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start: {(tmp_path / 'app.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    chromium = Browser(_chromium_path(), tmp_path / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


def _values(browser: Browser, chart_id: str) -> list[float]:
    values: list[float] = browser.js(f"JSON.parse(document.getElementById('{chart_id}')"
                                     ".dataset.values)")
    return values


def _stall_ms(browser: Browser) -> float:
    return float(browser.wait_for("document.getElementById('stall-max').dataset.ms"))


def test_dashboard_run_charts_gauges_and_stop(
    app_url: str, browser: Browser, tmp_path: Path
) -> None:
    started = time.monotonic()
    browser.open(f"{app_url}/#token={TOKEN}")
    # The feed is connected once the job's state arrived: the app's trainer job is RUNNING.
    assert browser.wait_for("document.getElementById('job-state').textContent === 'RUNNING'")
    assert browser.js("document.getElementById('policy-published').textContent") == "n/a"
    text: Callable[[str], Any] = lambda el: browser.js(  # noqa: E731
        f"document.getElementById('{el}').textContent"
    )

    # A 20-step run started with the page's own button (the form's default is 20 steps).
    assert browser.js("document.getElementById('steps').value") == "20"
    browser.js("document.getElementById('start').click()")
    browser.wait_for("document.getElementById('status').dataset.status === 'done'")
    assert text("step") == "20" and text("run-id") == "1"
    # The charts redraw on the next animation frame (at most once per frame), the status at
    # once: wait for the frame that draws the last step's events (all sent before "done").
    browser.wait_for(
        "JSON.parse(document.getElementById('reward-chart').dataset.values).length >= 4"
        " && JSON.parse(document.getElementById('loss-chart').dataset.values).length >= 20"
    )

    loss = _values(browser, "loss-chart")
    assert len(loss) >= 20, loss
    assert loss[-1] < 0.5 * loss[0], loss  # the curve falls
    drawn = browser.js(
        "document.querySelector('#loss-chart polyline').getAttribute('points').split(' ').length"
    )
    assert drawn == len(loss)
    assert len(_values(browser, "reward-chart")) == 4  # a reward every 5 steps
    assert len(_values(browser, "rate-chart")) >= 19

    # The in-flight gauge moved up during the run and back to 0 after it.
    browser.wait_for("document.getElementById('inflight-total').textContent === '0'")
    in_flight = _values(browser, "inflight-chart")
    assert max(in_flight) > 0 and in_flight[-1] == 0, in_flight
    assert int(text("inflight-max")) >= 2  # two steps are kept in flight

    stall = _stall_ms(browser)
    assert stall < STALL_LIMIT_MS, f"the app's loop stalled {stall} ms"
    png = browser.screenshot()
    assert png.startswith(b"\x89PNG")
    (tmp_path / "dashboard.png").write_bytes(png)
    if target := os.environ.get("DASHBOARD_SCREENSHOT"):
        Path(target).write_bytes(png)

    # A long run, stopped with the page's Stop button.
    browser.js("document.getElementById('steps').value = '100000'")
    browser.js("document.getElementById('start').click()")
    browser.wait_for("document.getElementById('run-id').textContent === '2'")
    browser.wait_for("Number(document.getElementById('step').textContent) >= 5")
    assert browser.js("document.getElementById('stop').disabled") is False
    browser.js("document.getElementById('stop').click()")
    browser.wait_for("document.getElementById('status').dataset.status === 'stopped'")
    stopped_at = int(text("step"))
    time.sleep(0.5)
    assert int(text("step")) == stopped_at < 100_000
    status = httpx.get(f"{app_url}/runs/2", timeout=5).json()
    assert status["status"] == "stopped" and status["steps_done"] == stopped_at
    assert browser.js("document.getElementById('start').disabled") is False

    stall = _stall_ms(browser)
    assert stall < STALL_LIMIT_MS, f"the app's loop stalled {stall} ms"
    wall = browser.js("document.getElementById('stall-wall').dataset.ms")
    print(f"largest loop stall {stall} ms ({wall} ms with waits for a CPU, load "
          f"{os.getloadavg()[0]:.1f}); stopped at step {stopped_at}; "
          f"{time.monotonic() - started:.1f} s")
