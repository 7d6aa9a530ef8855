"""Output helpers for the operator commands: aligned, coloured tables for people, JSON for scripts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from django.core.management.base import CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime


def print_json(stdout, data: object) -> None:
    stdout.write(json.dumps(data, indent=2, cls=DjangoJSONEncoder))


def print_table(
    stdout,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    header_style: Callable[[str], str] | None = None,
    cell_styles: dict[int, Callable[[str], str]] | None = None,
) -> None:
    """Columns padded to their widest cell; styles are applied after padding so colour never breaks alignment."""
    cells = [[("" if value is None else str(value)) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    last = len(headers) - 1

    def line(values: Sequence[str], styles: dict[int, Callable[[str], str]]) -> str:
        parts = []
        for i, value in enumerate(values):
            padded = value if i == last else value.ljust(widths[i])
            parts.append(styles[i](padded) if i in styles else padded)
        return "  ".join(parts).rstrip()

    stdout.write(line(list(headers), dict.fromkeys(range(len(headers)), header_style) if header_style else {}))
    for row in cells:
        stdout.write(line(row, cell_styles or {}))


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    seconds = max(0, int(((now or timezone.now()) - moment).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_uuid(value: str, *, what: str = "job id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise CommandError(f"not a valid {what}: {value!r} (expected a UUID)") from None


def parse_when(value: str, *, option: str) -> datetime:
    """A date (midnight, in TIME_ZONE) or an ISO date-time (naive means TIME_ZONE)."""
    moment = None
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = datetime(day.year, day.month, day.day)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"{option} must be a date (2025-01-31) or ISO date-time (2025-01-31T14:00Z), not {value!r}")
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def parse_limit(value: str, *, maximum: int) -> int:
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if not 1 <= limit <= maximum:
        raise CommandError(f"--limit must be a whole number from 1 to {maximum}, not {value!r}")
    return limit


def choice(value: str | None, *, option: str, choices: Sequence[str]) -> str | None:
    if value is not None and value not in choices:
        raise CommandError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return value


class Progress:
    """Progress for bulk actions: a line about every 10% once there are at least `threshold` items."""

    def __init__(self, stdout, label: str, *, threshold: int = 50) -> None:
        self.stdout, self.label, self.threshold = stdout, label, threshold
        self._next = 0

    def __call__(self, done: int, total: int) -> None:
        if total < self.threshold:
            return
        if done >= self._next or done == total:
            self.stdout.write(f"{self.label}: {done}/{total} ({done * 100 // total}%)")
            self._next = done + max(1, total // 10)
