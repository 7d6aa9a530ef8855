"""The validation pass rate over the last AI_VALIDATION_WINDOW_SECONDS, kept in Redis.

Every process that validates a model output increments a per-time-bucket Redis counter
(``...:<bucket>:pass`` or ``:fail``), which expires on its own once its bucket has left the
window. A scrape reads the window's counters with one MGET: memory and scrape cost are
bounded by the window (at most 2 × (``MAX_BUCKETS`` + 2) small keys), never by the number
of attempts, and no table is scanned. Every host's scrape sees the same number.

Buckets are ``window / MAX_BUCKETS`` seconds wide (5 s for the default 600 s window), so
the window's oldest edge is exact to one bucket.
"""

from __future__ import annotations

import logging
import math
import time

from django.conf import settings
from redis.exceptions import RedisError

from aipb.redis_client import get_redis

log = logging.getLogger(__name__)

KEY_PREFIX = "aipb:metrics:validation:"
MAX_BUCKETS = 120


def bucket_seconds(window: int) -> int:
    return max(1, math.ceil(window / MAX_BUCKETS))


def record(*, passed: bool, now: float | None = None) -> None:
    """Count one validated output. Never raises: metrics must not fail the attempt they describe."""
    window = settings.AI_VALIDATION_WINDOW_SECONDS
    width = bucket_seconds(window)
    now = time.time() if now is None else now
    bucket = int(now // width)
    key = f"{KEY_PREFIX}{width}:{bucket}:{'pass' if passed else 'fail'}"
    # gone one bucket after it has left the window (a relative TTL: Redis's own clock does not matter)
    ttl = max(1, math.ceil((bucket + 1) * width + window + width - time.time()))
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, ttl)
        pipe.execute()
    except RedisError as exc:
        log.warning("validation window: could not record to Redis: %s", exc)


def counts(*, now: float | None = None) -> tuple[int, int]:
    """(passed, failed) over the window ending now. Raises RedisError when Redis is unreachable."""
    window = settings.AI_VALIDATION_WINDOW_SECONDS
    width = bucket_seconds(window)
    now = time.time() if now is None else now
    last = int(now // width)
    first = int((now - window) // width) + 1  # the oldest bucket still (at least partly) inside the window
    keys = [
        f"{KEY_PREFIX}{width}:{bucket}:{result}" for bucket in range(first, last + 1) for result in ("pass", "fail")
    ]
    replies = get_redis().mget(keys)
    passed = sum(int(n) for n in replies[0::2] if n is not None)
    failed = sum(int(n) for n in replies[1::2] if n is not None)
    return passed, failed


def pass_rate(*, now: float | None = None) -> float | None:
    """Percent (0-100) of validated outputs that passed; None when nothing was validated in the window."""
    passed, failed = counts(now=now)
    total = passed + failed
    if not total:
        return None
    return 100.0 * passed / total
