"""The project's RQ worker classes (settings.RQ["WORKER_CLASS"], env AI_WORKER_CLASS).

AIPBThreadedWorker (jobs.threaded_worker, the default) runs up to AI_WORKER_THREADS attempts at once in one
process; AIPBWorker forks a work-horse per job (isolation, hard timeouts); AIPBSimpleWorker runs one job at
a time in the worker process itself. All keep Django's database connections honest around each job.
"""

from __future__ import annotations

import os
import threading

from django.conf import settings
from django.db import close_old_connections, connections
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import worker_registration
from rq.suspension import is_suspended
from rq.worker import SimpleWorker, Worker

import jobs.rq_jobs  # noqa: F401  (imported before the first fork, so work-horses inherit it)
from aipb import prometheus_multiprocess as multiprocess
from aipb import tracing
from aipb.redis_client import follow_failovers
from jobs.providers import preload

# Connections a work-horse inherited from its parent. Closing one in the child would end
# the parent's session (libpq sends Terminate on the shared socket), so the horse keeps a
# reference until it exits with os._exit and opens its own.
_inherited: list = []


def _forget_inherited_connections() -> None:
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


class TracingMixin:
    """Tracing (aipb.tracing) for the worker process, when the OTEL_* environment asks for it: installed before
    the first job and the first fork (a work-horse's export thread is restarted by the SDK at fork)."""

    def __init__(self, *args, **kwargs):
        tracing.setup(role="worker")
        super().__init__(*args, **kwargs)


class PauseAwareMixin:
    """RQ checks its suspension flag (`queue pause`) only between jobs, so an idle worker blocked
    in BLPOP would still take the first job pushed after a pause. Hand such a job back to the
    front of its queue untouched and wait for the resume (a burst worker stops instead)."""

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        while True:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if result is None or not is_suspended(self.connection):
                return result
            job, queue = result
            with self.connection.pipeline() as pipe:
                if len(self.queues) == 1:  # popped with LMOVE into RQ's intermediate queue
                    pipe.lrem(queue.intermediate_queue_key, 1, job.id)
                queue.push_job_id(job.id, pipeline=pipe, at_front=True)
                pipe.execute()
            self.log.info("Worker %s: paused; handed job %s back to %s", self.name, job.id, queue.name)
            self.check_for_suspension(burst=timeout is None)


class ResilienceMixin:
    """What the fault drills (tests/e2e/test_fault_drills.py) found RQ's worker needs to survive:

    - Redis restarting or failing over: RQ retries its BLPOP, but any other command failing (a
      heartbeat while a job runs, the state update after it) ends the worker with "unhandled
      exception, quitting". Every command on the worker's connection (and its scheduler's and
      work-horses', which copy it) now retries connection errors with backoff for about a minute.
      Behind Sentinel, those retries went to the dead master until the minute was up (redis-py asks the
      Sentinels only when a command takes a new connection): the connection now asks them on each reconnect
      (aipb.redis_client.follow_failovers), so the worker is back as soon as the replica is promoted.
    - a worker killed while holding RQ's scheduler lock (the scheduler moves delayed retries onto
      the queues): the lock outlives it by a minute, and the others try to take it over only in
      their maintenance, every 10 minutes, while an idle worker blocks in BLPOP for up to
      worker_ttl - 15 s. Until then every retry waited for `reconcile`. Check every minute instead.
    - Redis restarted empty or flushed: the worker lives on but RQ has forgotten it (RQ's heartbeat only
      touches the worker's own hash), so `ai_workers` read 0 and NoAIWorkers paged while jobs ran, until
      every worker was restarted. Like Sidekiq's heartbeat, each of ours checks the worker is still
      listed and registers it again when not: at every job and at least once a minute when idle (the
      threaded worker beats at most once a second: jobs.threaded_worker.HEARTBEAT_SECONDS).
    """

    CHECK_SECONDS = 60
    REDIS_RETRY = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries=18)  # 0.2, 0.4 ... 5, 5: about 70 s

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("maintenance_interval", self.CHECK_SECONDS)
        super().__init__(*args, **kwargs)
        self.connection.set_retry(self.REDIS_RETRY)
        follow_failovers(self.connection)

    @property
    def dequeue_timeout(self) -> int:
        return min(super().dequeue_timeout, self.CHECK_SECONDS)

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        if pipeline is not None:  # one step of RQ's own pipeline around a job: leave it as RQ built it
            return super().heartbeat(timeout, pipeline)
        # RQ sends these as separate commands; one pipeline (no MULTI: nothing here needs to be atomic) is
        # one round trip, the membership check included
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.sismember(self.redis_workers_keys, self.key)
            super().heartbeat(timeout, pipe)
            if slots := self.slot_fields():
                pipe.hset(self.key, mapping=slots)  # in-flight capacity, for ai_worker_slots
            listed = pipe.execute()[0]
        if not listed:
            self._register_again(timeout or self.worker_ttl + 60)

    def slot_fields(self) -> dict:
        """What a threaded worker adds to its hash (jobs.threaded_worker); one job at a time writes nothing."""
        return {}

    def _register_again(self, ttl: int) -> None:
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
            worker_registration.register(self, pipe)
            pipe.expire(self.key, ttl)
            pipe.execute()
        self.log.warning(
            "Worker %s: Redis had forgotten this worker (restarted or flushed); registered it again", self.name
        )


