"""gunicorn settings for `make run` and deployments: `gunicorn aipb.wsgi -c python:aipb.gunicorn_conf`."""

import os

from prometheus_client import multiprocess

accesslog = "-"
timeout = 30
graceful_timeout = 20


def child_exit(server, worker):
    # prometheus_client multiprocess mode (aipb/prometheus_multiprocess.py): a dead worker's live* gauges
    # must stop counting; its counters and histograms stay in their files and keep being reported.
    # gunicorn does not empty PROMETHEUS_MULTIPROC_DIR itself: on a host it shares the directory with
    # the RQ workers, so whatever starts the host's services empties it first (`make run` does).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
