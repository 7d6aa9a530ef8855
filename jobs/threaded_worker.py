"""AIPBThreadedWorker: up to AI_WORKER_THREADS attempts at once inside one RQ worker process.

A provider call spends its 5-60 s waiting on the network, so a process per in-flight call wastes memory and
Postgres connections. This worker keeps RQ's own loop, registries and bookkeeping (RQ 3 tracks several
executions per worker) and changes one thing: the loop takes a job only when a thread is free, and hands it
to that thread instead of running it itself.

- RQ's view stays true: every running job is in its queue's started registry (RQ's prepare/perform/cleanup,
  with the job's own heartbeat TTL) and leaves it when done; the process is ONE worker, `busy` while any of
  its slots is, and writes its slots (aipb_slots, aipb_busy) into its worker hash with every heartbeat, which
  `ai_worker_slots` sums.
- A pause takes effect at once (no new take; running attempts finish). SIGTERM stops the takes and waits up to
  AI_WORKER_SHUTDOWN_GRACE_SECONDS for the attempts in flight; the rest are left to lease recovery (their
  usage is already billed, and nothing is billed twice: jobs.pipeline, usage.recording).
- A thread cannot be interrupted: the provider timeout bounds each call (the SDKs' timeouts; the simulated
  provider honours it too), the lease bounds the rest, and a watchdog logs an attempt that outlives its lease.
- Postgres: each thread holds a connection only for its short transactions (jobs.pipeline gives it back for
  the provider call); with DATABASE_POOL_MAX_SIZE set they come from Django's psycopg pool, bounded per
  process whatever the thread count.
"""

from __future__ import annotations

import queue as thread_queue
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connections
from rq.timeouts import BaseDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from jobs.providers import preload
from jobs.worker import PauseAwareMixin, RecycleMixin, ResilienceMixin, TracingMixin


class NoDeathPenalty(BaseDeathPenalty):
    """RQ's default job timeout is SIGALRM, which only the main thread can take. The provider timeout and the
    lease bound an attempt instead (see the module docstring)."""

    def setup_death_penalty(self):
        pass

    def cancel_death_penalty(self):
        pass


