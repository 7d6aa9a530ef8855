"""Writes for usage: one TokenUsage row per provider call that returned usage, and model prices.

A price change is always a new ModelPrice row with its own ``effective_from``; rows are never
updated or deleted, so every recorded cost can be traced to the price it was computed with. Operators
set prices (``price_set``, ``prices_load``, the admin); ``prices_sync`` adds the genai-prices data's,
never for a model an operator has priced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from aipb.exceptions import InvalidInput
from audit.models import AuditAction
from audit.records import Actor, audit_record, capped
from jobs import catalogue
from jobs.catalogue import canonical_model
from jobs.models import AIJob
from jobs.providers.base import Usage
from usage.models import ModelPrice, PriceSource, TokenUsage
from usage.pricing import (
    PRICE_FIELDS,
    PRICE_MAX,
    PRICE_QUANTUM,
    PriceAdded,
    Unrepresentable,
    cost_of,
    price_data_changes,
    price_data_timeline,
    price_in_force,
)

PRICE_PLACES = -PRICE_QUANTUM.as_tuple().exponent
# One sync at a time (two hosts starting `make run` at once): a transaction-scoped advisory lock.
SYNC_LOCK = 0x61697062_70726963  # "aipbpric"
LOAD_FIELDS = ("provider", "model", *PRICE_FIELDS, "effective_from")
LOAD_MAX_ENTRIES = 10_000


def usage_record(*, job: AIJob, attempt: int, usage: Usage, at: datetime) -> TokenUsage:
    """Called by the pipeline inside the attempt's transaction; cost fixed now, never repriced."""
    price = price_in_force(provider=job.provider, model=job.model, at=at)
    return TokenUsage.objects.create(
        owner_id=job.owner_id,
        job=job,
        attempt=attempt,
        provider=job.provider,
        model=canonical_model(job.provider, job.model),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost=cost_of(usage=usage, price=price),
        created_at=at,
    )


# --- prices ---


