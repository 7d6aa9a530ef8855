"""Django's cache in Redis, through the process's one Redis client (aipb.redis_client: Sentinel,
timeouts, retries), so every gunicorn worker on every host counts the same submission throttle.

Django's default cache is per-process memory: with N workers a user could submit N times the
throttle rate. The cache holds throttle counts only, so it fails open and fast: its calls go through
aipb.redis_client.best_effort (no retries; skipped for a few seconds after a failure), a read that
cannot reach Redis finds nothing and a write is dropped (logged), and the request goes on rather than
becoming a 500 or waiting — submitting a job needs Redis for a moment at most (reconcile re-queues the
rest), and the submission throttle counts in Postgres meanwhile (jobs.throttles).
It shares Redis with the queues, so ``clear()`` deletes the cache's own keys, never the database.

``sliding_window_hit`` is the submission throttle's count in one round trip: DRF's SimpleRateThrottle reads
its whole history (a pickled list of every admitted request's time in the window: 6,000 floats, ~54 KB, at
the default rate) and writes it back, two round trips that also race between workers; here a Lua script
trims, counts and admits against a sorted set on Redis's clock. It keeps DRF's key; a count DRF left there
is replaced at the first hit. The other way round (a process still running DRF's throttle during a rolling
deploy) GET meets a sorted set: WRONGTYPE, and that process skips Redis for REDIS_FAIL_FAST_SECONDS, counting in
Postgres and leaving its submissions' enqueue to reconcile, until it is replaced.
"""

from __future__ import annotations

import logging
import secrets

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from redis.exceptions import RedisError

from aipb.redis_client import RedisSkipped, best_effort, fast_client, get_redis

log = logging.getLogger(__name__)

# KEYS[1]: a sliding log, the admitted hits scored by Redis time in ms. ARGV: hits allowed per window, the
# window in ms, a member unique to this request, how many hits it counts (a batch counts each job; at most the
# limit). Returns 0 when admitted (all of them), else the ms until enough of the oldest hits leave the window.
_SLIDING_WINDOW_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4] or '1')
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'zset' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count + hits <= limit then
  if hits == 1 then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
  else
    local members = {}
    for i = 1, hits do
      members[#members + 1] = now
      members[#members + 1] = ARGV[3] .. ':' .. i
      if #members >= 400 or i == hits then
        redis.call('ZADD', KEYS[1], unpack(members))
        members = {}
      end
    end
  end
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
if hits > limit then
  return window
end
local nth = count + hits - limit - 1
local oldest = redis.call('ZRANGE', KEYS[1], nth, nth, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class _SharedClient(RedisCacheClient):
    def get_client(self, key=None, *, write=False):
        return fast_client()  # every call goes through best_effort (below): it trips the circuit on failure

    def clear(self):
        raise NotImplementedError("SharedRedisCache.clear() deletes by key prefix")


class SharedRedisCache(RedisCache):
    def __init__(self, server, params):
        super().__init__(server or "unused", params)
        self._class = _SharedClient
        self._script = None

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

    def sliding_window_hit(self, key: str, *, limit: int, window_seconds: float, hits: int = 1) -> float | None:
        """Count ``hits`` hits on ``key`` if they fit under ``limit`` with those counted in the last
        ``window_seconds``: None when counted, else the seconds until enough of the oldest leave the window.
        Fails open: a hit Redis cannot count is admitted (and logged), as a read that finds nothing admits it in
        DRF's throttle."""
        script = self._script
        if script is None:
            script = self._script = fast_client().register_script(_SLIDING_WINDOW_HIT)  # the SHA; no round trip
        args = [limit, int(window_seconds * 1000), secrets.token_hex(8), hits]
        try:
            wait_ms = best_effort(lambda client: script(keys=[self.make_key(key)], args=args, client=client))
        except RedisSkipped:
            return None
        except RedisError as exc:
            log.warning("throttle count failed, the hit is admitted: %s", exc)
            return None
        return int(wait_ms) / 1000 if wait_ms else None

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
