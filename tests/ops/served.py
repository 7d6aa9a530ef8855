"""Serving as `make run` serves, for the browser tests: gunicorn with DEBUG off on a free port against the test
database (`web`, one per module), and headless Chromium recording every CSP violation from before the page's
first script (`browser`), with the checks and steps the page tests share."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.chromium import Chromium
from tests.ops.conftest import BASE_DIR, child_env, wait_for

PASSWORD = "correct-horse-battery"
# Records every CSP violation the page reports, from before its first script runs (scripts DevTools adds
# this way are not subject to the page's policy).
RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push({directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile});
});
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Web:
    """gunicorn as `make run` starts it, on a free port, against the test database."""

    def __init__(self, var_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        argv = [sys.executable, "-m", "gunicorn", "aipb.wsgi", "--bind", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(
            [*argv, "--workers", "2", "--config", "python:aipb.gunicorn_conf"],
            cwd=BASE_DIR,
            env=child_env(AIPB_VAR_DIR=str(var_dir), DJANGO_DEBUG="0", DJANGO_SECURE_COOKIES="0"),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._up, timeout=60, what="gunicorn to answer")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return self.get("/api/version")[0] == 200
        except OSError:
            return False

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def web(django_db_setup, collected_static, tmp_path_factory):
    server = Web(collected_static.parent, tmp_path_factory.mktemp("web") / "gunicorn.log")
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path):
    chromium = Chromium(tmp_path / "profile")
    try:
        chromium.open_page()
        chromium.send("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER})
        yield chromium
    finally:
        chromium.close()


def wait_true(browser: Chromium, expression: str, what: str, timeout: float = 30.0) -> None:
    wait_for(lambda: browser.evaluate(expression), timeout=timeout, interval=0.2, what=what)


def loaded_stylesheets(browser: Chromium) -> list[dict]:
    return browser.evaluate(
        "performance.getEntriesByType('resource').filter(e => e.initiatorType === 'link')"
        ".map(e => ({url: e.name, status: e.responseStatus}))"
    )


def check_page(browser: Chromium, origin: str, *, violations: list[dict] | None = None) -> None:
    """Every stylesheet linked loaded (200) and is readable; every resource the page loaded is ours; the
    page broke none of its policy's rules (but the ones named)."""
    sheets = loaded_stylesheets(browser)
    assert all(sheet["status"] == 200 for sheet in sheets), sheets
    assert browser.evaluate(
        "Array.from(document.querySelectorAll('link[rel=stylesheet]')).every(l => l.sheet && l.sheet.cssRules.length)"
    )
    recorded = [{k: v[k] for k in ("directive", "blocked")} for v in browser.evaluate("window.__cspViolations")]
    assert recorded == (violations or [])
    blocked = {v["blocked"] for v in recorded}
    resources = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert [url for url in resources if not url.startswith(origin + "/") and url not in blocked] == []


def log_in(browser: Chromium, origin: str, username: str) -> None:
    browser.navigate(f"{origin}/admin/login/?next=/admin/")
    browser.submit_form({"id_username": username, "id_password": PASSWORD})
    assert browser.evaluate("location.pathname") == "/admin/", browser.evaluate("document.body.innerText")
