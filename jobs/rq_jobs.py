"""Thin RQ entry points: ids in, re-fetch, return early, then the pipeline."""

from __future__ import annotations

from jobs import pipeline


def run_job(job_id: str, rq_job_id: str, provider: str | None = None) -> str:
    return pipeline.run_attempt(job_id, rq_job_id, provider)
