"""Operators' model prices: ``price_set``, ``prices_load`` and the admin (usage rows are written by
usage.recording; the price data's prices by usage.price_sync).

A price change is always a new ModelPrice row with its own ``effective_from``; rows are never
updated or deleted, so every recorded cost can be traced to the price it was computed with. An operator's
price always wins over the price data's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from aipb.exceptions import InvalidInput
from audit.models import AuditAction
from audit.records import Actor, audit_record, capped
from jobs import catalogue
from usage.models import ModelPrice, TokenUsage
from usage.pricing import (
    PRICE_FIELDS,
    PRICE_MAX,
    PRICE_QUANTUM,
)

PRICE_PLACES = -PRICE_QUANTUM.as_tuple().exponent
LOAD_FIELDS = ("provider", "model", *PRICE_FIELDS, "effective_from")
LOAD_MAX_ENTRIES = 10_000


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
