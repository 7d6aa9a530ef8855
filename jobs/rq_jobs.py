"""Thin RQ entry points: ids in, re-fetch, return early, then the pipeline."""

from __future__ import annotations

from rq import get_current_job

from jobs import pipeline


def run_job(job_id: str, rq_job_id: str, provider: str | None = None) -> str:
    outcome = pipeline.run_attempt(job_id, rq_job_id, provider)
    if outcome.startswith(pipeline.NOT_AN_ATTEMPT):
        # A delivery handed back for want of a rate-limit token, or one with nothing to claim, ran no attempt:
        # keep no result, so RQ's finished registry (queue status "completed", ai_queue_size) counts attempts
        # only, not every hand-back (1,500 "completed" for 403 jobs under a tight rate limit).
        current = get_current_job()
        if current is not None:
            current.result_ttl = 0
    return outcome
