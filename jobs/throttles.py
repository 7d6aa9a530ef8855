"""The submission throttle: DRF's scoped rate throttle (its rates, scopes, cache key and Retry-After), counted in
Redis (aipb.cache) by every web worker on every host in one round trip: a sliding log trimmed, counted and
added to atomically on Redis's clock, where DRF's own read-modify-write of a pickled history costs two and
lets two workers admit the same last slot. While Redis is down it counts in Postgres instead, from the user's
jobs created in the window (an index scan on aijob_owner_created), so an outage neither stops submissions nor
lifts the limit."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.throttling import ScopedRateThrottle

from aipb.exceptions import InvalidInput
from aipb.redis_client import redis_skipped
from jobs.models import AIJob


class SubmitThrottle(ScopedRateThrottle):
    """``hits``: how many submissions the request makes (a batch's jobs); each counts against the rate."""

    _wait: float | None = None

    def __init__(self, hits: int = 1) -> None:
        super().__init__()
        self.hits = hits

    def allow_request(self, request, view):
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        if self.rate is None:
            return True
        if self.hits > self.num_requests:  # could never be admitted: waiting would not help
            raise InvalidInput(
                f"{self.hits} jobs at once exceed the submission rate of {self.rate}; submit fewer at a time"
            )
        if redis_skipped():
            return self._allow_by_database(request)
        count = getattr(self.cache, "sliding_window_hit", None)
        if count is None:  # a cache other than aipb.cache's (a test's, say): DRF's own way, one hit a request
            self._wait = None
            return super().allow_request(request, view)
        self._wait = count(
            self.get_cache_key(request, view), limit=self.num_requests, window_seconds=self.duration, hits=self.hits
        )
        return self._wait is None

    def _allow_by_database(self, request) -> bool:
        if not request.user.is_authenticated:
            return True
        since = timezone.now() - timedelta(seconds=self.duration)
        recent = AIJob.objects.filter(owner=request.user, created_at__gte=since).count()
        self._wait = float(self.duration) if recent + self.hits > self.num_requests else None
        return self._wait is None

    def wait(self):
        return self._wait if self._wait is not None else super().wait()
