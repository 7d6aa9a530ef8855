"""The simulated provider: configurable latency and injected faults, for drills, tests and benchmarks.

Behaviour comes from the job's ``options.simulate`` (validated at submit by
``validate_simulate_options``). It fails the job's first ``fail_attempts`` attempts —
counted over the job's whole life — with ``error``, then answers with a valid page.
Like a real model, ``invalid_json`` and ``invalid_page`` answers carry usage (billed);
HTTP-style errors and timeouts carry none.

The outage switch (``outage_set``, ``manage.py providers outage simulated sim-small --seconds 60``) takes one model
down for every worker on every host: a key in Redis with the outage's expiry, during which each call to that model
fails like a provider answering 503, whatever the job's options say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time

from redis.exceptions import RedisError

from aipb.redis_client import best_effort, get_redis
from jobs.providers.base import CallContext, Provider, ProviderError, ProviderResponse, Usage
from jobs.providers.local import LocalProvider

SIMULATED_ERRORS = (
    "rate_limit",
    "timeout",
    "unavailable",
    "server_error",
    "network",
    "invalid_json",
    "invalid_page",
    "auth",
    "model_not_found",
)
_INT_FIELDS = {
    "latency_ms": 600_000,
    "fail_attempts": 1_000,
    "retry_after": 86_400,
    "prompt_tokens": 10_000_000,
    "completion_tokens": 10_000_000,
}


def validate_simulate_options(value: object) -> dict:
    """Return the cleaned ``simulate`` options or raise ValueError with a reason fit for a 400."""
    if not isinstance(value, dict):
        raise ValueError("options.simulate must be an object")
    unknown = sorted(set(value) - set(_INT_FIELDS) - {"error"})
    if unknown:
        raise ValueError(f"options.simulate has unknown fields: {', '.join(unknown)}")
    cleaned: dict = {}
    for key, maximum in _INT_FIELDS.items():
        if key in value:
            item = value[key]
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= maximum:
                raise ValueError(f"options.simulate.{key} must be an integer from 0 to {maximum}")
            cleaned[key] = item
    if "error" in value:
        if value["error"] not in SIMULATED_ERRORS:
            raise ValueError(f"options.simulate.error must be one of {', '.join(SIMULATED_ERRORS)}")
        cleaned["error"] = value["error"]
    if cleaned.get("fail_attempts") and "error" not in cleaned:
        raise ValueError("options.simulate.fail_attempts needs options.simulate.error")
    return cleaned


logger = logging.getLogger(__name__)

OUTAGE_MAX_SECONDS = 86_400
# How long a process trusts what it last read of a model's outage switch: one Redis read per model per second,
# not per call (the benchmarks run on this provider); a switch flipped shows within this long.
OUTAGE_RECHECK_SECONDS = 1.0
_outage_seen: dict[str, tuple[float, bool]] = {}
_outage_lock = threading.Lock()


def _outage_key(model: str) -> str:
    return f"aipb:simulated:outage:{model}"


def outage_set(*, model: str, seconds: int) -> None:
    get_redis().set(_outage_key(model), "1", ex=seconds)
    _outage_seen.pop(model, None)


def outage_clear(*, model: str) -> bool:
    """End the model's outage; False when none was on."""
    _outage_seen.pop(model, None)
    return bool(get_redis().delete(_outage_key(model)))


def outage_remaining(*, model: str) -> int | None:
    """Seconds the model's outage has left, None when there is none."""
    ttl = get_redis().ttl(_outage_key(model))
    return ttl if ttl is not None and ttl >= 0 else None


def _in_outage(model: str) -> bool:
    """Whether the model's outage switch is on. Without Redis the switch reads as it last did (off when never
    read): the switch is a drill's tool, and a Redis outage must not fail the call it rides on (an attempt's
    error that is not the provider's own is not retryable, so the job would die of it)."""
    now = time.monotonic()
    seen = _outage_seen.get(model)
    if seen is not None and seen[0] > now:
        return seen[1]
    try:
        down = bool(best_effort(lambda client: client.exists(_outage_key(model))))
    except RedisError as exc:
        down = seen[1] if seen is not None else False
        logger.warning("simulated: outage switch of %s unread (%s); taken as %s", model, exc, "on" if down else "off")
    with _outage_lock:
        _outage_seen[model] = (now + OUTAGE_RECHECK_SECONDS, down)
    return down


class SimulatedProvider(Provider):
    id = "simulated"

    def __init__(self) -> None:
        self._local = LocalProvider()

    def generate(self, *, prompt: str, model: str, ctx: CallContext) -> ProviderResponse:
        sim = ctx.options.get("simulate") or {}
        latency = sim.get("latency_ms", 0) / 1000
        failing = ctx.attempt <= sim.get("fail_attempts", 0)
        error = sim.get("error") if failing else None
        request_id = f"sim-{hashlib.sha256(f'{ctx.job_id}:{ctx.attempt}'.encode()).hexdigest()[:16]}"
        if _in_outage(model):
            raise ProviderError(
                "simulated: service unavailable (outage switch)", provider=self.id, status=503, request_id=request_id
            )

        if error == "timeout" or latency > ctx.timeout:
            # a provider that never answers, or answers after our timeout: we give up at the timeout, as the
            # SDKs do (a thread of the threaded worker cannot be interrupted: the timeout is what bounds it)
            time.sleep(min(ctx.timeout, latency) if latency else 0)
            raise ProviderError("simulated: request timed out", provider=self.id, transport="timeout")
        if latency:
            time.sleep(latency)
        if error is not None and error not in ("invalid_json", "invalid_page"):
            raise self._http_error(error, sim, request_id)

        if error == "invalid_json":
            text = '{"title": "truncated page", "sections": ['
        elif error == "invalid_page":
            text = json.dumps({"title": "", "sections": []})
        else:
            text = self._local.generate(prompt=prompt, model="local-page", ctx=ctx).text
        usage = Usage(
            prompt_tokens=sim.get("prompt_tokens", math.ceil(len(prompt) / 4) + 50),
            completion_tokens=sim.get("completion_tokens", math.ceil(len(text) / 4)),
        )
        return ProviderResponse(text=text, usage=usage, request_id=request_id)

    def _http_error(self, error: str, sim: dict, request_id: str) -> ProviderError:
        retry_after = float(sim["retry_after"]) if "retry_after" in sim else None
        table = {
            "rate_limit": (429, "rate_limit_exceeded", "simulated: rate limit reached"),
            "unavailable": (503, None, "simulated: service unavailable"),
            "server_error": (500, None, "simulated: internal server error"),
            "auth": (401, "invalid_api_key", "simulated: invalid API key"),
            "model_not_found": (404, "model_not_found", "simulated: model does not exist"),
        }
        if error == "network":
            return ProviderError("simulated: connection reset by peer", provider=self.id, transport="connection")
        status, code, message = table[error]
        return ProviderError(
            message,
            provider=self.id,
            status=status,
            code=code,
            retry_after=retry_after if status in (429, 503) else None,
            request_id=request_id,
        )
