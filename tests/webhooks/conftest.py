"""Webhook fixtures: a loopback receiver that verifies signatures, fast retry settings, a worker on the webhook
queue (with the AI queues, so a job's run and its event's delivery happen in one test)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from rq import Queue

from aipb.queue_names import WEBHOOK_QUEUE
from aipb.redis_client import get_redis
from jobs.queues import all_queues
from jobs.worker import AIPBWorker
from tests.fakes.webhook_receiver import WebhookReceiver
from webhooks.records import webhook_secret_ensure


@pytest.fixture(autouse=True)
def _webhook_settings(settings):
    settings.AI_WEBHOOK_ALLOWED_HOSTS = frozenset({"127.0.0.1"})
    settings.AI_WEBHOOK_TIMEOUT_SECONDS = 1.0
    settings.AI_WEBHOOK_RETRY_SCHEDULE = (1.0, 1.0, 1.0)  # 4 tries, a second apart (RQ schedules whole seconds)
    settings.AI_WEBHOOK_SECRET_GRACE_SECONDS = 3600


@pytest.fixture
def receiver(user) -> Iterator[WebhookReceiver]:
    """Listening, and verifying with alice's secret (created now, as a submission with a webhook would)."""
    secret = webhook_secret_ensure(owner=user).secret
    server = WebhookReceiver(secret).start()
    yield server
    server.stop()


def webhook_queue() -> Queue:
    return Queue(WEBHOOK_QUEUE, connection=get_redis())


@pytest.fixture
def run_webhook_worker(redis_conn, transactional_db) -> Callable[..., int]:
    """A real forking RQ worker in burst mode, with the scheduler, on the webhook queue and the AI queues, until
    ``until()`` holds (checked after each pass)."""

    def run(*, until: Callable[[], bool], timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        passes = 0
        while True:
            worker = AIPBWorker([webhook_queue(), *all_queues()], connection=redis_conn)
            worker.work(burst=True, with_scheduler=True, logging_level="WARNING")
            passes += 1
            if until():
                return passes
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met after {timeout}s")
            time.sleep(0.1)

    return run