def price_parse(value: object, *, field: str, required: bool = True) -> Decimal | None:
    """A USD-per-million price from a Decimal, int or string; floats are refused (they are not exact)."""
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{field} is required")
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidInput(f"{field} must be a decimal number given as a string or an integer, not {value!r}")
    if not isinstance(value, (Decimal, int, str)):
        raise InvalidInput(f"{field} must be a decimal number")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{field} must be a decimal number, got {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise InvalidInput(f"{field} must be a finite number")
    if number < 0:
        raise InvalidInput(f"{field} must not be negative")
    if number > PRICE_MAX:
        raise InvalidInput(f"{field} must be at most {PRICE_MAX} USD per million tokens")
    if number != number.quantize(Decimal(1).scaleb(-PRICE_PLACES)):
        raise InvalidInput(f"{field} may have at most {PRICE_PLACES} decimal places")
    return number.quantize(Decimal(1).scaleb(-PRICE_PLACES))


def effective_from_parse(value: object, *, field: str = "effective_from") -> datetime | None:
    """None, a datetime, a date (midnight UTC), or an ISO string of either; naive datetimes are UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    elif isinstance(value, str):
        try:
            parsed_date = parse_date(value.strip())
            parsed = None if parsed_date else parse_datetime(value.strip())
        except ValueError:
            raise InvalidInput(f"{field} is not a valid date: {value[:40]!r}") from None
        if parsed_date is not None:
            return datetime.combine(parsed_date, time.min, tzinfo=UTC)
        if parsed is None:
            raise InvalidInput(f"{field} must be YYYY-MM-DD or an ISO 8601 date-time, got {value[:40]!r}")
    else:
        raise InvalidInput(f"{field} must be a date string")
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class PriceInput:
    provider: str
    model: str  # canonical
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None
    cache_write_per_million: Decimal | None
    effective_from: datetime

    def same_prices_as(self, row: ModelPrice) -> bool:
        return all(getattr(self, name) == getattr(row, name) for name in PRICE_FIELDS)


def price_validate(
    *,
    provider: str,
    model: str,
    input_per_million: object,
    output_per_million: object,
    cached_input_per_million: object = None,
    cache_write_per_million: object = None,
    effective_from: object = None,
    now: datetime | None = None,
    check_history: bool = True,
) -> PriceInput:
    """Everything a new price row must satisfy, checked before anything is written.

    ``effective_from`` defaults to now. A price may not take effect before usage already recorded
    for that model: those rows were costed with the old price and are never repriced, so a backdated
    row would make the price history disagree with the recorded costs.
    """
    if provider not in catalogue.PROVIDER_IDS:
        raise InvalidInput(f"unknown provider '{provider}'; choose one of {', '.join(catalogue.PROVIDER_IDS)}")
    try:
        info = catalogue.lookup(provider, model)
    except catalogue.CatalogueError as exc:
        raise InvalidInput(str(exc)) from None
    price = PriceInput(
        provider=provider,
        model=info.name,
        input_per_million=price_parse(input_per_million, field="input_per_million"),
        output_per_million=price_parse(output_per_million, field="output_per_million"),
        cached_input_per_million=price_parse(
            cached_input_per_million, field="cached_input_per_million", required=False
        ),
        cache_write_per_million=price_parse(cache_write_per_million, field="cache_write_per_million", required=False),
        effective_from=effective_from_parse(effective_from) or now or timezone.now(),
    )
    if check_history:
        _check_history(price)
    return price


def _check_history(price: PriceInput) -> None:
    label = f"{price.provider}/{price.model}"
    when = price.effective_from.isoformat()
    if ModelPrice.objects.filter(
        provider=price.provider, model=price.model, effective_from=price.effective_from
    ).exists():
        raise InvalidInput(f"{label} already has a price effective from {when}; prices are never overwritten")
    later = (
        TokenUsage.objects.filter(provider=price.provider, model=price.model, created_at__gte=price.effective_from)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if later is not None:
        raise InvalidInput(
            f"{label} has usage recorded at {later.isoformat()}, after {when}, costed with the price then in "
            "force; a new price can only take effect after the last recorded call (recorded usage is never repriced)"
        )


def _create(price: PriceInput) -> ModelPrice:
    try:
        with transaction.atomic():
            return ModelPrice.objects.create(
                provider=price.provider,
                model=price.model,
                input_per_million=price.input_per_million,
                output_per_million=price.output_per_million,
                cached_input_per_million=price.cached_input_per_million,
                cache_write_per_million=price.cache_write_per_million,
                effective_from=price.effective_from,
            )
    except IntegrityError:
        raise InvalidInput(
            f"{price.provider}/{price.model} already has a price effective from {price.effective_from.isoformat()}"
        ) from None


@transaction.atomic
def price_set(
    *,
    provider: str,
    model: str,
    input_per_million: object,
    output_per_million: object,
    cached_input_per_million: object = None,
    cache_write_per_million: object = None,
    effective_from: object = None,
    actor: Actor | None = None,
) -> ModelPrice:
    """A new price row (history kept). Prices are USD per million tokens; effective_from defaults to now."""
    price = price_validate(
        provider=provider,
        model=model,
        input_per_million=input_per_million,
        output_per_million=output_per_million,
        cached_input_per_million=cached_input_per_million,
        cache_write_per_million=cache_write_per_million,
        effective_from=effective_from,
    )
    row = _create(price)
    if actor is not None:
        audit_record(
            actor=actor, action=AuditAction.PRICE_SET, target_type="model_price", target_id=row.id, details=_terms(row)
        )
    return row


def _terms(row: ModelPrice) -> dict:
    return {
        "provider": row.provider,
        "model": row.model,
        "effective_from": row.effective_from,
        **{name: getattr(row, name) for name in PRICE_FIELDS},
    }


@dataclass(frozen=True)
class PricesLoaded:
    created: list[ModelPrice]
    unchanged: int  # entries identical to a row already there (a re-load is a no-op)


@transaction.atomic
def prices_load(*, data: object, actor: Actor | None = None) -> PricesLoaded:
    """Load a list of prices (the shape ``usage prices list --json`` prints), all or nothing.

    ``data`` is a list of objects, or ``{"prices": [...]}``. An entry identical to an existing row is
    skipped, so loading the same file twice changes nothing; any invalid entry rejects the whole file.
    """
    if isinstance(data, dict) and set(data) == {"prices"}:
        data = data["prices"]
    if not isinstance(data, list):
        raise InvalidInput('expected a JSON list of prices (or {"prices": [...]})')
    if not data:
        raise InvalidInput("the file holds no prices")
    if len(data) > LOAD_MAX_ENTRIES:
        raise InvalidInput(f"at most {LOAD_MAX_ENTRIES} prices per file")
    now = timezone.now()
    pending: list[PriceInput] = []
    seen: set[tuple[str, str, datetime]] = set()
    unchanged = 0
    for index, entry in enumerate(data):
        where = f"prices[{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where} must be an object")
        unknown = sorted(set(entry) - set(LOAD_FIELDS))
        if unknown:
            raise InvalidInput(f"{where} has unknown fields {', '.join(unknown)}; allowed: {', '.join(LOAD_FIELDS)}")
        for name in ("provider", "model"):
            if not isinstance(entry.get(name), str) or not entry[name]:
                raise InvalidInput(f"{where}.{name} is required and must be a string")
        try:
            price = price_validate(
                provider=entry["provider"],
                model=entry["model"],
                input_per_million=entry.get("input_per_million"),
                output_per_million=entry.get("output_per_million"),
                cached_input_per_million=entry.get("cached_input_per_million"),
                cache_write_per_million=entry.get("cache_write_per_million"),
                effective_from=entry.get("effective_from"),
                now=now,
                check_history=False,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.message}") from None
        if entry["model"] != price.model and _same_row_exists(price, model=entry["model"]):
            # a row kept under a name that is an alias now (claude-3-opus before claude-3-opus-latest)
            unchanged += 1
            continue
        key = (price.provider, price.model, price.effective_from)
        if key in seen:
            raise InvalidInput(f"{where}: {price.provider}/{price.model} from {price.effective_from.isoformat()} twice")
        seen.add(key)
        existing = ModelPrice.objects.filter(
            provider=price.provider, model=price.model, effective_from=price.effective_from
        ).first()
        if existing is not None:
            if price.same_prices_as(existing):
                unchanged += 1
                continue
            raise InvalidInput(
                f"{where}: {price.provider}/{price.model} already has a different price effective from "
                f"{price.effective_from.isoformat()}; prices are never overwritten"
            )
        try:
            _check_history(price)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.message}") from None
        pending.append(price)
    loaded = PricesLoaded(created=[_create(price) for price in pending], unchanged=unchanged)
    if actor is not None and loaded.created:
        audit_record(
            actor=actor,
            action=AuditAction.PRICES_LOAD,
            target_type="model_price",
            details={
                "created": len(loaded.created),
                "unchanged": unchanged,
                "prices": [_terms(row) for row in loaded.created[:100]],
                "price_ids": capped([row.id for row in loaded.created]),
            },
        )
    return loaded


def _same_row_exists(price: PriceInput, *, model: str) -> bool:
    row = ModelPrice.objects.filter(provider=price.provider, model=model, effective_from=price.effective_from).first()
    return row is not None and price.same_prices_as(row)


# --- the price data ---


@dataclass(frozen=True)
class PricesSynced:
    version: str
    added: list[PriceAdded]
    operator_priced: list[tuple[str, str]]  # left alone: an operator's price wins
    unpriced: list[tuple[str, str, str]]  # provider, model, why the data gives it no price here
    unchanged: int
    dry_run: bool


@transaction.atomic
def prices_sync(
    *,
    dry_run: bool = False,
    fetch: bool = True,
    now: datetime | None = None,
    price_model: type[ModelPrice] = ModelPrice,
    usage_model: type[TokenUsage] = TokenUsage,
    actor: Actor | None = None,
) -> PricesSynced:
    """Add the price data's prices for the catalogue's models as rows from each price's start, where they
    differ from the price in force (a second run adds nothing; see pricing.price_data_changes). Models an
    operator priced are left alone. ``fetch``: first fetch fresher data if AI_PRICES_AUTO_UPDATE is on
    (InvalidInput when that fails); the data migration passes no fetch and its historical models."""
    if fetch:
        try:
            catalogue.price_data_refresh()
        except catalogue.CatalogueError as exc:
            raise InvalidInput(str(exc)) from None
    now = now or timezone.now()
    version = catalogue.price_data_version()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SYNC_LOCK])
    pairs = catalogue.price_data_models()
    rows: dict[tuple[str, str], list] = {}
    providers = {info.provider for info, _ in pairs}
    for row in price_model.objects.filter(provider__in=providers).order_by("effective_from"):
        rows.setdefault((row.provider, row.model), []).append(row)
    added: list[PriceAdded] = []
    operator_priced, unpriced, unchanged = [], [], 0
    for info, data_model in pairs:
        history = rows.get((info.provider, info.name), [])
        if any(row.source == PriceSource.OPERATOR for row in history):
            operator_priced.append((info.provider, info.name))
            continue
        try:
            timeline = price_data_timeline(data_model)
        except Unrepresentable as exc:
            unpriced.append((info.provider, info.name, str(exc)))
            continue
        if not timeline:
            unpriced.append((info.provider, info.name, "the price data has no price for it"))
            continue
        last_call = (
            usage_model.objects.filter(provider=info.provider, model=info.name)
            .order_by("-created_at")
            .values_list("created_at", flat=True)
            .first()
        )
        new = price_data_changes(info.provider, info.name, timeline, history, last_call, now)
        added.extend(new)
        unchanged += not new
    if not dry_run:
        price_model.objects.bulk_create(
            [
                price_model(
                    provider=change.provider,
                    model=change.model,
                    effective_from=change.effective_from,
                    source=PriceSource.PRICE_DATA,
                    data_version=version,
                    **{name: getattr(change.terms, name) for name in PRICE_FIELDS},
                    tiers=change.terms.tiers,
                )
                for change in added
            ]
        )
        if actor is not None and added:
            audit_record(
                actor=actor,
                action=AuditAction.PRICES_SYNC,
                target_type="model_price",
                details={
                    "price_data": version,
                    "added": len(added),
                    "models": capped([f"{change.provider}/{change.model}" for change in added]),
                },
            )
    return PricesSynced(
        version=version,
        added=added,
        operator_priced=operator_priced,
        unpriced=unpriced,
        unchanged=unchanged,
        dry_run=dry_run,
    )
