"""The Celery peer of bench.io_bound (imported only where Celery is installed: .venv-bench, from
requirements-bench.txt). Broker: the benchmark's Redis database; results off; one task, bench.peers'
sleep-and-write job. Run by bench.io_bound as
``python -m celery -A bench.celery_peer worker --pool=threads|gevent --concurrency C -Q aipb-bench-peer``."""

from __future__ import annotations

import os

from celery import Celery

from bench import peers

app = Celery("aipb-bench-peer", broker=peers.celery_broker_url(os.environ["REDIS_URL"]))
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=peers.QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


@app.task(name="bench.peer.sleep_and_write")
def sleep_and_write(latency_ms: int, n: int) -> None:
    peers.sleep_and_write(latency_ms, n)
