"""Schedules made the real way (schedules.services.schedule_create), for the schedules tests."""

from __future__ import annotations

import pytest

from schedules.services import schedule_create


@pytest.fixture
def make_schedule(user):
    def make(*, owner=None, cron: str = "*/5 * * * *", timezone_name: str = "UTC", **fields):
        if "batch" not in fields:  # a job template unless told otherwise
            fields.setdefault("prompt", "A landing page for the weekly ride")
            fields.setdefault("provider", "local")
        return schedule_create(owner=owner or user, cron=cron, timezone_name=timezone_name, **fields)

    return make
