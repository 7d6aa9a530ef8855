"""A circuit breaker per (provider, model) target, and each target's recent calls, in Redis: shared by every
worker process on every host.

closed → open after ``AI_CIRCUIT_FAILURE_THRESHOLD`` provider-side failures in a row within
``AI_CIRCUIT_WINDOW_SECONDS``; open → half-open once ``AI_CIRCUIT_COOLDOWN_SECONDS`` have passed, when exactly one
attempt (the probe) is let through; the probe's success closes it, its provider-side failure opens it for another
cool-down. What a call's end means for the circuit (``outcome_kind``):

- ``fail``: TIMEOUT, SERVICE_UNAVAILABLE, PROVIDER_ERROR, NETWORK_ERROR, RATE_LIMIT without Retry-After;
- ``ok``: an answer (a valid page, or output that failed validation, or a content or length refusal: the provider
  is up, the model answered);
- ``neutral``: says nothing about the provider's health (RATE_LIMIT with a Retry-After, AUTH_ERROR, MODEL_ERROR,
  INVALID_REQUEST, UNKNOWN): counted neither way; a probe ending so frees the probe for the next attempt.

Both decisions are one Lua script each on Redis's own clock (as jobs.ratelimit), so two workers never both take
the half-open probe and host clocks do not matter. Keys are bounded by the targets calls went to: a circuit's hash
exists only while it counts failures or is open, the recent-calls list and the index of targets expire.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from redis.exceptions import RedisError

from aipb.redis_client import get_redis
from jobs.catalogue import canonical_model
from jobs.errors import Classified, ErrorType

log = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # ai_provider_circuit_state
INDEX_KEY = "aipb:circuit:targets"  # sorted set: "provider/model" -> when a call or probe last reported
INDEX_TTL_SECONDS = 86_400  # a target nobody called for a day leaves the index (and the scrape)
RECENT_CALLS = 50  # the recent calls kept per target: p50 latency and error rate are over these
RECENT_TTL_SECONDS = 3_600
# While a probe is out, the others waiting on a half-open circuit look again this soon (the probe may close it).
HALF_OPEN_RECHECK_SECONDS = 2.0

# Provider-side failures: they open a circuit (RATE_LIMIT too when it came without a Retry-After), and after them a
# job's next attempt goes to the next target of its chain (jobs.routing.chains).
FAILURES = frozenset(
    {ErrorType.TIMEOUT, ErrorType.SERVICE_UNAVAILABLE, ErrorType.PROVIDER_ERROR, ErrorType.NETWORK_ERROR}
)
_ANSWERED = frozenset({ErrorType.VALIDATION_ERROR, ErrorType.CONTEXT_LENGTH, ErrorType.CONTENT_POLICY})


class Target(NamedTuple):
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


def outcome_kind(error: Classified | None) -> str:
    if error is None or error.type in _ANSWERED:
        return "ok"
    if error.type in FAILURES or (error.type == ErrorType.RATE_LIMIT and not error.retry_after):
        return "fail"
    return "neutral"


def _id(target: Target) -> str:
    return f"{target.provider}/{canonical_model(target.provider, target.model)}"


def _circuit_key(target: Target) -> str:
    return f"aipb:circuit:{_id(target)}"


def _recent_key(target: Target) -> str:
    return f"aipb:circuit:recent:{_id(target)}"


def probe_key(target: Target) -> str:
    return f"aipb:probe:{_id(target)}"


def enabled() -> bool:
    return settings.AI_CIRCUIT_FAILURE_THRESHOLD > 0


# KEYS: the candidates' circuit hashes, in the order they are preferred. ARGV: probe lease, half-open recheck.
# Returns {index of the first candidate that may be called (1-based; 0: none), 1 if that call is the probe,
# seconds until one may be}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
local wait = nil
for i, key in ipairs(KEYS) do
  local d = redis.call('HMGET', key, 'state', 'until', 'probe')
  local state = d[1]
  if not state or state == 'closed' then
    return {i, 0, '0'}
  end
  local w
  local opened_until = tonumber(d[2]) or 0
  if state == 'open' and now < opened_until then
    w = opened_until - now
  else
    local probe = tonumber(d[3]) or 0
    if probe <= now then
      redis.call('HSET', key, 'state', 'half_open', 'probe', tostring(now + lease))
      return {i, 1, '0'}
    end
    w = math.min(probe - now, tonumber(ARGV[2]))
  end
  if wait == nil or w < wait then
    wait = w
  end
end
return {0, 0, tostring(wait or 0)}
"""

