"""Metrics across real processes: gunicorn with 2 workers, forking RQ workers (a work-horse per job),
a non-forking worker and `manage.py metrics_server`, all sharing one PROMETHEUS_MULTIPROC_DIR,
scraped over HTTP. What one process counts must show up in every scrape, exactly once, also
after that process has exited; and the directory must not grow with the number of jobs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token

from jobs.models import FINAL_STATUSES, AIJob, JobStatus
from tests.conftest import child_database_url
from tests.monitoring.test_metrics import (
    SIM,
    ensure_sim_price,
    family_names,
    parse_metrics,
    promtool_check,
    submit,
    value,
)
from tests.monitoring.test_monitoring_config import EXPORTED_METRICS

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SIMPLE = {"provider": "simulated", "model": "sim-small"}
# A process writes one file per kind of metric it has values for (counter, gauge_max, histogram, summary): a
# fixed number, whatever the jobs it runs.
FILES_PER_PROCESS = 4


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    """The test database (pytest-django's), for the child processes."""
    return child_database_url()


def http(url: str, *, method: str = "GET", body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(predicate, *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


class Stack:
    """Child processes on loopback against the test database and Redis, one metrics directory."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "metrics"
        self.dir.mkdir()  # empty at start, as `make run` and deployments must leave it
        self.logs = tmp_path
        self.procs: list[tuple[str, subprocess.Popen]] = []
        inherited = ("PROMETHEUS_", "METRICS_", "AI_", "DJANGO_", "DATABASE_", "REDIS_")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        self.env.update(
            DATABASE_URL=_database_url(),
            REDIS_URL=settings.REDIS_URL,
            DJANGO_SECRET_KEY=settings.SECRET_KEY,
            PROMETHEUS_MULTIPROC_DIR=str(self.dir),
            AI_ENABLE_SIMULATED_PROVIDER="1",
            AI_RATE_LIMIT_PER_SECOND="0",
            AI_CIRCUIT_FAILURE_THRESHOLD="0",  # as in tests/conftest.py
            AI_BACKOFF_BASE_SECONDS="0.01",
            AI_BACKOFF_MAX_SECONDS="0.05",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}-{len(self.procs)}.log", "wb")  # closed when the test process exits
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.log_path = log.name
        self.procs.append((name, proc))
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text(errors="replace")[-3000:]

    def wait_http(self, proc: subprocess.Popen, url: str) -> None:
        def up() -> bool:
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{self.output(proc)}"
            try:
                http(url)
                return True
            except OSError:
                return False

        wait_for(up, timeout=30, what=url)

    def gunicorn(self, **env: str) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        argv = [sys.executable, "-m", "gunicorn", "aipb.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        proc = self.start("gunicorn", [*argv, "--config", "python:aipb.gunicorn_conf"], **env)
        base = f"http://127.0.0.1:{port}"
        self.wait_http(proc, base + "/api/version")
        wait_for(lambda: len(_children(proc.pid)) == 2, what="2 gunicorn workers")
        return proc, base

    def worker(self, *extra: str, **env: str) -> subprocess.Popen:
        argv = [sys.executable, "manage.py", "rqworker", "ai-high", "ai-default", "ai-low", "--with-scheduler"]
        argv += ["--worker-class", "jobs.worker.AIPBWorker"]  # forking unless a test says otherwise (later wins)
        return self.start("worker", [*argv, *extra], **env)

    def metrics_server(self, **env: str) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        proc = self.start("metrics_server", [sys.executable, "manage.py", "metrics_server", "--port", str(port)], **env)
        url = f"http://127.0.0.1:{port}/metrics"
        self.wait_http(proc, url)
        return proc, url

    def stop(self, *procs: subprocess.Popen, timeout: float = 20) -> None:
        """SIGTERM: an RQ worker shuts down warm (and unregisters), gunicorn gracefully."""
        running = [proc for proc in procs if proc.poll() is None]
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        """Kill whatever is left (every job is final by now). A work-horse is in its own process group."""
        for _, proc in self.procs:
            if proc.poll() is None:
                for child in _children(proc.pid):
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def files(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("*.db"))


@pytest.fixture
def stack(tmp_path, transactional_db, redis_conn):
    s = Stack(tmp_path)
    yield s
    s.close()  # before the test database is flushed and dropped


def scrape(url: str, token: str | None = None) -> str:
    status, text = http(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    assert status == 200, text
    return text


def all_final(ids) -> bool:
    return not AIJob.objects.filter(id__in=ids).exclude(status__in=FINAL_STATUSES).exists()


def identifier(filename: str) -> str:
    return filename.rsplit("_", 1)[1].removesuffix(".db")


# --------------------------------------------------------------------------- tests


def test_one_scrape_adds_up_work_horses_gunicorn_workers_and_processes_that_exited(stack, user):
    ensure_sim_price()
    workers = [stack.worker(), stack.worker()]  # booting while gunicorn does
    gunicorn, base = stack.gunicorn(METRICS_TOKEN="scrape-token")
    auth = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    plan = [
        ({}, 3),  # succeed at once
        ({"fail_attempts": 1, "error": "unavailable"}, 2),  # 503, then success
        ({"fail_attempts": 1, "error": "invalid_page"}, 1),  # fails validation (billed), then passes
        ({"fail_attempts": 5, "error": "auth"}, 1),  # 401: dead at once
        ({"fail_attempts": 5, "error": "invalid_json"}, 1),  # invalid 3 times (billed): dead, budget spent
    ]
    ids, posts = [], 0
    for simulate, count in plan:
        for _ in range(count):
            body = {"prompt": "A page", **SIMPLE, "options": {"simulate": {**SIM, **simulate}}}
            status, text = http(base + "/api/ai/jobs", method="POST", body=body, headers=auth)
            assert status == 201, text
            ids.append(json.loads(text)["id"])
            posts += 1
    # fails with a 429 asking for 120 s: canceled while it waits for its retry (counted by gunicorn)
    body = {
        "prompt": "A page",
        **SIMPLE,
        "options": {"simulate": {"fail_attempts": 5, "error": "rate_limit", "retry_after": 120}},
    }
    status, text = http(base + "/api/ai/jobs", method="POST", body=body, headers=auth)
    canceled = json.loads(text)["id"]
    wait_for(lambda: AIJob.objects.get(id=canceled).status == JobStatus.RETRYING, what="the 429 job retrying")
    assert http(base + f"/api/ai/jobs/{canceled}/cancel", method="POST", headers=auth)[0] == 200
    posts += 2

    wait_for(lambda: all_final([*ids, canceled]), what="every job final")
    stack.stop(*workers)  # their counters must outlive them
    first_web_workers = _children(gunicorn.pid)
    for pid in first_web_workers:  # and so must the web workers' (gunicorn starts new ones)
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: len(_children(gunicorn.pid) - first_web_workers) == 2, what="2 new gunicorn workers")
    stack.wait_http(gunicorn, base + "/api/version")

    assert http(base + "/metrics")[0] == 401
    assert http(base + "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    text = scrape(base + "/metrics", token="scrape-token")
    m = parse_metrics(text)

    assert value(m, "ai_jobs_total", **SIMPLE, status="succeeded") == 6
    assert value(m, "ai_jobs_total", **SIMPLE, status="dead") == 2
    assert value(m, "ai_jobs_total", **SIMPLE, status="canceled") == 1
    assert value(m, "ai_jobs_retry_total", **SIMPLE) == 6
    # every failed attempt by type, retried or not
    assert value(m, "ai_jobs_errors_total", **SIMPLE, error_type="SERVICE_UNAVAILABLE") == 2
    assert value(m, "ai_jobs_errors_total", **SIMPLE, error_type="VALIDATION_ERROR") == 4
    assert value(m, "ai_jobs_errors_total", **SIMPLE, error_type="AUTH_ERROR") == 1
    assert value(m, "ai_jobs_errors_total", **SIMPLE, error_type="RATE_LIMIT") == 1
    assert value(m, "ai_jobs_attempts_total", **SIMPLE, outcome="succeeded") == 6
    assert value(m, "ai_jobs_attempts_total", **SIMPLE, outcome="failed") == 8
    assert value(m, "ai_jobs_processing_duration_seconds_count", **SIMPLE) == 14
    assert value(m, "ai_jobs_processing_duration_seconds_bucket", **SIMPLE, le="+Inf") == 14
    assert value(m, "ai_jobs_processing_duration_seconds_bucket", **SIMPLE, le="300.0") == 14
    assert value(m, "ai_jobs_validation_total", **SIMPLE, result="pass") == 6
    assert value(m, "ai_jobs_validation_total", **SIMPLE, result="fail") == 4
    assert value(m, "ai_jobs_validation_pass_rate") == 60.0
    # 10 billed calls (6 successes, 1 invalid page, 3 invalid JSON) of 100 + 50 tokens at 1 / 2 USD per million
    assert value(m, "ai_llm_tokens_total", **SIMPLE, type="prompt") == 1000
    assert value(m, "ai_llm_tokens_total", **SIMPLE, type="completion") == 500
    assert value(m, "ai_llm_tokens_total", **SIMPLE, type="cached") == 0
    assert value(m, "ai_llm_cost_usd_total", **SIMPLE) == pytest.approx(0.002)
    queue = {s: value(m, "ai_queue_size", status=s) for s in ("waiting", "active", "delayed", "completed", "failed")}
    assert queue == {"waiting": 0, "active": 0, "delayed": 0, "completed": 14, "failed": 0}
    assert [value(m, "ai_workers", state=s) for s in ("idle", "busy", "suspended")] == [0, 0, 0]
    assert value(m, "ai_dlq_entries", status="open") == 2
    version = json.loads(http(base + "/api/version")[1])
    assert value(m, "ai_build_info", version=version["version"], commit=version["commit"]) == 1
    # django-prometheus in the same scrape, summed over 4 web workers (2 of them gone)
    assert value(m, "django_http_requests_total_by_method_total", method="POST") == posts
    assert set(EXPORTED_METRICS) - family_names(text) == {"ai_rate_limit_wait_total"}  # never rate limited here
    assert promtool_check(text) == ""

    # files: one set per web worker and one per RQ worker's horse slot, none for the RQ workers themselves
    slots = {f"{w.pid}-horse" for w in workers}
    web = first_web_workers | _children(gunicorn.pid)
    ids_on_disk = {identifier(f) for f in stack.files()}
    assert slots <= ids_on_disk <= slots | {str(pid) for pid in web}
    assert len(stack.files()) <= FILES_PER_PROCESS * (len(slots) + len(web))


def test_queue_and_worker_gauges_while_jobs_wait_are_delayed_and_run(stack, user):
    stack.worker()
    _, url = stack.metrics_server(METRICS_TOKEN="t0ken")
    delayed = submit(user, fail_attempts=1, error="rate_limit", retry_after=120)
    wait_for(lambda: AIJob.objects.get(id=delayed.id).status == JobStatus.RETRYING, what="a retry 120 s out")
    running = submit(user, latency_ms=4000)
    wait_for(lambda: AIJob.objects.get(id=running.id).status == JobStatus.RUNNING, what="the slow job running")
    waiting = [submit(user) for _ in range(2)]

    m = parse_metrics(scrape(url, token="t0ken"))

    sizes = {s: value(m, "ai_queue_size", status=s) for s in ("waiting", "active", "delayed")}
    assert sizes == {"waiting": 2, "active": 1, "delayed": 1}
    assert [value(m, "ai_workers", state=s) for s in ("idle", "busy", "suspended")] == [0, 1, 0]

    wait_for(lambda: all_final([running.id, *[j.id for j in waiting]]), what="the slow job and the 2 waiting")
    wait_for(lambda: not AIJob.objects.filter(id=running.id, status=JobStatus.RUNNING).exists())
    wait_for(
        lambda: value(parse_metrics(scrape(url, token="t0ken")), "ai_workers", state="idle") == 1, what="worker idle"
    )
    m = parse_metrics(scrape(url, token="t0ken"))
    sizes = {s: value(m, "ai_queue_size", status=s) for s in ("waiting", "active", "delayed", "completed")}
    assert sizes == {"waiting": 0, "active": 0, "delayed": 1, "completed": 4}
    assert value(m, "ai_jobs_total", **SIMPLE, status="succeeded") == 3
    assert value(m, "ai_jobs_retry_total", **SIMPLE) == 1
    assert value(m, "ai_jobs_errors_total", **SIMPLE, error_type="RATE_LIMIT") == 1
    assert value(m, "ai_jobs_processing_duration_seconds_bucket", **SIMPLE, le="2.5") == 3
    assert value(m, "ai_jobs_processing_duration_seconds_bucket", **SIMPLE, le="5.0") == 4

    # metrics_server's own edges: the token, the one path, read-only
    assert http(url)[0] == 401
    assert http(url, headers={"Authorization": "Bearer nope"})[0] == 401
    assert http(url.replace("/metrics", "/"), headers={"Authorization": "Bearer t0ken"})[0] == 404
    assert http(url, method="POST", body={}, headers={"Authorization": "Bearer t0ken"})[0] == 405


def test_metric_files_stay_bounded_however_many_jobs_a_forking_worker_runs(stack, user, capsys):
    worker = stack.worker()
    _, url = stack.metrics_server()
    first = [submit(user) for _ in range(5)]
    wait_for(lambda: all_final([j.id for j in first]), what="5 jobs")
    files_after_5 = stack.files()
    more = [submit(user) for _ in range(20)]
    wait_for(lambda: all_final([j.id for j in more]), what="20 more jobs")

    assert stack.files() == files_after_5, "25 work-horses, the same files"
    assert {identifier(f) for f in files_after_5} == {f"{worker.pid}-horse"}
    assert len(files_after_5) <= FILES_PER_PROCESS
    m = parse_metrics(scrape(url))
    assert value(m, "ai_jobs_total", **SIMPLE, status="succeeded") == 25
    assert value(m, "ai_jobs_processing_duration_seconds_count", **SIMPLE) == 25

    stack.stop(worker)
    assert value(parse_metrics(scrape(url)), "ai_jobs_total", **SIMPLE, status="succeeded") == 25

    # the non-forking worker runs jobs in its own process: its pid names its files
    simple_jobs = [submit(user) for _ in range(3)]
    simple = stack.worker("--burst", "--worker-class", "jobs.worker.AIPBSimpleWorker")
    assert simple.wait(timeout=30) == 0, stack.output(simple)
    assert all_final([j.id for j in simple_jobs])
    assert {identifier(f) for f in stack.files()} == {f"{worker.pid}-horse", str(simple.pid)}
    text = scrape(url)
    assert value(parse_metrics(text), "ai_jobs_total", **SIMPLE, status="succeeded") == 28
    assert promtool_check(text) == ""

    started = time.perf_counter()
    for _ in range(20):
        scrape(url)
    with capsys.disabled():
        per_scrape = (time.perf_counter() - started) / 20 * 1000
        print(f"\n[metrics] {len(stack.files())} files after 28 jobs; metrics_server scrape {per_scrape:.1f} ms")
