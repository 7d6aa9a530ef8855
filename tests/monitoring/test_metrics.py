"""Metrics in one process: /metrics, the scrape-time gauges, the validation window, metrics_server's
input checks — and the multiprocess value class, in a fresh interpreter with real forks.

Here PROMETHEUS_MULTIPROC_DIR is unset, so counters live in this process's registry and only
jobs run in this process count: the tests use the non-forking AIPBSimpleWorker and compare
before/after. tests/monitoring/test_metrics_e2e.py runs the real multi-process setup.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from aipb import redis_client
from aipb.views import build_info
from dlq.models import DeadLetter
from dlq.services import dlq_discard
from jobs import queues, redis_state
from jobs.models import AIJob, JobStatus
from jobs.worker import AIPBSimpleWorker
from monitoring import metrics, validation_window
from tests.factories import ModelPriceFactory, submit_job
from tests.monitoring.test_monitoring_config import EXPORTED_METRICS
from usage.models import ModelPrice

REPO_ROOT = Path(__file__).resolve().parents[2]
SIM = {"prompt_tokens": 100, "completion_tokens": 50}  # priced 1 / 2 USD per million: 0.0002 USD a call


# --------------------------------------------------------------------------- helpers (the e2e file uses them too)


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value} for every sample of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    """One sample's value; 0 when absent (a counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def family_names(text: str) -> set[str]:
    """Metric names as the monitoring config writes them: counters with their _total, histograms by base name."""
    return {
        family.name + ("_total" if family.type == "counter" else "") for family in text_string_to_metric_families(text)
    }


def promtool_check(text: str) -> str:
    """`promtool check metrics` output on the exposition ('' when clean)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing (Debian package `prometheus`)"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f" (exit {done.returncode})")


def ensure_sim_price() -> None:
    """sim-small at 1 / 2 USD per million in / out (a data migration seeds it; transactional tests flush it)."""
    if not ModelPrice.objects.filter(provider="simulated", model="sim-small").exists():
        ModelPriceFactory(
            provider="simulated",
            model="sim-small",
            input_per_million=Decimal("1"),
            output_per_million=Decimal("2"),
            effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        )
    price = ModelPrice.objects.filter(provider="simulated", model="sim-small").latest("effective_from")
    assert (price.input_per_million, price.output_per_million) == (1, 2)


def submit(user, **simulate) -> AIJob:
    """A sim-small job billed SIM's tokens per answer, with these faults (the e2e metrics tests use it too)."""
    return submit_job(user, simulate={**SIM, **simulate})


# --------------------------------------------------------------------------- in-process tests

SIMPLE = {"provider": "simulated", "model": "sim-small"}


def scrape(**headers) -> str:
    response = Client().get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


def test_counters_count_every_attempt_retry_and_final_state(user, run_worker):
    ensure_sim_price()
    before = parse_metrics(scrape())
    submit(user, fail_attempts=2, error="unavailable")  # 503, 503, success
    submit(user, fail_attempts=5, error="auth")  # 401: dead at once
    submit(user, fail_attempts=1, error="invalid_page")  # fails validation once (billed), then passes

    run_worker(worker_class=AIPBSimpleWorker)

    after = parse_metrics(scrape())

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ai_jobs_total", **SIMPLE, status="succeeded") == 2
    assert delta("ai_jobs_total", **SIMPLE, status="dead") == 1
    assert delta("ai_jobs_retry_total", **SIMPLE) == 3
    # every failed attempt, retried or not, by type
    assert delta("ai_jobs_errors_total", **SIMPLE, error_type="SERVICE_UNAVAILABLE") == 2
    assert delta("ai_jobs_errors_total", **SIMPLE, error_type="AUTH_ERROR") == 1
    assert delta("ai_jobs_errors_total", **SIMPLE, error_type="VALIDATION_ERROR") == 1
    assert delta("ai_jobs_attempts_total", **SIMPLE, outcome="failed") == 4
    assert delta("ai_jobs_attempts_total", **SIMPLE, outcome="succeeded") == 2
    assert delta("ai_jobs_processing_duration_seconds_count", **SIMPLE) == 6
    assert delta("ai_jobs_processing_duration_seconds_bucket", **SIMPLE, le="+Inf") == 6
    assert delta("ai_jobs_validation_total", **SIMPLE, result="pass") == 2
    assert delta("ai_jobs_validation_total", **SIMPLE, result="fail") == 1
    # billed: the two successes and the invalid page; HTTP-style errors carry no usage
    assert delta("ai_llm_tokens_total", **SIMPLE, type="prompt") == 300
    assert delta("ai_llm_tokens_total", **SIMPLE, type="completion") == 150
    assert delta("ai_llm_cost_usd_total", **SIMPLE) == pytest.approx(0.0006)


