"""Which target an attempt goes to: the job's chain (its own provider/model, then its fallbacks or the default chain
of ``AI_FALLBACKS``), ordered by its routing policy, skipping targets with no key configured or an open circuit.

- ``ordered``: the chain as given;
- ``cheapest``: by the price in force (usage.pricing) of a typical page request, unpriced targets last;
- ``fastest``: by each target's recent p50 latency (jobs.routing.circuits, kept by the workers), unknown ones last.

After an attempt that failed provider-side (circuits.FAILURES, and any RATE_LIMIT) the next attempt starts at the
target after the one that failed, so a job moves along its chain instead of retrying the target that just failed.
When every target's circuit is open the pipeline hands the delivery back to wait, its attempt budget untouched.

``AI_FALLBACKS`` holds default chains, ``;``-separated, each ``SOURCE=TARGET[,TARGET...]``: a source is
``provider:model`` (that model, any of its names) or ``provider`` (any model of it; a model's own entry wins), a
target is ``provider:model``. A job's own ``fallbacks`` (even ``[]``) replace the default chain.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from redis.exceptions import RedisError

from aipb.exceptions import InvalidInput
from jobs import catalogue
from jobs.errors import ErrorType
from jobs.models import AIJob
from jobs.providers import registry
from jobs.providers.base import Usage
from jobs.routing import circuits
from jobs.routing.circuits import Target
from usage.pricing import cost_of, price_in_force

log = logging.getLogger(__name__)

POLICIES = ("ordered", "cheapest", "fastest")
MAX_FALLBACKS = 5
# A page request's usual size (the prompt with the page schema in, a page out): what `cheapest` compares prices on.
TYPICAL_PAGE_USAGE = Usage(prompt_tokens=1_500, completion_tokens=1_500)
PRICE_CACHE_SECONDS = 60.0  # prices change by operator edits or a sync, not between two attempts
# The errors after which the next attempt starts at the next target (the row keeps no Retry-After, so every
# RATE_LIMIT counts: a target that asked us to slow down is worth stepping away from too).
_MOVE_ON = circuits.FAILURES | {ErrorType.RATE_LIMIT}


def _same(a: Target, b: Target) -> bool:
    return a.provider == b.provider and catalogue.canonical_model(a.provider, a.model) == catalogue.canonical_model(
        b.provider, b.model
    )


# --- input ---


def policy_clean(value: object) -> str:
    if value is None:
        return settings.AI_ROUTING_POLICY
    if value not in POLICIES:
        raise InvalidInput(f"routing_policy must be one of {', '.join(POLICIES)}")
    return str(value)


def fallbacks_clean(value: object, *, provider: str, model: str) -> list[dict] | None:
    """A job's fallbacks, checked like its own provider and model, or InvalidInput with a reason fit for a 400.
    None: the default chain applies."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("fallbacks must be a list of {provider, model} objects")
    if len(value) > MAX_FALLBACKS:
        raise InvalidInput(f"fallbacks may name at most {MAX_FALLBACKS} targets")
    chain = [Target(provider, model)]
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or set(item) != {"provider", "model"}
            or not all(isinstance(v, str) for v in item.values())
        ):
            raise InvalidInput(f"fallbacks[{i}] must be an object with exactly a provider and a model (strings)")
        target = Target(item["provider"], item["model"])
        try:
            catalogue.lookup(target.provider, target.model)
        except catalogue.CatalogueError as exc:
            raise InvalidInput(f"fallbacks[{i}]: {exc}") from None
        if not registry.configured(target.provider):
            raise InvalidInput(f"fallbacks[{i}]: provider '{target.provider}' is not configured on this server")
        if any(_same(target, earlier) for earlier in chain):
            raise InvalidInput(f"fallbacks[{i}]: {target} is already in the chain")
        chain.append(target)
    return [{"provider": t.provider, "model": t.model} for t in chain[1:]]


# --- the default chains ---


@lru_cache(maxsize=4)
def default_chains(raw: str) -> dict[tuple[str, str | None], tuple[Target, ...]]:
    """AI_FALLBACKS parsed: (provider, canonical model or None for the whole provider) -> its fallbacks.
    ImproperlyConfigured names what is wrong."""
    chains: dict[tuple[str, str | None], tuple[Target, ...]] = {}
    for entry in filter(None, (part.strip() for part in raw.split(";"))):
        source, sep, targets = entry.partition("=")
        if not sep or not targets.strip():
            raise ImproperlyConfigured(f"AI_FALLBACKS: {entry!r} is not SOURCE=TARGET[,TARGET...]")
        provider, _, model = source.strip().partition(":")
        if model:
            key = (provider, _checked(provider, model, entry).name)
        else:
            if provider not in registry.PROVIDER_IDS:
                raise ImproperlyConfigured(f"AI_FALLBACKS: unknown provider {provider!r} in {entry!r}")
            key = (provider, None)
        chain = []
        for text in filter(None, (t.strip() for t in targets.split(","))):
            target_provider, colon, target_model = text.partition(":")
            if not colon or not target_model:
                raise ImproperlyConfigured(f"AI_FALLBACKS: target {text!r} in {entry!r} is not provider:model")
            _checked(target_provider, target_model, entry)
            chain.append(Target(target_provider, target_model))
        chains[key] = tuple(chain)
    return chains