# KEYS: circuit hash, recent-calls list, index. ARGV: kind (ok|fail|neutral), latency ms ('' for none), threshold
# (0: no circuit), window, cool-down, the target's index member, 1 if this call was the probe, recent size,
# recent TTL, index TTL. Returns {state before, state after}.
_REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local kind = ARGV[1]
if ARGV[2] ~= '' then
  local mark = 'o'
  if kind == 'fail' then mark = 'e' end
  redis.call('LPUSH', KEYS[2], mark .. ':' .. ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[8]) - 1)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[9]))
end
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[10]))
local threshold = tonumber(ARGV[3])
if threshold <= 0 then
  return {'closed', 'closed'}
end
local d = redis.call('HMGET', KEYS[1], 'state', 'failures', 'since')
local state = d[1] or 'closed'
local probe = ARGV[7] == '1'
if state == 'open' or (state == 'half_open' and not probe) then
  -- a call that started before the circuit opened, or while another call is the probe: the probe decides
  return {state, state}
end
local cooldown = tonumber(ARGV[5])
if kind == 'ok' then
  redis.call('DEL', KEYS[1])
  return {state, 'closed'}
end
if kind == 'neutral' then
  if state == 'half_open' then
    redis.call('HSET', KEYS[1], 'probe', '0')
  end
  return {state, state}
end
if state == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', tostring(now + cooldown), 'probe', '0')
  redis.call('EXPIRE', KEYS[1], math.ceil(cooldown) + 3600)
  return {state, 'open'}
end
local window = tonumber(ARGV[4])
local failures = tonumber(d[2]) or 0
local since = tonumber(d[3]) or now
if now - since > window then
  failures = 0
  since = now
end
failures = failures + 1
if failures >= threshold then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', tostring(now + cooldown), 'probe', '0',
             'failures', failures, 'since', tostring(since))
  redis.call('EXPIRE', KEYS[1], math.ceil(cooldown) + 3600)
  return {state, 'open'}