class RecycleMixin:
    """AI_WORKER_MAX_JOBS retires a worker after that many jobs (leaky SDKs, fragmented memory): it finishes
    the job in hand and exits cleanly, and `rqworker-pool` starts a fresh one in its place. rqworker-pool
    has no --max-jobs of its own; `rqworker --max-jobs N` still wins where it is given."""

    def work(self, burst: bool = False, *args, max_jobs: int | None = None, **kwargs):
        if max_jobs is None and settings.AI_WORKER_MAX_JOBS:
            max_jobs = settings.AI_WORKER_MAX_JOBS
        return super().work(burst, *args, max_jobs=max_jobs, **kwargs)


class AIPBWorker(TracingMixin, RecycleMixin, ResilienceMixin, PauseAwareMixin, Worker):
    _worker_pid = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # work-horses inherit what the worker imported before forking: import the provider SDKs once
        # here, not once per job in every horse
        preload()

    def fork_work_horse(self, job, queue):
        self._worker_pid = os.getpid()
        super().fork_work_horse(job, queue)

    def perform_job(self, *args, **kwargs):  # runs in the forked work-horse
        # metric files under the worker's one horse slot, not a new set per job (aipb.prometheus_multiprocess)
        multiprocess.enter_work_horse(worker_pid=self._worker_pid or os.getpid())
        _forget_inherited_connections()
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            # the horse exits next (os._exit): end our own session properly instead of dropping the socket, and
            # export its spans, which would die with it
            connections.close_all()
            tracing.flush()


class AIPBSimpleWorker(TracingMixin, RecycleMixin, ResilienceMixin, PauseAwareMixin, SimpleWorker):
    """Jobs run in this process, so nothing heart-beats while one runs (RQ's forking worker beats from the
    parent): a thread does, so a long provider call does not make the worker look gone
    (settings.AI_WORKER_GONE_SECONDS)."""

    BEAT_SECONDS = 30

    def perform_job(self, *args, **kwargs):
        close_old_connections()
        done = threading.Event()
        beating = threading.Thread(target=self._beat_until, args=(done,), name="aipb-heartbeat", daemon=True)
        beating.start()
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            done.set()
            beating.join()
            close_old_connections()

    def _beat_until(self, done: threading.Event) -> None:
        while not done.wait(self.BEAT_SECONDS):
            try:
                self.heartbeat()
            except Exception:  # a missed beat is logged, never allowed to touch the job itself
                self.log.warning("Worker %s: heartbeat during a job failed", self.name, exc_info=True)
