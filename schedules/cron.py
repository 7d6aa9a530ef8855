"""Cron expressions in an IANA time zone: what is accepted, and the next instant one fires.

croniter parses and matches the expression (five fields, or a macro such as ``@daily``); this module only says
how its local wall-clock times map to instants, which is where daylight saving time bites:

- a local time that happens twice (the repeated hour when clocks go back) fires once, at its first occurrence;
- a local time that does not exist (the hour skipped when clocks go forward) fires at the instant it names with
  the offset in force before the change: 02:30 on a spring-forward night fires at 03:30 by the new clock.

RQ 3's cron (rq/cron.py) maps local times the same way, but in the process's own time zone; a schedule carries
its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterError, croniter

from aipb.exceptions import InvalidInput

CRON_MAX_CHARS = 100
TIMEZONE_MAX_CHARS = 64
# Minute resolution, like cron: croniter would also take a sixth (seconds) field and a seventh (year), and a
# schedule firing every second is a job flood, not a schedule.
CRON_FIELDS = 5
# croniter's own macros, but @reboot: there is no "boot" of a schedule.
MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def timezone_checked(name: object) -> ZoneInfo:
    if not isinstance(name, str) or name not in _zone_names():
        raise InvalidInput(f"timezone must be an IANA time zone name such as Europe/Paris, not {name!r}")
    return ZoneInfo(name)


def cron_checked(expression: object) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInput("cron must be a cron expression such as '0 9 * * 1-5'")
    text = " ".join(expression.split())
    if len(text) > CRON_MAX_CHARS:
        raise InvalidInput(f"cron must be at most {CRON_MAX_CHARS} characters")
    if text.startswith("@"):
        text = text.lower()
        if text not in MACROS:
            raise InvalidInput(f"cron macro must be one of {', '.join(sorted(MACROS))}, not {text!r}")
    elif len(text.split()) != CRON_FIELDS:
        raise InvalidInput(f"cron must have {CRON_FIELDS} fields (minute hour day month weekday), not {text!r}")
    if not croniter.is_valid(text):
        raise InvalidInput(f"cron expression {text!r} is not valid")
    return text


def next_fire(expression: str, zone: str, *, after: datetime) -> datetime:
    """The first instant (UTC) strictly after `after` at which the expression fires in the zone."""
    tz = ZoneInfo(zone)
    local_after = after.astimezone(tz).replace(tzinfo=None)
    try:
        times = croniter(expression, local_after)
        while True:
            local = times.get_next(datetime)
            # fold=0: a repeated local time is its first occurrence, a skipped one takes the earlier offset
            candidate = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
            # In the repeated hour `after` may lie past the first occurrence of the next local match: go on.
            if candidate > after:
                return candidate
    except CroniterError as exc:  # e.g. '0 0 30 2 *' (30 February) never fires
        raise InvalidInput(f"cron expression {expression!r} never fires: {exc}") from None


def schedule_checked(expression: object, zone: object, *, now: datetime) -> tuple[str, str, datetime]:
    """The expression and zone as stored, and the first instant after now; InvalidInput naming what is wrong."""
    text = cron_checked(expression)
    tz = timezone_checked(zone)
    return text, tz.key, next_fire(text, tz.key, after=now)
