"""Health of the targets: synthetic probes (``manage.py providers probe``) and what the providers API and
``providers status`` show of each model (circuit, recent p50 latency and error rate, last probe).

A probe is one tiny page request per target, outside any job: it records its outcome and latency for the API and
the scrape (``ai_provider_probe_success``, ``ai_provider_probe_latency_seconds``), and bills nothing (no job, no
usage row). It does not move circuits: a tiny request answering says little about a page request, and the
half-open probe of a real attempt is what closes one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from django.conf import settings
from redis.exceptions import RedisError

from jobs import catalogue
from jobs.errors import classify
from jobs.providers import get_provider, registry
from jobs.providers.base import CallContext
from jobs.routing import circuits
from jobs.routing.chains import default_chains
from jobs.routing.circuits import Target
from jobs.schema import parse_page

PROBE_PROMPT = "Health check: a one-section page titled OK."
PROBE_MAX_TOKENS = 512


@dataclass(frozen=True)
class ProbeResult:
    provider: str
    model: str
    ok: bool
    latency_ms: int
    error_type: str = ""
    error: str = ""


def probe_targets() -> list[Target]:
    """Every configured provider's default model, every target of AI_FALLBACKS, and every target called lately."""
    found = [Target(spec.id, spec.default_model) for spec in registry.PROVIDERS if registry.configured(spec.id)]
    if settings.AI_FALLBACKS:
        for (provider, model), chain in default_chains(settings.AI_FALLBACKS).items():
            found.extend(([Target(provider, model)] if model else []) + list(chain))
    found.extend(circuits.known_targets())
    unique: dict[tuple[str, str], Target] = {}
    for target in found:
        if registry.configured(target.provider):
            unique.setdefault((target.provider, catalogue.canonical_model(target.provider, target.model)), target)
    return list(unique.values())


def provider_probe(target: Target) -> ProbeResult:
    ctx = CallContext(
        job_id="probe",
        attempt=1,
        options={"max_tokens": PROBE_MAX_TOKENS},
        timeout=min(settings.AI_PROVIDER_TIMEOUT_SECONDS, 30.0),
    )
    started = time.monotonic()
    error = None
    try:
        response = get_provider(target.provider).generate(prompt=PROBE_PROMPT, model=target.model, ctx=ctx)
        parse_page(response.text)
    except Exception as exc:  # every failure is an outcome of the probe
        error = classify(exc)
    latency_ms = int((time.monotonic() - started) * 1000)
    ok = circuits.outcome_kind(error) == "ok"  # it answered (an invalid page still shows the target is up)
    circuits.probe_record(target, ok=ok, latency_ms=latency_ms, error="" if ok or error is None else error.message)
    return ProbeResult(
        provider=target.provider,
        model=target.model,
        ok=ok,
        latency_ms=latency_ms,
        error_type=error.type if error is not None else "",
        error=error.message[:300] if error is not None else "",
    )


def providers_probe() -> list[dict]:
    """Probe every target of probe_targets, one after the other."""
    return [asdict(provider_probe(target)) for target in probe_targets()]


def _when(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, tz=UTC).isoformat().replace("+00:00", "Z") if at is not None else None


def providers_health(*, full: bool) -> list[dict]:
    """catalogue.providers_status with each model's ``circuit`` and, when ``full`` (staff), ``p50_latency_ms``,
    ``error_rate`` and ``last_probe_at``. Redis is read for the targets called or probed lately only (one
    ZRANGE and one pipeline); every other model is closed with nothing recorded."""
    try:
        health = circuits.health(circuits.known_targets())
        blank = circuits.Health()
    except RedisError:  # the catalogue still answers; what Redis keeps is unknown for now
        health, blank = {}, circuits.Health(circuit="unknown")
    by_name = {(t.provider, catalogue.canonical_model(t.provider, t.model)): h for t, h in health.items()}
    out = catalogue.providers_status()
    for provider in out:
        for model in provider["models"]:
            found = by_name.get((provider["id"], model["name"]), blank)
            model["circuit"] = found.circuit
            if full:
                model["p50_latency_ms"] = found.p50_latency_ms
                model["error_rate"] = found.error_rate
                model["last_probe_at"] = _when(found.last_probe_at)
    return out


def targets_health() -> list[dict]:
    """One row per target called or probed lately, for ``providers status``."""
    known = circuits.known_targets()
    return [
        {
            "provider": target.provider,
            "model": target.model,
            "circuit": found.circuit,
            "p50_latency_ms": found.p50_latency_ms,
            "error_rate": found.error_rate,
            "last_probe_at": _when(found.last_probe_at),
            "last_probe_ok": found.probe_ok,
            "last_probe_latency_ms": found.probe_latency_ms,
        }
        for target, found in circuits.health(known).items()
    ]
