"""AI_WORKER_MAX_JOBS retires a worker process after that many jobs and `rqworker-pool` replaces it, under
load, with no attempt lost or run twice (jobs.worker.RecycleMixin). A real pool of real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from django.conf import settings

from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from tests.factories import submit_job
from tests.ops.conftest import child_env, wait_for

MAX_JOBS = 4
JOBS = 24


def test_workers_retire_after_max_jobs_and_the_pool_replaces_them(user, redis_conn, transactional_db, tmp_path):
    jobs = [submit_job(user, simulate={"latency_ms": 50}) for _ in range(JOBS)]
    log_path = tmp_path / "pool.log"
    with open(log_path, "w") as log:
        pool = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker-pool", "ai-high", "ai-default", "ai-low", "--num-workers", "2"],
            cwd=settings.BASE_DIR,
            env=child_env(AI_WORKER_MAX_JOBS=str(MAX_JOBS), AI_WORKER_CLASS="jobs.worker.AIPBSimpleWorker"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            try:
                wait_for(
                    lambda: AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == JOBS,
                    timeout=90,
                    what=f"{JOBS} jobs to succeed through recycled workers",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the pool's log ends:\n{log_path.read_text()[-3000:]}") from None
        finally:
            os.kill(pool.pid, signal.SIGTERM)  # the pool's own process: it stops its workers (README, Production)
            try:
                pool.wait(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pool.pid, signal.SIGKILL)
    text = log_path.read_text().split("Received SIGINT/SIGTERM", 1)[0]  # the run, not the shutdown

    retired = text.count(f"finished executing {MAX_JOBS} jobs, quitting")
    assert retired >= JOBS // MAX_JOBS - 2, text[-3000:]  # most workers served exactly MAX_JOBS and made way
    assert "Traceback" not in text, text[-3000:]
    assert JobAttempt.objects.count() == JOBS  # one attempt each: none lost to a retiring worker, none run twice
    assert not JobAttempt.objects.exclude(outcome=AttemptOutcome.SUCCEEDED).exists()
    assert {str(job.id) for job in jobs} == {str(i) for i in AIJob.objects.values_list("id", flat=True)}