def test_rate_limited_deliveries_are_counted(user, run_worker, settings):
    settings.AI_RATE_LIMIT_PER_SECOND = 1
    settings.AI_RATE_LIMIT_BURST = 1
    settings.AI_RATE_LIMIT_RETRY_SECONDS = 0
    before = parse_metrics(scrape())
    jobs = [submit(user) for _ in range(3)]

    run_worker(worker_class=AIPBSimpleWorker)

    after = parse_metrics(scrape())
    assert all(job.status == JobStatus.SUCCEEDED for job in AIJob.objects.filter(id__in=[j.id for j in jobs]))
    waits = value(after, "ai_rate_limit_wait_total", provider="simulated") - value(
        before, "ai_rate_limit_wait_total", provider="simulated"
    )
    assert waits >= 2  # one token a second, three jobs at once: at least two had to wait


def test_scrape_has_every_metric_the_monitoring_config_uses_and_passes_promtool(user, run_worker):
    ensure_sim_price()
    submit(user, fail_attempts=1, error="invalid_json")
    submit(user)
    run_worker(worker_class=AIPBSimpleWorker)

    text = scrape()

    assert set(EXPORTED_METRICS) - family_names(text) == set()
    assert "django_http_requests_total_by_method_total" in family_names(text), "django-prometheus alongside ours"
    assert promtool_check(text) == ""


def test_metrics_token_is_required_when_configured(db, settings, redis_conn):
    settings.METRICS_TOKEN = "s3cret-token"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="s3cret-token").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics").status_code == 200


def test_queue_size_gauge_reports_what_queue_sizes_counts(user, run_worker, redis_conn):
    """ai_queue_size is jobs.queues.queue_sizes summed over the AI queues (tests/jobs/test_queues.py tests
    the counting itself): after deliveries complete, and with deliveries waiting and delayed."""
    for _ in range(2):
        submit(user)
    run_worker()
    samples = parse_metrics(scrape())
    assert value(samples, "ai_queue_size", status="completed") == 2
    assert value(samples, "ai_queue_size", status="waiting") == 0

    delayed = submit(user, fail_attempts=1, error="rate_limit", retry_after=300)
    run_worker(until=lambda: AIJob.objects.get(id=delayed.id).status == JobStatus.RETRYING)  # retry in 300 s
    for _ in range(3):
        submit(user)
    samples = parse_metrics(scrape())
    assert value(samples, "ai_queue_size", status="waiting") == 3
    assert value(samples, "ai_queue_size", status="delayed") == 1
    sizes = queues.sizes_total(queues.queue_sizes(redis_conn))
    assert {status: value(samples, "ai_queue_size", status=status) for status in queues.QUEUE_STATUSES} == sizes


