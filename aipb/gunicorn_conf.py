"""gunicorn settings for `make run` and deployments: `gunicorn aipb.wsgi -c python:aipb.gunicorn_conf`."""

import os

accesslog = "-"
timeout = 30
graceful_timeout = 20


def child_exit(server, worker):
    # prometheus_client multiprocess mode: a dead worker's live gauges must stop counting
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
