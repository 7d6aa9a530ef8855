"""One Redis connection pool per process, with health checks, timeouts and retry with backoff; and, for the
web requests that only need Redis in passing, a fail-fast client behind a circuit.

Workers, the scheduler and reconcile use `get_redis()`: Redis is their work, so they wait out a restart or a
failover (retries with backoff, up to the socket timeout per try). A submission only needs Redis to count the
throttle and to enqueue after its row is committed, and reconcile enqueues whatever was missed; so those calls
go through `best_effort()`: no retries, a short connect timeout, and after one failure Redis is skipped for
REDIS_FAIL_FAST_SECONDS (a circuit per process), so a submission answers within a second while Redis is down.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

T = TypeVar("T")

_lock = threading.Lock()
_open_until = 0.0  # monotonic time until which best_effort() skips Redis (this process)

FAST_CONNECT_SECONDS = 0.5  # Redis down answers at once (refused) or within this (host unreachable)
FAST_COMMAND_SECONDS = 2.0


class RedisSkipped(RedisConnectionError):
    """best_effort() did not try: Redis failed moments ago (the circuit is open)."""


class FailoverFollowingConnection(SentinelManagedConnection):
    """A connection to the Sentinels' master that asks them where the master is on every socket it opens.

    redis-py (8.1; redis/redis-py#3874) asks only in connect(), when a command takes a connection from the pool. A
    command that was in flight when the master died retries on the same connection, and its reconnects go to the
    address the connection already had: the Sentinel failover drill (tests/e2e/test_sentinel_failover.py) saw
    workers dial the dead master for their whole retry budget (~70 s) while the Sentinels had promoted the replica
    in 3 s, then give up. Asking on each socket costs one Sentinel round trip per new connection, never per command.
    """

    def _connect(self):
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()  # MasterNotFoundError is retried
        return super()._connect()


def follow_failovers(client: redis.Redis) -> None:
    """Make a Sentinel client built elsewhere (django-rq's, for the RQ workers) open its connections with
    FailoverFollowingConnection; a client of a plain Redis URL is left as it is. Call it before the client is
    shared: connections it already made are dropped (a command holding one would be cut off)."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool) and pool.connection_class is not FailoverFollowingConnection:
        pool.connection_class = FailoverFollowingConnection
        pool.disconnect()
        pool.reset()


def _build(*, fail_fast: bool = False) -> redis.Redis:
    if fail_fast:
        common = {
            "socket_timeout": min(FAST_COMMAND_SECONDS, settings.REDIS_SOCKET_TIMEOUT),
            "socket_connect_timeout": min(FAST_CONNECT_SECONDS, settings.REDIS_SOCKET_TIMEOUT),
            "retry": Retry(ExponentialBackoff(), 0),
        }
    else:
        common = {
            "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": settings.REDIS_SOCKET_TIMEOUT,
            "health_check_interval": 30,
            "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
    if settings.REDIS_SENTINELS:
        sentinel = Sentinel(settings.REDIS_SENTINELS, socket_timeout=settings.REDIS_SOCKET_TIMEOUT)
        return sentinel.master_for(
            settings.REDIS_SENTINEL_MASTER, connection_class=FailoverFollowingConnection, **common
        )
    return redis.Redis.from_url(settings.REDIS_URL, **common)


class _PerProcess:
    """A client built once per process: a forked child (an RQ work-horse) builds its own pool."""

    def __init__(self, build: Callable[[], redis.Redis]) -> None:
        self._build = build
        self._client: redis.Redis | None = None
        self._pid: int | None = None

    def get(self) -> redis.Redis:
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with _lock:
                if self._client is None or self._pid != pid:
                    self._client, self._pid = self._build(), pid
        return self._client

    def forget(self) -> None:
        self._client = None


_resilient = _PerProcess(_build)
_fail_fast = _PerProcess(lambda: _build(fail_fast=True))


def get_redis() -> redis.Redis:
    """The process-wide client (retries with backoff: workers, reconcile, the operator's reads)."""
    return _resilient.get()


def fast_client() -> redis.Redis:
    """The fail-fast client (no retries, short timeouts); call it through best_effort()."""
    return _fail_fast.get()


def forget_clients() -> None:
    """Build the clients again at next use (settings changed: tests pointing Redis elsewhere)."""
    _resilient.forget()
    _fail_fast.forget()


def redis_skipped() -> bool:
    """Whether best_effort() would skip Redis now (it failed less than REDIS_FAIL_FAST_SECONDS ago)."""
    return time.monotonic() < _open_until


def best_effort(fn: Callable[[redis.Redis], T]) -> T:
    """fn(client) on the fail-fast client; raises RedisSkipped at once while the circuit is open, and opens
    it on any Redis error (re-raised), so the caller decides what to do without Redis."""
    global _open_until
    if redis_skipped():
        raise RedisSkipped("Redis failed moments ago; skipped")
    try:
        return fn(fast_client())
    except RedisError:
        _open_until = time.monotonic() + settings.REDIS_FAIL_FAST_SECONDS
        raise


def reset_circuit() -> None:
    global _open_until
    _open_until = 0.0
