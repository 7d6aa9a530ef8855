"""Django's cache in Redis, through the process's one Redis client (aipb.redis_client: Sentinel,
timeouts, retries), so every gunicorn worker on every host counts the same submission throttle.

Django's default cache is per-process memory: with N workers a user could submit N times the
throttle rate. The cache holds throttle counts only, so it fails open and fast: its calls go through
aipb.redis_client.best_effort (no retries; skipped for a few seconds after a failure), a read that
cannot reach Redis finds nothing and a write is dropped (logged), and the request goes on rather than
becoming a 500 or waiting — submitting a job needs Redis for a moment at most (reconcile re-queues the
rest), and the submission throttle counts in Postgres meanwhile (jobs.throttles).
It shares Redis with the queues, so ``clear()`` deletes the cache's own keys, never the database.
"""

from __future__ import annotations

import logging

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.exceptions import RedisError

from aipb.redis_client import RedisSkipped, best_effort, fast_client, get_redis

log = logging.getLogger(__name__)


class _SharedClient(RedisCacheClient):
    def get_client(self, key=None, *, write=False):
        return fast_client()  # every call goes through best_effort (below): it trips the circuit on failure

    def clear(self):
        raise NotImplementedError("SharedRedisCache.clear() deletes by key prefix")


class SharedRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server or "unused", params)
        self._class = _SharedClient

    def get(self, key, default=None, version=None):
        try:
            return best_effort(lambda _: super(SharedRedisCache, self).get(key, default, version))
        except RedisSkipped:
            return default
        except RedisError as exc:
            log.warning("cache read failed, treated as a miss: %s", exc)
            return default

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        try:
            best_effort(lambda _: super(SharedRedisCache, self).set(key, value, timeout, version))
        except RedisSkipped:
            pass
        except RedisError as exc:
            log.warning("cache write dropped: %s", exc)

    def clear(self):
        client = get_redis()
        pattern = f"{self.key_prefix}:*"  # default key function: "<prefix>:<version>:<key>"
        deleted = 0
        for batch in _batches(client.scan_iter(match=pattern, count=500), 500):
            deleted += client.delete(*batch)
        return deleted > 0


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
