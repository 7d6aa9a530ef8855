"""Reads for batches: one batch or a page of them with their figures, and a batch's jobs.

A batch's counts and cost are never stored: they are read from its jobs when asked, each figure one statement
for any number of batches (a GROUP BY on the aijob_batch_status index; the usage rows of those jobs by their
job index), so they cannot drift from the rows and a list page costs the same for one batch as for fifty.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet, Sum

from aipb.exceptions import NotFound
from jobs.models import AIJob, Batch, JobStatus
from usage.models import TokenUsage
from usage.reports import money


@dataclass(frozen=True)
class BatchView:
    """A batch with its figures, as the API, the admin and the command show it."""

    batch: Batch
    counts: dict[str, int]  # jobs by status, every status present
    cost_usd: str  # the batch's provider calls, priced, USD (usage.reports.money)


def batch_list(*, user: AbstractBaseUser | None) -> QuerySet[Batch]:
    """Owners see their own batches, staff (and an operator's None) see all; newest first."""
    qs = Batch.objects.select_related("owner")
    if user is not None and not user.is_staff:
        qs = qs.filter(owner=user)
    return qs.order_by("-created_at", "-id")


def batch_get(*, user: AbstractBaseUser | None, batch_id: object) -> Batch:
    """The batch (another user's is not found, unless the reader is staff)."""
    try:
        return batch_list(user=user).get(id=batch_id)
    except (Batch.DoesNotExist, ValueError, TypeError, ValidationError):  # ValidationError: a malformed UUID
        raise NotFound(f"batch {batch_id} not found") from None


def batch_counts(*, batch_ids: list) -> dict[object, dict[str, int]]:
    """Jobs by status for each batch, every status present (0 when none): one GROUP BY."""
    counts = {batch_id: dict.fromkeys(JobStatus.values, 0) for batch_id in batch_ids}
    rows = (
        AIJob.objects.filter(batch_id__in=batch_ids).values_list("batch_id", "status").annotate(n=Count("*")).order_by()
    )
    for batch_id, status, n in rows:
        counts[batch_id][status] = n
    return counts


def batch_costs(*, batch_ids: list) -> dict[object, Decimal]:
    """The priced cost of every provider call the batches' jobs made (unpriced calls add nothing): one GROUP BY."""
    costs = dict.fromkeys(batch_ids, Decimal(0))
    rows = (
        TokenUsage.objects.filter(job__batch_id__in=batch_ids)
        .values_list("job__batch_id")
        .annotate(cost=Sum("cost"))
        .order_by()
    )
    for batch_id, cost in rows:
        costs[batch_id] = cost or Decimal(0)
    return costs


def batch_views(batches: list[Batch]) -> list[BatchView]:
    """The batches with their figures: two statements for the lot."""
    ids = [batch.id for batch in batches]
    if not ids:
        return []
    counts, costs = batch_counts(batch_ids=ids), batch_costs(batch_ids=ids)
    return [BatchView(batch=batch, counts=counts[batch.id], cost_usd=money(costs[batch.id])) for batch in batches]


def batch_view_submitted(batch: Batch) -> BatchView:
    """A batch just inserted, without asking: every job queued, nothing spent."""
    counts = dict.fromkeys(JobStatus.values, 0) | {JobStatus.QUEUED: batch.total}
    return BatchView(batch=batch, counts=counts, cost_usd=money(Decimal(0)))


def batch_view(*, user: AbstractBaseUser, batch_id: object) -> BatchView:
    return batch_views([batch_get(user=user, batch_id=batch_id)])[0]


def batch_jobs(*, batch: Batch) -> QuerySet[AIJob]:
    """The batch's jobs in the order they were given (each row's created_at is taken as it is built, in order)."""
    return AIJob.objects.select_related("owner").defer("result").filter(batch=batch).order_by("created_at", "id")
