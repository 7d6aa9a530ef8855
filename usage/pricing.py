"""Prices in force, the cost of one provider call in Decimal USD, and prices read from the price data.

Costs are computed the way the genai-prices package computes them for the same usage: cache reads and
cache writes are parts of the prompt with their own rates (the input rate where the model has none),
reasoning tokens are part of the completion, and a tiered rate applies to all of a call's tokens of
its kind once the prompt is over the tier's start. ``price_data_timeline`` converts the data's prices
into our rows and refuses any it cannot reproduce to the stored precision.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.db import connection
from genai_prices import types as price_types

from aipb import prepared
from aipb.rows import ModelRows
from jobs import catalogue
from jobs.catalogue import canonical_model
from jobs.providers.base import Usage
from usage.models import ModelPrice, PriceSource

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000000001")  # TokenUsage.cost: DECIMAL(18, 9)
PRICE_QUANTUM = Decimal("0.000001")  # ModelPrice prices: DECIMAL(12, 6)
PRICE_MAX = Decimal("999999.999999")
# A price the data gives no start date for: dated before any usage this service has recorded.
PRICE_DATA_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
# The data's price keys for what a call here reports, and the ModelPrice field each fills. The data
# prices other units too (audio, images, 1h cache writes, web searches); a call here reports none of
# them, so they add nothing, which the probe in price_data_timeline confirms for every price imported.
DATA_KEYS = {
    "input_mtok": "input_per_million",
    "output_mtok": "output_per_million",
    "cache_read_mtok": "cached_input_per_million",
    "cache_write_mtok": "cache_write_per_million",
}
PRICE_FIELDS = tuple(DATA_KEYS.values())
_price_rows = ModelRows(ModelPrice)


def price_in_force(*, provider: str, model: str, at: datetime) -> ModelPrice | None:
    """The newest price effective at ``at``; aliases share their canonical model's price. An operator's
    price wins over the price data's from the moment it takes effect, whatever the data schedules later."""
    return price_seen(provider=provider, model=model, at=at).price


@dataclass(frozen=True)
class PriceSeen:
    """The price in force as one statement read it: the row (None: unpriced) and its version, a digest of all its
    columns, which any change to the row changes, so a later statement can check it still holds (usage.recording)."""

    price: ModelPrice | None
    version: str | None = None


def price_seen(*, provider: str, model: str, at: datetime) -> PriceSeen:
    """``price_in_force`` with the row's version. One statement written once per process (the ORM's query, with
    its ordering expression, cost more CPU to build than the rest of the attempt's bookkeeping)."""
    with prepared.cursor() as cursor:
        cursor.execute(
            f"SELECT {_price_rows.columns('p')}, p.version FROM ({price_in_force_sql()}) AS p",
            price_params(provider=provider, model=model, at=at),
        )
        row = cursor.fetchone()
    return PriceSeen(None) if row is None else PriceSeen(_price_rows.from_row(row[:-1]), row[-1])


@functools.cache
def price_in_force_sql() -> str:
    """The price in force as a one-row (or empty) relation: the row's columns and ``version``; parameters
    ``price_params``'."""
    quote = connection.ops.quote_name
    return (
        f"SELECT {_price_rows.columns()}, md5(CAST(ROW({_price_rows.columns()}) AS text)) AS version"
        f" FROM {quote(ModelPrice._meta.db_table)}"
        " WHERE provider = %(price_provider)s AND model = %(price_model)s AND effective_from <= %(price_at)s"
        " ORDER BY (source <> %(price_operator)s), effective_from DESC LIMIT 1"  # false (the operator's) first
    )


def price_params(*, provider: str, model: str, at: datetime) -> dict[str, object]:
    return {
        "price_provider": provider,
        "price_model": canonical_model(provider, model),
        "price_at": at,
        "price_operator": PriceSource.OPERATOR,
    }


def _rate(price: ModelPrice, name: str, prompt_tokens: int) -> Decimal | None:
    rate = getattr(price, name)
    for start, tier_rate in (price.tiers or {}).get(name, ()):
        if prompt_tokens > start:  # ascending: the highest tier passed wins
            rate = Decimal(tier_rate)
    return rate


def cost_of(*, usage: Usage, price: ModelPrice | None) -> Decimal | None:
    """None when unpriced: reports count it as unpriced, never as zero."""
    if price is None:
        return None
    prompt = usage.prompt_tokens
    cached = min(usage.cached_tokens, prompt)
    cache_write = min(usage.cache_write_tokens, prompt - cached)
    fresh_input = prompt - cached - cache_write
    input_rate = _rate(price, "input_per_million", prompt)
    cached_rate = _rate(price, "cached_input_per_million", prompt)
    write_rate = _rate(price, "cache_write_per_million", prompt)
    total = (
        fresh_input * input_rate
        + cached * (input_rate if cached_rate is None else cached_rate)
        + cache_write * (input_rate if write_rate is None else write_rate)
        + usage.completion_tokens * _rate(price, "output_per_million", prompt)
    ) / MILLION
    return total.quantize(COST_QUANTUM)


# --- the price data ---


@dataclass(frozen=True)
class PriceTerms:
    """One price as a ModelPrice row stores it."""

    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None
    cache_write_per_million: Decimal | None = None
    tiers: dict = field(default_factory=dict)

    @classmethod
    def of(cls, row: ModelPrice) -> PriceTerms:
        return cls(**{name: getattr(row, name) for name in PRICE_FIELDS}, tiers=row.tiers or {})

    def same_as(self, other: PriceTerms) -> bool:
        return all(getattr(self, name) == getattr(other, name) for name in PRICE_FIELDS) and _tiers(
            self.tiers
        ) == _tiers(other.tiers)

    def as_row(self) -> ModelPrice:
        return ModelPrice(**{name: getattr(self, name) for name in PRICE_FIELDS}, tiers=self.tiers)

    def as_dict(self) -> dict:
        out = {name: None if getattr(self, name) is None else str(getattr(self, name)) for name in PRICE_FIELDS}
        return {**out, "tiers": self.tiers}


