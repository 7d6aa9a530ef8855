"""The submission throttle: DRF's scoped rate throttle, counted in Redis (aipb.cache) by every web worker on
every host; while Redis is down it counts in Postgres instead, from the user's jobs created in the window
(an index scan on aijob_owner_created), so an outage neither stops submissions nor lifts the limit."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.throttling import ScopedRateThrottle

from aipb.redis_client import redis_skipped
from jobs.models import AIJob


class SubmitThrottle(ScopedRateThrottle):
    _database_wait: float | None = None

    def allow_request(self, request, view):
        if not redis_skipped():
            return super().allow_request(request, view)
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope or not request.user.is_authenticated:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        if self.rate is None:
            return True
        since = timezone.now() - timedelta(seconds=self.duration)
        recent = AIJob.objects.filter(owner=request.user, created_at__gte=since).count()
        self._database_wait = float(self.duration) if recent >= self.num_requests else None
        return self._database_wait is None

    def wait(self):
        return self._database_wait if self._database_wait is not None else super().wait()
