"""The audit trail's one writer, and who acts.

A leaf: the orchestration services (jobs.actions, jobs.queue_control, dlq.services) and the price writes
(usage.services) call ``audit_record`` inside their own transaction, after the change won, so a refused
or rolled-back action leaves no row. The interfaces say who acts with an ``Actor`` (the API and the admin
from the request, the commands from the OS user); a service called without one (an internal call, a data
migration) records nothing.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass

from aipb.exceptions import InvalidInput
from audit.models import AuditEntry, AuditSource

log = logging.getLogger(__name__)

REASON_MAX = 500  # the same bound as a pause reason (jobs.queue_control)
DETAIL_IDS_MAX = 1000  # ids listed in a bulk action's details; the counts are always whole
_ACTOR_MAX = AuditEntry._meta.get_field("actor").max_length


@dataclass(frozen=True)
class Actor:
    name: str  # the username; for a command, the OS user who ran it
    source: str  # an AuditSource
    user_id: int | None = None  # None for a command: no account to compare with a job's owner

    @classmethod
    def of_request(cls, request, *, source: str) -> Actor:
        return cls(name=request.user.get_username(), source=source, user_id=request.user.pk)

    @classmethod
    def of_api(cls, request) -> Actor:
        """Who acts through the REST API."""
        return cls.of_request(request, source=AuditSource.API)

    @classmethod
    def of_command(cls) -> Actor:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # a container user with no passwd entry and no LOGNAME
            name = "unknown"
        return cls(name=name, source=AuditSource.COMMAND)

    @property
    def label(self) -> str:
        """How queue status shows who paused: a command's OS user is marked as such."""
        return f"{self.name} (manage.py)" if self.source == AuditSource.COMMAND else self.name

    def owns(self, owner_id: int | None) -> bool:
        return self.user_id is not None and self.user_id == owner_id


def reason_checked(reason: str) -> str:
    """Called before the action, so an over-long reason refuses the action instead of losing the record."""
    if not isinstance(reason, str):
        raise InvalidInput("reason must be a string")
    if len(reason) > REASON_MAX:
        raise InvalidInput(f"reason must be at most {REASON_MAX} characters")
    if "\x00" in reason:  # PostgreSQL text cannot hold NUL
        raise InvalidInput("reason must not contain NUL characters")
    return reason


def capped(ids: list) -> list[str]:
    return [str(value) for value in ids[:DETAIL_IDS_MAX]]


def audit_record(
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: object = "",
    reason: str = "",
    details: dict | None = None,
) -> AuditEntry:
    entry = AuditEntry.objects.create(
        actor=actor.name[:_ACTOR_MAX],
        source=actor.source,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        reason=reason,
        details=details or {},
    )
    # Operator-typed text is logged as quoted values: a newline in a name or reason cannot forge a log line.
    log.warning(
        "audit: %s %s %r by %r via %s%s",
        action,
        target_type,
        entry.target_id,
        actor.name,
        actor.source,
        f" reason={reason!r}" if reason else "",
    )
    return entry
