"""Dead letters made the real way: a job submitted through jobs.submission and killed by the pipeline."""

from __future__ import annotations

import pytest

from dlq.models import DeadLetter
from jobs import pipeline
from jobs.models import AIJob
from tests.factories import DEFAULT_PROMPT, submit_job


def submit_failing(
    owner,
    *,
    error: str = "auth",
    fail_attempts: int = 1,
    max_attempts: int = 1,
    model: str = "sim-small",
    prompt: str = DEFAULT_PROMPT,
) -> AIJob:
    simulate = {"fail_attempts": fail_attempts, "error": error}
    return submit_job(owner, simulate=simulate, model=model, prompt=prompt, max_attempts=max_attempts)


@pytest.fixture
def kill(redis_conn, db):
    """Submit a job whose only attempt fails with `error` and run that attempt in this process
    through the real pipeline (claim, provider call, classification, death + dead letter in one
    transaction). Returns the job's open dead letter. In a test marked transaction=True the
    on-commit work runs too (enqueue, retention); otherwise it is rolled back with the test."""

    def kill(owner, *, error: str = "auth", model: str = "sim-small", prompt: str | None = None) -> DeadLetter:
        kwargs = {"prompt": prompt} if prompt else {}
        job = submit_failing(owner, error=error, model=model, **kwargs)
        outcome = pipeline.run_attempt(str(job.id), job.rq_job_id)
        assert outcome.startswith("dead"), outcome
        return DeadLetter.objects.get(job_uuid=job.id, status="open")

    return kill
