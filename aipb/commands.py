"""The base of the operator commands (`manage.py jobs|queue|dlq|usage|reconcile`) and what they share.

Subcommands dispatched to `_<name>` methods, a service's refusal as one line, tables for people and
`--json` for scripts, confirmation before a destructive bulk action, progress on a terminal, short ids,
and a quiet end when the reader of stdout goes away (`manage.py jobs list | head -1`).

Ground floor: it imports no app; a command hands it the queryset or the choices it needs.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import date, datetime, timedelta
from types import SimpleNamespace

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from aipb.exceptions import ServiceError

# Git's rule of thumb for short hashes: fewer digits than this match too much to be worth a lookup.
MIN_ID_PREFIX = 4
PROGRESS_THRESHOLD = 50

Style = Callable[[str], str]


# --- text for people ---


def clip(text: str | None, width: int) -> str:
    """One line of at most `width` characters: whitespace runs collapsed, an ellipsis where it was cut."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return ""
    seconds = max(0, int(((now or timezone.now()) - moment).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# --- parsers: bad input is a CommandError naming the option and the value ---


def parse_uuid(value: str, *, what: str = "job id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise CommandError(f"not a valid {what}: {value!r} (expected a UUID)") from None


def resolve_id(value: str, *, queryset: QuerySet, what: str = "job") -> uuid.UUID:
    """A full UUID, or the first hex digits of exactly one row's UUID primary key (`jobs view 3f2a`).

    A prefix is hex digits only: with dashes it must be a whole UUID, so a UUID cut short by a bad paste is
    an error rather than a silent match. The lookup is a range on the primary key's index (Postgres orders
    uuids by their bytes, i.e. by their hex digits), not a scan.
    """
    text = (value or "").strip().lower()
    if len(text) < 32 and len(text) >= MIN_ID_PREFIX and all(c in "0123456789abcdef" for c in text):
        low, high = uuid.UUID(text.ljust(32, "0")), uuid.UUID(text.ljust(32, "f"))
        found = list(queryset.filter(pk__gte=low, pk__lte=high).order_by("pk").values_list("pk", flat=True)[:4])
        if not found:
            raise CommandError(f"no {what} id starts with {text}")
        if len(found) > 1:
            shown = ", ".join(str(pk) for pk in found[:3]) + (", ..." if len(found) > 3 else "")
            raise CommandError(f"{what} id prefix {text} is ambiguous ({shown}): give more digits")
        return found[0]
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise CommandError(
            f"not a valid {what} id: {value!r} (expected a UUID); "
            f"a short id is its first {MIN_ID_PREFIX} or more hex digits, without dashes"
        ) from None


def parse_when(value: str, *, option: str, end_of_day: bool = False) -> datetime:
    """A date (its midnight, in TIME_ZONE) or an ISO date-time (naive means TIME_ZONE).

    With end_of_day a date means the midnight after it, so an exclusive `--until 2025-01-31` still
    includes the 31st, as a person reading it expects.
    """
    moment = None
    try:
        # a date first: Django's parse_datetime reads a bare date as its midnight, too
        if (day := parse_date(value)) is not None:
            moment = datetime(day.year, day.month, day.day) + (timedelta(days=1) if end_of_day else timedelta())
        else:
            moment = parse_datetime(value)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(f"{option} must be a date (2025-01-31) or ISO date-time (2025-01-31T14:00Z), not {value!r}")
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def parse_day(value: str, *, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise CommandError(f"{option} is not a date (YYYY-MM-DD): {value!r}") from None


def parse_int(value: str, *, option: str, minimum: int, maximum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = minimum - 1
    if not minimum <= number <= maximum:
        raise CommandError(f"{option} must be a whole number from {minimum} to {maximum}, not {value!r}")
    return number


def choice(value: str | None, *, option: str, choices: Sequence[str]) -> str | None:
    if value is not None and value not in choices:
        raise CommandError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    return value


def one_line(message: str) -> str:
    return " ".join(str(message).split())


# --- the base command ---


class Progress:
    """A line about every 10% of a bulk action, once there are at least `threshold` items."""

    def __init__(self, write: Callable[[str], None], label: str, *, threshold: int = PROGRESS_THRESHOLD) -> None:
        self.write, self.label, self.threshold = write, label, threshold
        self._next = 0

    def __call__(self, done: int, total: int) -> None:
        if total < self.threshold:
            return
        if done >= self._next or done == total:
            self.write(f"{self.label}: {done}/{total} ({done * 100 // total}%)")
            self._next = done + max(1, total // 10)


# Who a command reads as: an operator sees every user's rows (the selectors' staff view).
OPERATOR = SimpleNamespace(is_staff=True)


def user_named(username: str, *, option: str = "--owner"):
    """The user an option names, or CommandError in one line."""
    user_model = get_user_model()
    user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
    if user is None:
        raise CommandError(f"{option}: unknown user {username!r}")
    return user


class OperatorCommand(BaseCommand):
    """A `manage.py <noun> <verb>` command: subclasses add their verbs in add_subcommands and write `_<verb>`
    methods (`_<verb>_<verb>` for nested ones), each called with the parsed options as keywords.

    A command without verbs (reconcile) overrides add_arguments and handle and keeps the rest.
    """

    def add_subcommands(self, sub) -> None:
        raise NotImplementedError("a subcommand-style command adds its subcommands here")

    def add_arguments(self, parser) -> None:
        self._dispatch: list[str] = []
        self._subparsers: list = []
        self.add_subcommands(self.subcommands(parser))
        for sub in self._subparsers:
            # argparse names a missing subcommand by its dest ("action") unless it has a metavar
            sub.metavar = sub.metavar or "{" + ",".join(sub.choices) + "}"

    def subcommands(self, parser, *, dest: str = "action"):
        """Subparsers whose choice names the method to call; nest them with another dest (`prices_action`)."""
        sub = parser.add_subparsers(dest=dest, required=True)
        self._dispatch.append(dest)
        self._subparsers.append(sub)
        return sub

    def handle(self, *args, **options) -> None:
        path = [options.pop(dest) for dest in self._dispatch if options.get(dest)]
        getattr(self, "_" + "_".join(path).replace("-", "_"))(**options)

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except ServiceError as exc:
            raise CommandError(one_line(exc.message)) from None

    def run_from_argv(self, argv) -> None:
        try:
            super().run_from_argv(argv)
            sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        except BrokenPipeError:
            # The reader went away (`| head -1`): it has what it wanted, so end quietly with success, as
            # most Unix tools do. stdout now points at /dev/null so the interpreter's own flush at exit
            # has somewhere to go instead of printing "Exception ignored ... BrokenPipeError".
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            sys.exit(0)

    # --- output ---

    def print_json(self, data: object, *, one_line: bool = False) -> None:
        """The objects the API returns, indented; one_line for a stream of reports (one JSON document a line)."""
        self.stdout.write(json.dumps(data, indent=None if one_line else 2, cls=DjangoJSONEncoder))

    def print_table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[object]],
        *,
        right: Collection[int] = (),
        rule: bool = False,
        header_style: Style | None = None,
        styles: dict[int, Style] | None = None,
    ) -> None:
        """Columns padded to their widest cell; `right` columns (numbers) right-aligned, `rule` a dashed line
        under the header. Styles apply after padding, so colour never breaks the alignment, and the last
        column is not padded unless right-aligned, so no coloured trailing spaces survive the rstrip."""
        cells = [[("" if value is None else str(value)) for value in row] for row in rows]
        widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
        last = len(headers) - 1

        def line(values: Sequence[str], column_styles: dict[int, Style]) -> str:
            parts = []
            for i, value in enumerate(values):
                if i in right:
                    padded = value.rjust(widths[i])
                else:
                    padded = value if i == last else value.ljust(widths[i])
                parts.append(column_styles[i](padded) if i in column_styles else padded)
            return "  ".join(parts).rstrip()

        heading = header_style or self.style.MIGRATE_HEADING
        self.stdout.write(line(list(headers), dict.fromkeys(range(len(headers)), heading)))
        if rule:
            self.stdout.write("  ".join("-" * width for width in widths))
        for row in cells:
            self.stdout.write(line(row, styles or {}))

    def progress(self, label: str) -> Progress | None:
        """Progress lines for a bulk action on a terminal; in a pipe or a log they would only be noise between
        the results, so there is none (the services take None for "no progress")."""
        return Progress(self.stdout.write, label) if self.stdout.isatty() else None

    # --- confirmation ---

    def confirm(self, *, yes: bool, action: str, question: str | Callable[[], str], declined: str) -> None:
        """Go on with --yes; otherwise ask on a terminal, and refuse without asking when stdin is not one:
        a script that means it says --yes, and one that does not never hangs on a prompt.

        A callable question is only called when asked (it may count what the action would touch). It goes
        to stderr, so it is seen even when stdout is redirected.
        """
        if yes:
            return
        if not sys.stdin.isatty():
            raise CommandError(f"refusing to {action} without --yes (stdin is not a terminal)")
        text = question() if callable(question) else question
        self.stderr.write(f"{text} [y/N] ", style_func=lambda plain: plain, ending="")
        self.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandError(declined)