class AIPBThreadedWorker(TracingMixin, RecycleMixin, ResilienceMixin, PauseAwareMixin, SimpleWorker):
    death_penalty_class = NoDeathPenalty
    # Short BLPOPs while attempts run, so a SIGTERM stops the takes within seconds even with jobs in flight.
    DEQUEUE_SECONDS = 5
    WATCHDOG_SECONDS = 15
    # RQ beats four times a job (before and after each BLPOP, in its loop, in its suspension check), each a
    # round trip: 4 of a job's 19 Redis round trips, 16 % of its worker CPU (bench.pipeline --profile). One beat
    # a second keeps the worker as alive (its TTL is minutes) and its hash as fresh for the gauges; a worker Redis
    # forgot lists itself again within a second while busy, within DEQUEUE_SECONDS when idle.
    HEARTBEAT_SECONDS = 1.0

    def __init__(self, *args, threads: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = threads or settings.AI_WORKER_THREADS
        self._free = threading.Semaphore(self.threads)
        self._tasks: thread_queue.Queue = thread_queue.Queue()
        self._lock = threading.Lock()
        self._running: dict[str, float] = {}  # RQ job id: monotonic start, for the watchdog and the slots
        self._overdue: set[str] = set()
        self._pool: list[threading.Thread] = []
        self._last_beat: tuple[float, int] | None = None  # (monotonic time, TTL) of the last beat sent
        preload()  # the provider SDKs, once, before any thread needs them

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        if pipeline is None:  # a beat of its own (one inside RQ's pipeline around a job costs no round trip)
            wanted = timeout or self.worker_ttl + 60
            now = time.monotonic()
            last = self._last_beat
            if last is not None and now - last[0] < self.HEARTBEAT_SECONDS and wanted <= last[1]:
                return  # the last beat, under a second ago, keeps the worker listed at least as long
            self._last_beat = (now, wanted)
        super().heartbeat(timeout, pipeline)

    # --- slots ---

    @property
    def busy(self) -> int:
        return len(self._running)

    def slot_fields(self) -> dict:
        return {"aipb_slots": self.threads, "aipb_busy": self.busy}

    @property
    def dequeue_timeout(self) -> int:
        return min(super().dequeue_timeout, self.DEQUEUE_SECONDS)

    def set_state(self, state, pipeline=None):
        # RQ marks the worker idle before every dequeue; with attempts in flight it is busy.
        if state == WorkerStatus.IDLE and self.busy:
            state = WorkerStatus.BUSY
        return super().set_state(state, pipeline)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Take a job only when a thread is free to run it; heartbeat (and notice a stop) while waiting."""
        while not self._free.acquire(timeout=self.DEQUEUE_SECONDS):
            if self._stop_requested:
                return None
            self.heartbeat()
        if self._stop_requested:  # a slot freed after a stop request: take nothing more
            self._free.release()
            return None
        result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        if result is None:
            self._free.release()
        return result

    def execute_job(self, job, queue):
        self._start_threads()
        execution = self.prepare_execution(job)
        with self._lock:
            self._running[job.id] = time.monotonic()
        self._tasks.put((job, queue, execution))

    # --- the threads ---

    def _start_threads(self) -> None:
        if self._pool:
            return
        for n in range(self.threads):
            thread = threading.Thread(target=self._serve, name=f"aipb-attempt-{n}", daemon=True)
            thread.start()
            self._pool.append(thread)
        watchdog = threading.Thread(target=self._watch, name="aipb-watchdog", daemon=True)
        watchdog.start()

    def _serve(self) -> None:
        while True:
            job, queue, execution = self._tasks.get()
            try:
                close_old_connections()
                self.perform_job(job, queue, execution)
            except Exception:  # perform_job records a job's own failure; this is RQ's bookkeeping failing
                self.log.exception("Worker %s: bookkeeping of job %s failed", self.name, job.id)
            finally:
                self._release_connections()
                with self._lock:
                    self._running.pop(job.id, None)
                    self._overdue.discard(job.id)
                    idle = not self._running
                self._free.release()
                if idle:
                    self._set_idle_safely()

    @staticmethod
    def _release_connections() -> None:
        # Pooled: give the connection back. Not pooled: keep this thread's connection unless it is too old.
        if connections["default"].settings_dict["OPTIONS"].get("pool"):
            connections.close_all()
        else:
            close_old_connections()

    def _set_idle_safely(self) -> None:
        try:
            self.set_state(WorkerStatus.IDLE)
        except Exception:
            self.log.warning("Worker %s: could not mark itself idle", self.name, exc_info=True)

    def _watch(self) -> None:
        while True:
            time.sleep(self.WATCHDOG_SECONDS)
            now = time.monotonic()
            with self._lock:
                late = [job_id for job_id, at in self._running.items() if now - at > settings.AI_LEASE_SECONDS]
                new = [job_id for job_id in late if job_id not in self._overdue]
                self._overdue.update(new)
            for job_id in new:
                self.log.error(
                    "Worker %s: delivery %s has run longer than its lease (%ss): lease recovery will take the job "
                    "back; its thread cannot be interrupted and ends with the provider call's timeout",
                    self.name,
                    job_id,
                    settings.AI_LEASE_SECONDS,
                )

    # --- stopping ---

    def teardown(self):
        """After the loop ends (stop request, max jobs, burst done): let the attempts in flight finish, up to
        the grace; whatever still runs then is left to lease recovery when the process exits."""
        deadline = time.monotonic() + settings.AI_WORKER_SHUTDOWN_GRACE_SECONDS
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.busy:
            self.log.warning(
                "Worker %s: %d attempts still running after %ss; leaving them to lease recovery",
                self.name,
                self.busy,
                settings.AI_WORKER_SHUTDOWN_GRACE_SECONDS,
            )
        return super().teardown()