end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', failures, 'since', tostring(since))
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return {state, 'closed'}
"""

_scripts: dict[str, object] = {}


def _script(source: str):
    client = get_redis()
    script = _scripts.get(source)
    if script is None or script.registered_client is not client:
        script = _scripts[source] = client.register_script(source)
    return script


@dataclass(frozen=True)
class Acquired:
    index: int | None  # of the candidate that may be called; None: every candidate's circuit is open
    probe: bool = False  # that call is its circuit's half-open probe
    wait_seconds: float = 0.0  # with no candidate: until the soonest may be called


def acquire(candidates: Sequence[Target]) -> Acquired:
    """The first candidate whose circuit lets a call through (taking the half-open probe where it is one's turn).

    Redis unreachable: the first candidate, unguarded (the circuits are a safeguard; the job goes on)."""
    if not candidates:
        return Acquired(None)
    if not enabled():
        return Acquired(0)
    lease = settings.AI_PROVIDER_TIMEOUT_SECONDS + 5  # a probe cannot take longer; one that died frees it then
    try:
        index, probe, wait = _script(_ACQUIRE)(
            keys=[_circuit_key(target) for target in candidates], args=[lease, HALF_OPEN_RECHECK_SECONDS]
        )
    except RedisError as exc:
        log.warning("circuits unreadable (%s): calling %s unguarded", exc, candidates[0])
        return Acquired(0)
    index = int(index)
    return Acquired(index - 1 if index else None, probe=bool(int(probe)), wait_seconds=float(wait))


def report(target: Target, *, error: Classified | None, latency_ms: int | None, probe: bool = False) -> str | None:
    """A call to ``target`` ended: count it in the target's circuit and recent calls. Returns the circuit's new
    state when this call changed it (``open``, ``closed``), else None."""
    kind = outcome_kind(error)
    try:
        before, after = _script(_REPORT)(
            keys=[_circuit_key(target), _recent_key(target), INDEX_KEY],
            args=[
                kind,
                "" if latency_ms is None or kind == "neutral" else int(latency_ms),
                settings.AI_CIRCUIT_FAILURE_THRESHOLD,
                settings.AI_CIRCUIT_WINDOW_SECONDS,
                settings.AI_CIRCUIT_COOLDOWN_SECONDS,
                _id(target),
                1 if probe else 0,
                RECENT_CALLS,
                RECENT_TTL_SECONDS,
                INDEX_TTL_SECONDS,
            ],
        )
    except RedisError as exc:
        log.warning("circuit of %s not updated (%s)", target, exc)
        return None
    before, after = _text(before), _text(after)
    if before == after:
        return None
    level = logging.WARNING if after == OPEN else logging.INFO
    log.log(level, "circuit of %s %s (was %s)", target, after, before)
    return after


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- reading: routing by latency, the providers API, the scrape ---


@dataclass(frozen=True)
class Health:
    circuit: str = CLOSED
    p50_latency_ms: int | None = None  # of the recent calls that were answered
    error_rate: float | None = None  # provider-side failures among the recent calls
    last_probe_at: float | None = None  # Unix time
    probe_ok: bool | None = None
    probe_latency_ms: int | None = None


def _circuit_state(fields: list, now: float) -> str:
    state, opened_until = (_text(v) if v is not None else None for v in fields)
    if state in (None, CLOSED):
        return CLOSED
    if state == OPEN and now < float(opened_until or 0):
        return OPEN
    return HALF_OPEN  # open past its cool-down: the next attempt is the probe


def _recent(values: list) -> tuple[int | None, float | None]:
    calls = [_text(v).split(":", 1) for v in values]
    answered = [int(ms) for mark, ms in calls if mark == "o"]
    p50 = int(statistics.median(answered)) if answered else None
    rate = round(sum(1 for mark, _ in calls if mark == "e") / len(calls), 4) if calls else None
    return p50, rate


def p50_latencies(targets: Sequence[Target]) -> list[int | None]:
    """Each target's recent p50 latency (None: no recent answered call), in one pipelined round trip."""
    with get_redis().pipeline(transaction=False) as pipe:
        for target in targets:
            pipe.lrange(_recent_key(target), 0, -1)
        return [_recent(values)[0] for values in pipe.execute()]


def known_targets() -> list[Target]:
    """Every target a call or a probe reported on within INDEX_TTL_SECONDS."""
    members = get_redis().zrangebyscore(INDEX_KEY, time.time() - INDEX_TTL_SECONDS, "+inf")
    return [Target(*_text(member).split("/", 1)) for member in members]


def health(targets: Sequence[Target]) -> dict[Target, Health]:
    """Circuit, recent latency and error rate, and last probe of each target: one pipelined round trip."""
    now = time.time()
    with get_redis().pipeline(transaction=False) as pipe:
        for target in targets:
            pipe.hmget(_circuit_key(target), "state", "until")
            pipe.lrange(_recent_key(target), 0, -1)
            pipe.hmget(probe_key(target), "at", "ok", "latency_ms")
        replies = pipe.execute()
    out = {}
    for i, target in enumerate(targets):
        circuit, recent, probe = replies[3 * i : 3 * i + 3]
        p50, rate = _recent(recent)
        at, ok, ms = probe
        out[target] = Health(
            circuit=_circuit_state(circuit, now),
            p50_latency_ms=p50,
            error_rate=rate,
            last_probe_at=float(at) if at is not None else None,
            probe_ok=_text(ok) == "1" if ok is not None else None,
            probe_latency_ms=int(ms) if ms is not None else None,
        )
    return out


def probe_record(target: Target, *, ok: bool, latency_ms: int, error: str = "") -> None:
    """A health probe's outcome (jobs.routing.probes): kept for the providers API and the scrape, not counted in
    the circuit (a tiny request answering says little about a page request)."""
    now = time.time()
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.hset(probe_key(target), mapping={"at": now, "ok": int(ok), "latency_ms": latency_ms, "error": error[:300]})
        pipe.expire(probe_key(target), INDEX_TTL_SECONDS)
        pipe.zadd(INDEX_KEY, {_id(target): now})
        pipe.execute()
