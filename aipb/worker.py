"""The project's RQ worker classes (settings.RQ["WORKER_CLASS"], env AI_WORKER_CLASS).

AIPBWorker forks a work-horse per job (isolation, hard timeouts); AIPBSimpleWorker runs
jobs in the worker process itself (no fork per job, persistent DB connection). Both keep
Django's database connections honest around each job.
"""

from __future__ import annotations

from django.db import close_old_connections, connections
from rq.worker import SimpleWorker, Worker

# Connections a work-horse inherited from its parent. Closing one in the child would end
# the parent's session (libpq sends Terminate on the shared socket), so the horse keeps a
# reference until it exits with os._exit and opens its own.
_inherited: list = []


def _forget_inherited_connections() -> None:
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


class AIPBWorker(Worker):
    def perform_job(self, *args, **kwargs):  # runs in the forked work-horse
        _forget_inherited_connections()
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            # the horse exits next; end our own session properly instead of dropping the socket
            connections.close_all()


class AIPBSimpleWorker(SimpleWorker):
    def perform_job(self, *args, **kwargs):
        close_old_connections()
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            close_old_connections()
