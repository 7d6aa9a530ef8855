"""Shared fixtures: real Postgres (pytest-django's test database), real Redis, real RQ workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import Client, override_settings
from rest_framework.test import APIClient
from rq.registry import ScheduledJobRegistry, StartedJobRegistry

from aipb import redis_client
from aipb.redis_client import get_redis
from jobs.models import FINAL_STATUSES, AIJob
from jobs.providers import reset_providers
from jobs.queues import all_queues, intake_forget
from jobs.worker import AIPBWorker
from tests.factories import UserFactory

DRILLS = Path(__file__).parent / "e2e"


@pytest.hookimpl(trylast=True)  # after pytest-django, which orders tests by kind of database use
def pytest_collection_modifyitems(items):
    """The fault drills and the load test (tests/e2e, about ten minutes) run after everything else, so a
    quick failure shows in seconds; the sort is stable, so the rest keep their order."""
    items.sort(key=lambda item: item.path.is_relative_to(DRILLS))


@pytest.fixture(scope="session", autouse=True)
def collected_static(tmp_path_factory) -> Iterator[Path]:
    """Pages name their static files through the manifest (hashed names), as in production, so the files
    are collected once per run (about 2 s) into a var dir of the run's own, never ./var/static that
    `make run` serves. Child processes get it as AIPB_VAR_DIR (STATIC_ROOT is its `static`)."""
    root = tmp_path_factory.mktemp("var") / "static"
    with override_settings(STATIC_ROOT=root):
        call_command("collectstatic", interactive=False, verbosity=0)
        yield root


@pytest.fixture(autouse=True)
def _pipeline_settings(settings):
    """Fast, deterministic pipeline settings; each test may override."""
    settings.AI_ENABLE_SIMULATED_PROVIDER = True
    settings.AI_BACKOFF_BASE_SECONDS = 0.01
    settings.AI_BACKOFF_MAX_SECONDS = 0.05
    settings.AI_RATE_LIMIT_PER_SECOND = 0  # off unless a test turns it on
    settings.AI_USER_MAX_IN_FLIGHT = 0  # fair sharing off unless a test turns it on (tests/jobs/test_fairness.py)
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 0  # circuits too (jobs.routing): a run of injected faults would open one
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # tests only: fast users
    settings.REST_FRAMEWORK = {**django_settings.REST_FRAMEWORK}
    reset_providers()
    yield
    reset_providers()


@pytest.fixture
def redis_conn():
    """The test Redis database, emptied before and after the test (REDIS_URL must point at a test database)."""
    conn = get_redis()
    conn.flushdb()
    intake_forget()  # the process's copy of the intake flag must not outlive the flush
    yield conn
    conn.flushdb()
    intake_forget()


class RedisOutage:
    """Points Redis at a dead port: both clients are built again against it, and the fail-fast circuit closed."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.real_url = settings.REDIS_URL

    def _rebuild(self, url: str) -> None:
        self.settings.REDIS_URL = url
        redis_client.forget_clients()
        redis_client.reset_circuit()

    def begin(self) -> None:
        self._rebuild("redis://127.0.0.1:1/0")

    def end(self) -> None:
        self._rebuild(self.real_url)


@pytest.fixture
def redis_down(settings, redis_conn):
    outage = RedisOutage(settings)
    outage.begin()
    yield outage
    outage.end()


@pytest.fixture
def user(db):
    return UserFactory(username="alice")


@pytest.fixture
def other_user(db):
    return UserFactory(username="bob")


@pytest.fixture
def staff_user(db):
    return UserFactory(username="ops", is_staff=True)


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def staff_api(staff_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff_user)
    return client


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


@pytest.fixture
def staff_client(staff_user) -> Client:
    """A logged-in admin session (Django's test client), for the admin pages."""
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def user_client(user) -> Client:
    """A logged-in session of a user who is not staff."""
    client = Client()
    client.force_login(user)
    return client


def _pending(conn) -> bool:
    for queue in all_queues():
        if queue.count or ScheduledJobRegistry(queue=queue).count or StartedJobRegistry(queue=queue).count:
            return True
    return False


@pytest.fixture
def run_worker(redis_conn, transactional_db) -> Callable[..., int]:
    """Run a real RQ worker (the project's forking worker class unless told otherwise) in burst mode,
    with the scheduler, until no job waits or is scheduled, or ``until()`` is true. Returns the passes made."""

    def run(*, timeout: float = 30.0, worker_class=AIPBWorker, until: Callable[[], bool] | None = None) -> int:
        deadline = time.monotonic() + timeout
        passes = 0
        while True:
            worker = worker_class(all_queues(), connection=redis_conn)
            worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            passes += 1
            if until is not None and until():
                return passes
            if until is None and not _pending(redis_conn):
                return passes
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still pending after {timeout}s")
            time.sleep(0.05)

    return run


@pytest.fixture
def register_worker(redis_conn) -> Callable[..., AIPBWorker]:
    """Register an RQ worker in Redis the way a live one does (its hash, the queue and worker sets), in a
    given RQ state, on the AI queues unless told otherwise. Nothing runs: what Redis says is the point."""

    def register(name: str, state: str | None = None, queues: list | None = None) -> AIPBWorker:
        worker = AIPBWorker(queues or all_queues(), connection=redis_conn, name=name)
        worker.register_birth()
        if state:
            worker.set_state(state)
        return worker

    return register


def all_final() -> bool:
    return not AIJob.objects.exclude(status__in=FINAL_STATUSES).exists()


def child_database_url() -> str:
    """DATABASE_URL for a child process (gunicorn, a worker, a command) that must see this test's database:
    pytest-django's test database, over TCP or over the embedded server's Unix socket alike."""
    db = django_settings.DATABASES["default"]
    auth = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    name = quote(db["NAME"], safe="")
    socket_dir = db.get("HOST") if (db.get("HOST") or "").startswith("/") else db.get("OPTIONS", {}).get("host")
    if socket_dir:
        return f"postgresql://{auth}@/{name}?host={quote(socket_dir, safe='/')}"
    return f"postgresql://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{name}"