def _tiers(tiers: dict) -> dict:
    return {name: [(int(start), Decimal(rate)) for start, rate in steps] for name, steps in (tiers or {}).items()}


class Unrepresentable(Exception):
    """A price in the data that our rows cannot reproduce exactly; the model stays unpriced here."""


def price_data_timeline(model: price_types.ModelInfo) -> list[tuple[datetime, PriceTerms]]:
    """The data's prices for one model as dated rows, ascending: one per start date on which its standard
    price changes. Empty when the data has no price for it. Raises Unrepresentable."""
    entries = model.prices if isinstance(model.prices, list) else []
    starts = set()
    for entry in entries:
        if isinstance(entry.constraint, price_types.StartDateConstraint):
            starts.add(datetime.combine(entry.constraint.start_date, time.min, tzinfo=UTC))
        elif entry.constraint is not None:
            raise Unrepresentable(f"prices by {type(entry.constraint).__name__}")
    first = min([PRICE_DATA_EPOCH, *starts])
    prices: list[tuple[datetime, PriceTerms]] = []
    for start in sorted({first, *starts}):
        # The package's own resolution of which of its prices applies on that date.
        terms = _terms(model.get_prices(start))
        if terms is None:
            continue
        if not prices or not prices[-1][1].same_as(terms):
            prices.append((start, terms))
    return prices


def _terms(data_price: price_types.ModelPrice) -> PriceTerms | None:
    values: dict[str, Decimal | None] = {}
    tiers: dict[str, list] = {}
    for key, name in DATA_KEYS.items():
        value = getattr(data_price, key)
        if isinstance(value, price_types.TieredPrices):
            tiers[name] = [[tier.start, str(_stored(tier.price, key))] for tier in sorted(value.tiers, key=_start)]
            value = value.base
        values[name] = None if value is None else _stored(value, key)
    if all(value is None for value in vars(data_price).values()):
        return None  # the data lists the model without a price
    terms = PriceTerms(
        input_per_million=values["input_per_million"] or Decimal(0),
        output_per_million=values["output_per_million"] or Decimal(0),
        cached_input_per_million=values["cached_input_per_million"],
        cache_write_per_million=values["cache_write_per_million"],
        tiers=tiers,
    )
    _probe(data_price, terms)
    return terms


def _start(tier: price_types.Tier) -> int:
    return tier.start


def _stored(value: Decimal, key: str) -> Decimal:
    if value != value.quantize(PRICE_QUANTUM) or not 0 <= value <= PRICE_MAX:
        raise Unrepresentable(f"{key} {value} does not fit DECIMAL(12, 6)")
    return value


def _probe(data_price: price_types.ModelPrice, terms: PriceTerms) -> None:
    """Our cost must equal the package's, to the stored precision, for calls below and above every tier."""
    row = terms.as_row()
    tops = [start for steps in terms.tiers.values() for start, _ in steps]
    for prompt in (1_000, *(start + 1_000 for start in tops)):
        for cached, write, completion in ((0, 0, 700), (prompt // 4, prompt // 8, 300)):
            ours = cost_of(
                usage=Usage(
                    prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, cache_write_tokens=write
                ),
                price=row,
            )
            theirs = data_price.calc_price(
                price_types.Usage(
                    input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached, cache_write_tokens=write
                )
            )["total_price"].quantize(COST_QUANTUM)
            if ours != theirs:
                raise Unrepresentable(f"prices units a call here does not report ({data_price})")


@dataclass(frozen=True)
class PriceAdded:
    provider: str
    model: str
    effective_from: datetime
    terms: PriceTerms
    previous: PriceTerms | None  # the price it follows; None for a model priced the first time


def price_data_changes(
    provider: str,
    model: str,
    timeline: list[tuple[datetime, PriceTerms]],
    history: list[ModelPrice],
    last_call: datetime | None,
    now: datetime,
) -> list[PriceAdded]:
    """The rows that bring ``history`` (the model's price rows, ascending) in line with the data's
    ``timeline`` without repricing anything: nothing takes effect at or before the newest row or the
    last recorded call (``floor``); the data's price in force there, if it differs, takes effect now."""
    floors = [when for when in (history[-1].effective_from if history else None, last_call) if when is not None]
    floor = max(floors) if floors else None
    previous = PriceTerms.of(history[-1]) if history else None
    added = []
    settled = [terms for start, terms in timeline if floor is not None and start <= floor]
    if settled and (previous is None or not settled[-1].same_as(previous)):
        when = now if now > floor else floor + timedelta(microseconds=1)
        added.append(PriceAdded(provider, model, when, settled[-1], previous))
        previous = settled[-1]
    for start, terms in timeline:
        if (floor is None or start > floor) and (previous is None or not terms.same_as(previous)):
            added.append(PriceAdded(provider, model, start, terms, previous))
            previous = terms
    return added


def price_data_info() -> dict:
    """Which price data is installed and what was last synced from it (`usage prices`, the operations page)."""
    newest = (
        ModelPrice.objects.filter(source=PriceSource.PRICE_DATA)
        .order_by("-created_at")
        .values("created_at", "data_version")
        .first()
    )
    return {
        **catalogue.price_data_info(),
        "last_synced_at": newest["created_at"].isoformat() if newest else None,
        "last_synced_version": newest["data_version"] if newest else None,
    }