def _checked(provider: str, model: str, entry: str) -> catalogue.ModelInfo:
    try:
        return catalogue.lookup(provider, model)
    except catalogue.CatalogueError as exc:
        raise ImproperlyConfigured(f"AI_FALLBACKS: {entry!r}: {exc}") from None


def chain_of(job: AIJob) -> list[Target]:
    """The job's own target, then its fallbacks (or the default chain), each once."""
    primary = Target(job.provider, job.model)
    if job.fallbacks is not None:
        rest = [Target(item["provider"], item["model"]) for item in job.fallbacks]
    else:
        try:
            chains = default_chains(settings.AI_FALLBACKS) if settings.AI_FALLBACKS else {}
        except ImproperlyConfigured as exc:
            # a job must not hang on the operator's typo: it runs on its own target (`providers probe` says why)
            log.error("%s: routing without the default chains", exc)
            chains = {}
        rest = chains.get((job.provider, catalogue.canonical_model(job.provider, job.model))) or chains.get(
            (job.provider, None), ()
        )
    chain = [primary]
    for target in rest:
        if not any(_same(target, earlier) for earlier in chain):
            chain.append(target)
    return chain


# --- routing one attempt ---


@dataclass(frozen=True)
class Route:
    target: Target | None  # None: every target's circuit is open; wait
    primary: Target
    probe: bool = False  # the call is its target's half-open probe
    wait_seconds: float = 0.0

    @property
    def fallback(self) -> bool:
        return self.target is not None and not _same(self.target, self.primary)


def route_attempt(*, job: AIJob) -> Route:
    """The target this attempt of ``job`` calls. One Redis round trip (the circuits; `fastest` reads latencies in
    one more), none for a job whose chain is its own target alone while circuits are off."""
    chain = chain_of(job)
    primary = chain[0]
    candidates = [target for target in chain if registry.configured(target.provider)] or [primary]
    if len(candidates) > 1:
        candidates = _by_policy(candidates, job.routing_policy)
        candidates = _after_failure(candidates, job)
    acquired = circuits.acquire(candidates)
    if acquired.index is None:
        return Route(None, primary, wait_seconds=acquired.wait_seconds)
    return Route(candidates[acquired.index], primary, probe=acquired.probe)


def attempt_report(route: Route, *, error, latency_ms: int | None) -> None:
    """The routed call ended: its target's circuit and recent calls learn how."""
    if route.target is not None:
        circuits.report(route.target, error=error, latency_ms=latency_ms, probe=route.probe)


def _after_failure(candidates: list[Target], job: AIJob) -> list[Target]:
    if job.error_type not in _MOVE_ON or not job.served_provider:
        return candidates
    failed = Target(job.served_provider, job.served_model)
    for i, target in enumerate(candidates):
        if _same(target, failed):
            return candidates[i + 1 :] + candidates[: i + 1]
    return candidates


def _by_policy(candidates: list[Target], policy: str) -> list[Target]:
    if policy == "cheapest":
        costs = [_typical_cost(target) for target in candidates]
        keyed = [(cost is None, cost or Decimal(0), i) for i, cost in enumerate(costs)]
    elif policy == "fastest":
        try:
            latencies = circuits.p50_latencies(candidates)
        except RedisError as exc:
            log.warning("recent latencies unreadable (%s): routing in chain order", exc)
            return candidates
        keyed = [(ms is None, ms or 0, i) for i, ms in enumerate(latencies)]
    else:
        return candidates
    return [candidates[i] for *_, i in sorted(keyed)]


_prices: dict[Target, tuple[float, Decimal | None]] = {}


def _typical_cost(target: Target) -> Decimal | None:
    """A typical page request's cost at ``target``'s price in force (None: unpriced), cached per process."""
    now = time.monotonic()
    cached = _prices.get(target)
    if cached is not None and cached[0] > now:
        return cached[1]
    price = price_in_force(provider=target.provider, model=target.model, at=timezone.now())
    cost = cost_of(usage=TYPICAL_PAGE_USAGE, price=price) if price is not None else None
    _prices[target] = (now + PRICE_CACHE_SECONDS, cost)
    return cost


def prices_forget() -> None:
    """Drop the cached prices (tests, after prices change)."""
    _prices.clear()