def test_worker_gauge_reports_what_worker_states_counts(db, register_worker, redis_conn):
    """ai_workers is jobs.redis_state.worker_states (tests/jobs/test_redis_state.py tests the reading itself)."""
    register_worker("idle-1", "idle")
    register_worker("starting-1", "started")
    register_worker("busy-1", "busy")
    register_worker("busy-2", "busy")
    register_worker("suspended-1", "suspended")
    register_worker("other-app", "busy", queues=[Queue("some-other-app", connection=redis_conn)])
    redis_conn.delete(register_worker("gone-1", "idle").key)  # died without unregistering: its hash expired

    samples = parse_metrics(scrape())

    assert [value(samples, "ai_workers", state=s) for s in ("idle", "busy", "suspended")] == [2, 2, 1]
    assert {state: value(samples, "ai_workers", state=state) for state in redis_state.WORKER_STATES} == (
        redis_state.worker_states(redis_conn)
    )


def test_no_workers_reads_zero_for_every_state(db, redis_conn):
    samples = parse_metrics(scrape())
    assert [value(samples, "ai_workers", state=s) for s in ("idle", "busy", "suspended")] == [0, 0, 0]
    assert ("ai_workers", (("state", "idle"),)) in samples


def test_dlq_entries_by_status(user, run_worker):
    for _ in range(3):
        submit(user, fail_attempts=1, error="auth")
    run_worker()
    dlq_discard(entry_id=DeadLetter.objects.first().id)

    samples = parse_metrics(scrape())

    assert value(samples, "ai_dlq_entries", status="open") == 2
    assert value(samples, "ai_dlq_entries", status="discarded") == 1
    assert ("ai_dlq_entries", (("status", "retried"),)) in samples and value(
        samples, "ai_dlq_entries", status="retried"
    ) == 0


def test_build_info_and_api_version_come_from_version_json(db, settings, tmp_path, redis_conn):
    (tmp_path / "version.json").write_text(
        json.dumps({"version": "1.2.3", "commit": "abc123def456", "build_date": "2026-01-02T03:04:05Z"})
    )
    settings.BASE_DIR = tmp_path
    build_info.cache_clear()
    try:
        version = Client().get("/api/version").json()
        samples = parse_metrics(scrape())
    finally:
        build_info.cache_clear()
    assert version == {"version": "1.2.3", "commit": "abc123def456", "build_date": "2026-01-02T03:04:05Z"}
    assert value(samples, "ai_build_info", version="1.2.3", commit="abc123def456") == 1
    assert [k for k in samples if k[0] == "ai_build_info"] == [
        ("ai_build_info", (("commit", "abc123def456"), ("version", "1.2.3")))
    ]


def test_the_repository_version_json_is_what_is_served(db, redis_conn):
    build_info.cache_clear()
    info = build_info()
    samples = parse_metrics(scrape())
    assert value(samples, "ai_build_info", version=info["version"], commit=info["commit"]) == 1
    if (REPO_ROOT / "version.json").exists():  # written by `make` (make test runs it first)
        assert info["version"] == json.loads((REPO_ROOT / "version.json").read_text())["version"]


# --------------------------------------------------------------------------- validation pass rate


def test_validation_pass_rate_over_the_window(db, settings, redis_conn):
    settings.AI_VALIDATION_WINDOW_SECONDS = 600
    now = time.time()
    for _ in range(3):
        validation_window.record(passed=True, now=now - 10)
    validation_window.record(passed=False, now=now - 300)
    for _ in range(50):  # outside the window: forgotten
        validation_window.record(passed=False, now=now - 700)

    assert validation_window.counts(now=now) == (3, 1)
    assert validation_window.pass_rate(now=now) == 75.0
    assert validation_window.pass_rate(now=now + 600) is None  # everything has left the window
    samples = parse_metrics(scrape())
    assert value(samples, "ai_jobs_validation_pass_rate") == 75.0


