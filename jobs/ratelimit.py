"""One token bucket in Redis shared by every worker process on every host.

The whole check-and-take runs in one Lua script on Redis's own clock, so two workers can
never both spend the last token and host clocks do not matter. The bucket's time and tokens are
stored with every digit of the double (Lua's tostring keeps 14: a timestamp of 10 integer digits
to a tenth of a millisecond, which a busy bucket, written on every call, turned into tokens it
had not earned: 15 grants in 0.4996 s at 20/s with a burst of 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from aipb.redis_client import get_redis

_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1])
local ts = tonumber(data[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

_script = None


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait_seconds: float


def bucket_key(provider: str) -> str:
    scope = provider if settings.AI_RATE_LIMIT_PER_PROVIDER else "all"
    return f"aipb:ratelimit:{scope}"


def acquire(*, provider: str, rate: float | None = None, burst: float | None = None) -> Decision:
    """Take one token; when none is left say how long until one will be."""
    global _script
    rate = settings.AI_RATE_LIMIT_PER_SECOND if rate is None else rate
    if rate <= 0:
        return Decision(True, 0.0)  # 0 disables the limiter
    burst = burst or settings.AI_RATE_LIMIT_BURST or max(1.0, rate)
    client = get_redis()
    if _script is None or _script.registered_client is not client:
        _script = client.register_script(_SCRIPT)
    allowed, wait = _script(keys=[bucket_key(provider)], args=[rate, burst])
    return Decision(bool(int(allowed)), float(wait))
