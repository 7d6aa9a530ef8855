"""One Redis connection pool per process, with health checks, timeouts and retry with backoff."""

from __future__ import annotations

import os
import threading

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

_lock = threading.Lock()
_client: redis.Redis | None = None
_client_pid: int | None = None


def _build() -> redis.Redis:
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5)
    common = {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "health_check_interval": 30,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if settings.REDIS_SENTINELS:
        sentinel = Sentinel(settings.REDIS_SENTINELS, socket_timeout=settings.REDIS_SOCKET_TIMEOUT)
        return sentinel.master_for(settings.REDIS_SENTINEL_MASTER, **common)
    return redis.Redis.from_url(settings.REDIS_URL, **common)


def get_redis() -> redis.Redis:
    """The process-wide client; a forked child (RQ work-horse) builds its own pool."""
    global _client, _client_pid
    pid = os.getpid()
    if _client is None or _client_pid != pid:
        with _lock:
            if _client is None or _client_pid != pid:
                _client = _build()
                _client_pid = pid
    return _client
