"""Writes for usage: one TokenUsage row per provider call that returned usage."""

from __future__ import annotations

from datetime import datetime

from jobs.catalogue import canonical_model
from jobs.models import AIJob
from jobs.providers.base import Usage
from usage.models import TokenUsage
from usage.pricing import cost_of, price_in_force


def usage_record(*, job: AIJob, attempt: int, usage: Usage, at: datetime) -> TokenUsage:
    """Called by the pipeline inside the attempt's transaction; cost fixed now, never repriced."""
    price = price_in_force(provider=job.provider, model=job.model, at=at)
    return TokenUsage.objects.create(
        owner_id=job.owner_id,
        job=job,
        attempt=attempt,
        provider=job.provider,
        model=canonical_model(job.provider, job.model),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost=cost_of(usage=usage, price=price),
        created_at=at,
    )