def test_validation_buckets_expire_and_stay_bounded(settings, redis_conn):
    settings.AI_VALIDATION_WINDOW_SECONDS = 600
    now = time.time()
    for second in range(0, 1200, 2):  # an attempt every 2 s for 20 minutes
        validation_window.record(passed=second % 4 == 0, now=now - second)
    time.sleep(1.1)  # buckets that had already left the window got a 1 s TTL
    keys = redis_conn.keys(validation_window.KEY_PREFIX + "*")
    assert len(keys) <= 2 * (validation_window.MAX_BUCKETS + 2), "only the window's buckets are kept"
    # -2: a bucket that expired between KEYS and TTL (a loaded machine) is gone, which is the point
    ttls = [redis_conn.ttl(key) for key in keys]
    assert all(ttl == -2 or 0 < ttl <= 600 + 2 * validation_window.bucket_seconds(600) for ttl in ttls), ttls
    passed, failed = validation_window.counts(now=now)
    assert 295 <= passed + failed <= 300 and abs(passed - failed) <= 1


def test_no_validation_in_the_window_exports_no_rate(db, redis_conn):
    text = scrape()
    assert "ai_jobs_validation_pass_rate" in family_names(text)
    assert not [k for k in parse_metrics(text) if k[0] == "ai_jobs_validation_pass_rate"]


def test_pipeline_feeds_the_validation_window(user, run_worker, redis_conn):
    submit(user, fail_attempts=1, error="invalid_json")  # fail, then pass
    submit(user, fail_attempts=1, error="unavailable")  # no output to validate, then pass
    submit(user)
    run_worker()  # forking work-horses write to Redis, whatever process they are
    assert validation_window.counts() == (3, 1)
    assert value(parse_metrics(scrape()), "ai_jobs_validation_pass_rate") == 75.0


def test_redis_down_leaves_the_redis_gauges_out_but_scrape_works(db, redis_down, settings):
    settings.REDIS_SOCKET_TIMEOUT = 0.2  # nothing listens on its port: each read fails after its retries
    redis_client.forget_clients()

    text = Client().get("/metrics").content.decode()
    # the pipeline's metrics call still works: the window write fails quietly
    metrics.attempt_finished(provider="simulated", model="sim-small", outcome="succeeded", seconds=0.1)
    metrics.output_validated(provider="simulated", model="sim-small", passed=True)

    names = family_names(text)
    assert {"ai_queue_size", "ai_workers", "ai_jobs_validation_pass_rate"} & names == set()
    assert {"ai_dlq_entries", "ai_build_info", "ai_jobs_total"} <= names


# --------------------------------------------------------------------------- the metric objects themselves


def metric_objects(module: ModuleType) -> list[MetricWrapperBase]:
    return [obj for obj in vars(module).values() if isinstance(obj, MetricWrapperBase)]


def gauges_left_at_the_default_mode(module: ModuleType) -> list[str]:
    """A Gauge's default multiprocess mode ("all") exports one series per process id, so every restart of a
    worker adds series and no query can sum them right: each Gauge must say how processes combine."""
    return [obj._name for obj in metric_objects(module) if isinstance(obj, Gauge) and obj._multiprocess_mode == "all"]


def test_every_metric_object_is_in_the_scrape(db, redis_conn):
    """Each object in monitoring.metrics is registered where /metrics reads, labelled or not, counted yet or not."""
    objects = metric_objects(metrics)
    assert len(objects) >= 9, "today's counters and histograms, at least: a loop over nothing would prove nothing"
    exported = family_names(scrape())
    for obj in objects:
        name = obj._name + ("_total" if obj._type == "counter" else "")
        assert name in exported, f"{name} is defined in monitoring.metrics but not scraped"


def test_gauges_name_their_multiprocess_mode():
    assert gauges_left_at_the_default_mode(metrics) == []
    # and the check bites: a module with one Gauge of each kind
    probe = ModuleType("probe")
    registry = CollectorRegistry()
    probe.DEFAULTED = Gauge("probe_defaulted", "left at the default mode", registry=registry)
    probe.NAMED = Gauge("probe_named", "combined by max", multiprocess_mode="max", registry=registry)
    assert gauges_left_at_the_default_mode(probe) == ["probe_defaulted"]


