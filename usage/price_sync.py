"""The genai-prices data's prices as dated ModelPrice rows (`manage.py usage prices sync`, `make run`, the data
migration): a row only where the data's price differs from the one in force, from the price's start, never for
a model an operator has priced, and nothing recorded is repriced (usage.pricing.price_data_changes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from aipb.exceptions import InvalidInput
from audit.models import AuditAction
from audit.records import Actor, audit_record, capped
from jobs import catalogue
from usage.models import ModelPrice, PriceSource, TokenUsage
from usage.pricing import PRICE_FIELDS, PriceAdded, Unrepresentable, price_data_changes, price_data_timeline

# One sync at a time (two hosts starting `make run` at once): a transaction-scoped advisory lock.
SYNC_LOCK = 0x61697062_70726963  # "aipbpric"


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
