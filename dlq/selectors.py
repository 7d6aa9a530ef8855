"""Reads for the dead-letter queue. Every number is computed by the database."""

from __future__ import annotations

from django.db.models import Count, Max, Min, Q, QuerySet

from aipb.exceptions import InvalidInput, NotFound
from dlq.models import DeadLetter, DeadLetterStatus

LIST_FILTERS = ("error_type", "provider", "model", "status", "retryable")
RETRY_FILTERS = ("error_type", "provider", "model", "retryable")
MAX_ENTRY_ID = 2**63 - 1


def entry_pk(value: object) -> int:
    """A dead letter's id from a URL, a form or a command line; anything else is bad input."""
    if isinstance(value, bool):
        raise InvalidInput(f"dead letter id must be a positive integer, not {value!r}")
    try:
        pk = int(str(value).strip())
    except (TypeError, ValueError):
        raise InvalidInput(f"dead letter id must be a positive integer, not {str(value)[:40]!r}") from None
    if pk < 1:
        raise InvalidInput(f"dead letter id must be a positive integer, not {str(value)[:40]!r}")
    if pk > MAX_ENTRY_ID:  # well-formed, beyond any id the table can hold
        raise NotFound(f"dead letter {pk} not found")
    return pk


def dlq_filter(qs: QuerySet[DeadLetter], filters: dict | None) -> QuerySet[DeadLetter]:
    for key, value in (filters or {}).items():
        if key in LIST_FILTERS and value not in (None, ""):
            qs = qs.filter(**{key: value})
    return qs


def dlq_list(*, filters: dict | None = None) -> QuerySet[DeadLetter]:
    """Newest first; the payload (snapshot) stays in the database until a page asks for it."""
    return dlq_filter(DeadLetter.objects.defer("payload"), filters).order_by("-created_at", "-id")


def dlq_counts() -> dict[str, int]:
    """Entries per status (the ai_dlq_entries gauge)."""
    counts = dict.fromkeys(DeadLetterStatus.values, 0)
    # COUNT(*), not COUNT(id): Postgres answers it from the status index without reading the payloads
    rows = DeadLetter.objects.order_by().values_list("status").annotate(n=Count("*"))
    for status, n in rows:
        counts[status] = n
    return counts


def _grouped(field: str, open_q: Q) -> dict:
    rows = DeadLetter.objects.filter(open_q).values_list(field).annotate(n=Count("*")).order_by(field)
    return {key: n for key, n in rows}


def dlq_stats() -> dict:
    """`total` counts every kept entry; every other number describes open entries only."""
    open_q = Q(status=DeadLetterStatus.OPEN)
    # aliases differ from field names: an aggregate may not shadow a column it filters on
    totals = DeadLetter.objects.order_by().aggregate(
        n_total=Count("*"),
        n_open=Count("id", filter=open_q),
        n_retryable=Count("id", filter=open_q & Q(retryable=True)),
        n_non_retryable=Count("id", filter=open_q & Q(retryable=False)),
        oldest=Min("created_at", filter=open_q),
        newest=Max("created_at", filter=open_q),
    )
    return {
        "total": totals["n_total"],
        "open": totals["n_open"],
        "retryable": totals["n_retryable"],
        "non_retryable": totals["n_non_retryable"],
        "by_error_type": _grouped("error_type", open_q),
        "by_provider": _grouped("provider", open_q),
        "by_model": _grouped("model", open_q),
        "oldest_at": totals["oldest"],
        "newest_at": totals["newest"],
    }