# --------------------------------------------------------------------------- metrics_server: bad input


@pytest.mark.parametrize("port", ["0", "65536", "-1", "abc", "80.5", " ", "9108x"])
def test_metrics_server_rejects_bad_ports(port, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(CommandError, match="--port: must be an integer from 1 to 65535"):
        call_command("metrics_server", "--port", port)


@pytest.mark.parametrize("bind", ["localhost.invalid", "256.1.1.1", "", "127.0.0.1:9108"])
def test_metrics_server_rejects_bad_bind_addresses(bind, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(CommandError, match="--bind must be an IP address"):
        call_command("metrics_server", "--port", "9108", "--bind", bind)


def test_metrics_server_needs_the_multiproc_dir(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(CommandError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        call_command("metrics_server", "--port", "9108")


def test_metrics_server_reports_a_port_in_use(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"cannot listen on 127.0.0.1:{port}"):
            call_command("metrics_server", "--port", str(port))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the multiprocess value class

_FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from aipb import prometheus_multiprocess as multiprocess
    path = sys.argv[1]
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    multiprocess.install(path)
    from prometheus_client import Counter, Histogram
    from prometheus_client.multiprocess import MultiProcessCollector

    jobs = Counter("t_jobs", "jobs", ["kind"])
    seconds = Histogram("t_seconds", "seconds", buckets=(1, 2))
    jobs.labels("created-before-fork")  # known to every child, never written by the worker itself
    worker = os.getpid()

    def horse(enter):
        pid = os.fork()
        if pid == 0:
            if enter:
                multiprocess.enter_work_horse(worker_pid=worker)
            jobs.labels("done").inc()
            seconds.observe(1.5)
            os._exit(0)
        os.waitpid(pid, 0)

    def state():
        files = sorted(os.listdir(path))
        samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value
                   for m in MultiProcessCollector(None, path=path).collect() for s in m.samples}
        return files, samples

    for _ in range(5):
        horse(True)
    after_5 = state()
    for _ in range(20):
        horse(True)
    after_25 = state()
    jobs.labels("in-worker").inc()  # the worker writes under its own pid, never the horses' slot
    with_worker = state()
    for _ in range(3):
        horse(False)  # prometheus_client's default: one set of files per process
    naive = state()
    print(json.dumps({"worker": worker, "after_5": after_5, "after_25": after_25,
                      "with_worker": with_worker, "naive": naive}))
    """
)


def test_work_horses_write_under_their_workers_slot(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    worker = out["worker"]
    slot = [f"counter_{worker}-horse.db", f"histogram_{worker}-horse.db"]

    files_5, samples_5 = out["after_5"]
    files_25, samples_25 = out["after_25"]
    assert files_5 == slot and files_25 == slot, "25 horses, one slot: the worker itself wrote nothing yet"
    assert samples_5['t_jobs_total{"kind": "done"}'] == 5
    assert samples_25['t_jobs_total{"kind": "done"}'] == 25, "each horse continued the slot's count"
    assert samples_25['t_jobs_total{"kind": "created-before-fork"}'] == 0
    assert samples_25["t_seconds_count{}"] == 25
    assert samples_25['t_seconds_bucket{"le": "1.0"}'] == 0 and samples_25['t_seconds_bucket{"le": "2.0"}'] == 25

    files_w, samples_w = out["with_worker"]
    assert files_w == sorted([*slot, f"counter_{worker}.db", f"histogram_{worker}.db"])
    assert samples_w['t_jobs_total{"kind": "done"}'] == 25 and samples_w['t_jobs_total{"kind": "in-worker"}'] == 1

    files_naive, samples_naive = out["naive"]
    assert len(files_naive) == len(files_w) + 3 * 2, "without the slot, every process adds its own files"
    assert samples_naive['t_jobs_total{"kind": "done"}'] == 28
