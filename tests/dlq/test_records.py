"""dlq.records: the dead letter written with a death (its snapshot of the job and its attempts), resolution when
the job is retried, and retention (age limit, cap, resolved entries before open ones, bounded work per call).

Entries and jobs are rows made by the factories: what these functions read does not depend on how a job died
(tests/dlq/test_dead_letter_lifecycle.py has deaths by the real pipeline and worker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from dlq import records
from dlq.models import DeadLetter, DeadLetterStatus
from jobs.errors import Classified, ErrorType
from jobs.models import ATTEMPT_FIELDS, AIJob, JobStatus
from tests.factories import AIJobFactory, DeadLetterFactory, JobAttemptFactory

TIMEOUT = Classified(type=ErrorType.TIMEOUT, retryable=True, message="attempt 2 abandoned")


def aged(entry: DeadLetter, *, days: float = 0, seconds: float = 0) -> DeadLetter:
    """created_at is set on insert; an entry from the past gets it moved afterwards."""
    at = timezone.now() - timedelta(days=days, seconds=seconds)
    DeadLetter.objects.filter(id=entry.id).update(created_at=at)
    entry.created_at = at
    return entry


def entries(count: int, *, status: str = DeadLetterStatus.OPEN, start: int = 0) -> list[DeadLetter]:
    """`count` entries created one minute apart, the first `start + count` minutes ago (oldest first)."""
    return [aged(DeadLetterFactory(status=status), seconds=60 * (start + count - i)) for i in range(count)]


def remaining() -> list[int]:
    return list(DeadLetter.objects.order_by("created_at", "id").values_list("id", flat=True))


# --------------------------------------------------------------------------- capture


def test_a_dead_letter_holds_the_job_and_its_attempt_history(db, user):
    job = AIJobFactory(
        owner=user, status=JobStatus.DEAD, attempts=2, max_attempts=2, options={"simulate": {"latency_ms": 5}}
    )
    started = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    JobAttemptFactory(job=job, number=2, outcome="abandoned", error_type="TIMEOUT", started_at=started)
    JobAttemptFactory(job=job, number=1, outcome="failed", error_type="SERVICE_UNAVAILABLE", started_at=started)

    with transaction.atomic():
        entry = records.dead_letter(job=job, classified=TIMEOUT)

    assert (entry.job_id, entry.job_uuid, entry.status) == (job.id, job.id, DeadLetterStatus.OPEN)
    assert (entry.error_type, entry.error_message, entry.retryable) == ("TIMEOUT", "attempt 2 abandoned", True)
    assert (entry.attempts, entry.provider, entry.model) == (2, job.provider, job.model)
    snapshot = DeadLetter.objects.get(id=entry.id).payload
    assert snapshot["job"] == {
        "id": str(job.id),
        "owner": "alice",
        "provider": job.provider,
        "model": job.model,
        "prompt": job.prompt,
        "options": {"simulate": {"latency_ms": 5}},
        "priority": "normal",
        "max_attempts": 2,
        "created_at": job.created_at.isoformat(),
    }
    history = snapshot["attempt_history"]
    assert [(a["number"], a["outcome"], a["error_type"]) for a in history] == [
        (1, "failed", "SERVICE_UNAVAILABLE"),
        (2, "abandoned", "TIMEOUT"),
    ]
    assert all(set(a) == set(ATTEMPT_FIELDS) for a in history)
    assert history[0]["started_at"] == started.isoformat(), "JSON-safe: datetimes as ISO text"


@pytest.mark.django_db(transaction=True)
def test_a_dead_letter_is_written_only_inside_the_transaction_that_kills_the_job(user):
    job = AIJobFactory(owner=user, status=JobStatus.DEAD)
    with pytest.raises(AssertionError, match="inside the job's transaction"):
        records.dead_letter(job=job, classified=TIMEOUT)
    assert DeadLetter.objects.count() == 0


def test_retention_runs_after_the_death_commits(db, user, settings, django_capture_on_commit_callbacks):
    settings.AI_DLQ_MAX_ENTRIES = 2
    old = entries(2)
    job = AIJobFactory(owner=user, status=JobStatus.DEAD, attempts=1)

    with django_capture_on_commit_callbacks(execute=False) as after_commit:
        new = records.dead_letter(job=job, classified=TIMEOUT)
    assert DeadLetter.objects.count() == 3, "nothing is pruned inside the death's own transaction"
    for callback in after_commit:
        callback()

    assert remaining() == [old[1].id, new.id]


# --------------------------------------------------------------------------- resolution


def test_a_retried_job_resolves_its_open_entries_only(db):
    job = AIJobFactory(status=JobStatus.DEAD)
    first = DeadLetterFactory(job=job)
    second = DeadLetterFactory(job=job)
    discarded = DeadLetterFactory(job=job, status=DeadLetterStatus.DISCARDED)
    someone_elses = DeadLetterFactory()
    at = timezone.now()

    assert records.dlq_mark_retried_for_job(job_id=job.id, at=at) == 2

    statuses = dict(DeadLetter.objects.values_list("id", "status"))
    assert statuses == {first.id: "retried", second.id: "retried", discarded.id: "discarded",
                        someone_elses.id: "open"}  # fmt: skip
    assert set(DeadLetter.objects.filter(status="retried").values_list("resolved_at", flat=True)) == {at}
    assert records.dlq_mark_retried_for_job(job_id=job.id, at=at) == 0


# --------------------------------------------------------------------------- retention


def test_the_cap_keeps_the_newest_and_prunes_resolved_entries_first(db, settings):
    settings.AI_DLQ_MAX_ENTRIES = 3
    settings.AI_DLQ_MAX_AGE_DAYS = 0
    oldest_open = entries(1, start=10)[0]
    retried, discarded = entries(1, status="retried", start=8)[0], entries(1, status="discarded", start=6)[0]
    newer_open = entries(2, start=0)
    jobs_before = AIJob.objects.count()

    result = records.dlq_enforce_retention(limit=100)

    # two over the cap: the two resolved ones go, although an open one is older
    assert result.as_dict() == {"deleted": 2, "expired": 0, "over_cap": 2}
    assert remaining() == [oldest_open.id, *(e.id for e in newer_open)]
    assert not DeadLetter.objects.filter(id__in=[retried.id, discarded.id]).exists()

    settings.AI_DLQ_MAX_ENTRIES = 2
    assert records.dlq_enforce_retention(limit=100).over_cap == 1  # no resolved one left: the oldest open one
    assert remaining() == [e.id for e in newer_open]
    assert AIJob.objects.count() == jobs_before, "retention never deletes jobs"


def test_the_age_limit_goes_first(db, settings):
    settings.AI_DLQ_MAX_AGE_DAYS = 7
    settings.AI_DLQ_MAX_ENTRIES = 10_000
    expired = [aged(DeadLetterFactory(), days=8), aged(DeadLetterFactory(status="retried"), days=30)]
    kept = [aged(DeadLetterFactory(), days=6), DeadLetterFactory()]

    assert records.dlq_enforce_retention(limit=100).as_dict() == {"deleted": 2, "expired": 2, "over_cap": 0}
    assert set(remaining()) == {e.id for e in kept}
    assert not DeadLetter.objects.filter(id__in=[e.id for e in expired]).exists()


def test_each_call_deletes_at_most_its_limit_and_prune_goes_on_until_done(db, settings):
    settings.AI_DLQ_MAX_AGE_DAYS = 0
    settings.AI_DLQ_MAX_ENTRIES = 2
    made = entries(9)

    assert records.dlq_enforce_retention(limit=3).deleted == 3
    assert remaining() == [e.id for e in made[3:]]

    assert records.dlq_prune(batch=2).as_dict() == {"deleted": 4, "expired": 0, "over_cap": 4}
    assert remaining() == [e.id for e in made[-2:]]
    assert records.dlq_prune(batch=2).deleted == 0
