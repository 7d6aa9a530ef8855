"""The model catalogue: which models each provider accepts, and the one name each is known by.

Derived from the provider declarations in ``jobs.providers.registry``: the offline providers declare
their models; openai, anthropic and google take theirs from the genai-prices data, the same data the
prices are synced from (``usage prices sync``), so the names accepted, their context limits and their
prices come from one maintained source. A model has one canonical name, the data's id (the name prices
and reports use), and the names the data matches to it: dated ids, ``-latest``, dotted spellings. An
alias and its canonical name share one price because usage is priced by canonical name.

The data is the package's bundled snapshot, or a fresher one fetched by ``price_data_refresh`` when
``AI_PRICES_AUTO_UPDATE`` is on; the catalogue is rebuilt when the snapshot in use changes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import cached_property

from django.conf import settings
from genai_prices import __version__ as PRICE_DATA_PACKAGE_VERSION
from genai_prices import data_snapshot
from genai_prices import types as price_types
from genai_prices.update_prices import DEFAULT_UPDATE_URL, UpdatePrices

from jobs.providers import registry
from jobs.providers.registry import DeclaredModels, PriceDataModels

PROVIDER_IDS = registry.PROVIDER_IDS
PRICE_DATA_PACKAGE = "genai-prices"
MAX_MODEL_NAME = 200  # AIJob.model and TokenUsage.model hold this many characters
# Names submitted are user input: remember this many resolved names per snapshot, not every one ever sent.
_MATCH_MEMO_SIZE = 4096
_SUGGESTIONS = 3


@dataclass(frozen=True)
class ModelInfo:
    provider: str
    name: str  # canonical
    api_id: str  # what the provider's API is sent
    context_tokens: int | None  # None: the data does not say
    aliases: tuple[str, ...] = ()
    deprecated: bool = False  # the provider retires it; still answered


class CatalogueError(ValueError):
    pass


class _Catalogue:
    """The catalogue built from one price-data snapshot."""

    def __init__(self, snapshot: data_snapshot.DataSnapshot) -> None:
        self.snapshot = snapshot
        self._declared: dict[tuple[str, str], ModelInfo] = {}
        self._served: dict[tuple[str, str], ModelInfo] = {}  # (provider, data id) -> info
        self._data_models: dict[tuple[str, str], price_types.ModelInfo] = {}
        self._sources: dict[str, price_types.Provider] = {}
        self._matched: dict[tuple[str, str], ModelInfo | None] = {}
        models: list[ModelInfo] = []
        for declared in registry.PROVIDERS:
            if isinstance(declared.models, DeclaredModels):
                for name, context in declared.models.models:
                    info = ModelInfo(declared.id, name, registry.api_model_id(declared.id, name), context)
                    self._declared[(declared.id, name)] = info
                    models.append(info)
            else:
                models.extend(self._from_price_data(declared.id, declared.models))
        self.models: tuple[ModelInfo, ...] = tuple(models)

    def _from_price_data(self, provider_id: str, source: PriceDataModels) -> list[ModelInfo]:
        data = next((p for p in self.snapshot.providers if p.id == source.provider), None)
        if data is None:  # a snapshot without the provider: it offers no model until one has it again
            return []
        self._sources[provider_id] = data
        infos = []
        for model in data.models:
            if not re.search(source.serves, model.id) or (source.excludes and re.search(source.excludes, model.id)):
                continue
            # An alias the data lists is kept only if it resolves to this model (an earlier entry may claim it).
            aliases = tuple(
                name for name in _equals_names(model.match) if name != model.id and data.find_model(name) is model
            )
            info = ModelInfo(
                provider=provider_id,
                name=model.id,
                api_id=registry.api_model_id(provider_id, model.id),
                context_tokens=model.context_window,
                aliases=aliases,
                deprecated=bool(model.deprecated),
            )
            self._served[(provider_id, model.id)] = info
            self._data_models[(provider_id, model.id)] = model
            infos.append(info)
        return infos

    def find(self, provider: str, name: str) -> ModelInfo | None:
        """The canonical entry for ``name``, resolved as the price data resolves it (its first match)."""
        declared = self._declared.get((provider, name))
        data = self._sources.get(provider)
        # Provider model ids are lower case; the data matches case-insensitively, the APIs do not.
        if declared is not None or data is None or not name or len(name) > MAX_MODEL_NAME or name != name.lower():
            return declared
        key = (provider, name)
        if key in self._matched:
            return self._matched[key]
        model = data.find_model(name)
        info = self._served.get((provider, model.id)) if model is not None else None
        if len(self._matched) < _MATCH_MEMO_SIZE:
            self._matched[key] = info
        return info

    def data_model(self, provider: str, name: str) -> price_types.ModelInfo | None:
        return self._data_models.get((provider, name))

    @cached_property
    def newest_price_change(self) -> date | None:
        """The newest dated price change in the data up to today: how current the data is."""
        today = datetime.now(UTC).date()
        starts = [
            price.constraint.start_date
            for provider in self.snapshot.providers
            for model in provider.models
            if isinstance(model.prices, list)
            for price in model.prices
            if isinstance(price.constraint, price_types.StartDateConstraint) and price.constraint.start_date <= today
        ]
        return max(starts, default=None)


def _equals_names(match: object) -> list[str]:
    """The exact names a data match clause accepts (prefix and pattern clauses name no single model)."""
    if isinstance(match, price_types.ClauseEquals):
        return [match.equals]
    if isinstance(match, price_types.ClauseOr):
        return [name for clause in match.or_ for name in _equals_names(clause)]
    return []


def _build() -> _Catalogue:
    return _Catalogue(data_snapshot.get_snapshot())


# Built on import (~0.2 s: the package's data module, then our index): a forking worker imports this
# module before its first fork, so work-horses inherit the catalogue instead of building it for every job.
_built: _Catalogue = _build()


def _current() -> _Catalogue:
    global _built
    built = _built
    if built.snapshot is not data_snapshot.get_snapshot():
        built = _built = _build()  # threads racing here build the same thing; either wins
    return built


class _Models(Sequence):
    """Every ModelInfo, read from the catalogue in use (it changes when fresher price data is fetched)."""

    def __getitem__(self, index):
        return _current().models[index]

    def __len__(self) -> int:
        return len(_current().models)


MODELS: Sequence[ModelInfo] = _Models()


def models(provider: str | None = None) -> tuple[ModelInfo, ...]:
    return tuple(m for m in _current().models if provider is None or m.provider == provider)


def provider_configured(provider: str) -> bool:
    return registry.configured(provider)


def providers_status() -> list[dict]:
    """Every provider with whether it is offered here and its models (for the API and docs)."""
    current = _current()
    out = []
    for provider in PROVIDER_IDS:
        source = registry.spec(provider).models
        out.append(
            {
                "id": provider,
                "available": provider_configured(provider),
                "default_model": registry.spec(provider).default_model,
                "models_from": PRICE_DATA_PACKAGE if isinstance(source, PriceDataModels) else "declared",
                "any_model_name": registry.any_model_accepted(provider),
                "models": [
                    {
                        "name": m.name,
                        "aliases": list(m.aliases),
                        "context_tokens": m.context_tokens,
                        "deprecated": m.deprecated,
                    }
                    for m in current.models
                    if m.provider == provider
                ],
            }
        )
    return out


def default_provider() -> str:
    if settings.AI_DEFAULT_PROVIDER:
        return settings.AI_DEFAULT_PROVIDER
    chain = registry.default_chain()
    return next((provider for provider in chain if provider_configured(provider)), chain[-1])


def default_model(provider: str) -> str:
    if settings.AI_DEFAULT_MODEL and provider == default_provider():
        return settings.AI_DEFAULT_MODEL
    return registry.spec(provider).default_model


def lookup(provider: str, model: str) -> ModelInfo:
    """The catalogue entry for a model, or CatalogueError with a reason fit for a 400."""
    if provider not in PROVIDER_IDS:
        raise CatalogueError(f"unknown provider '{provider}'; choose one of {', '.join(PROVIDER_IDS)}")
    info = _current().find(provider, model)
    if info is not None:
        return info if info.name == model else replace(info, api_id=registry.api_model_id(provider, model))
    if registry.any_model_accepted(provider) and model and len(model) <= MAX_MODEL_NAME:
        return ModelInfo(provider=provider, name=model, api_id=model, context_tokens=None)
    names = [m.name for m in _current().models if m.provider == provider]
    close = difflib.get_close_matches(str(model)[:MAX_MODEL_NAME].lower(), names, n=_SUGGESTIONS)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise CatalogueError(
        f"unknown model '{str(model)[:80]}' for provider '{provider}'; {hint}GET /api/ai/providers lists "
        f"the {len(names)} models it accepts"
    )


def canonical_model(provider: str, model: str) -> str:
    """The name prices and reports use; an unknown model keeps its own name."""
    info = _current().find(provider, model)
    return info.name if info else model


# --- the price data itself, for usage.pricing ---


def price_data_models() -> list[tuple[ModelInfo, price_types.ModelInfo]]:
    """Every catalogue model that comes from the price data, with the data's entry (its prices)."""
    current = _current()
    return [(m, model) for m in current.models if (model := current.data_model(m.provider, m.name)) is not None]


def price_data_version() -> str:
    """Which price data is in use: the package version, and the fetch time when fresher data was fetched."""
    snapshot = _current().snapshot
    if snapshot.from_auto_update:
        fetched = snapshot.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
        return f"{PRICE_DATA_PACKAGE_VERSION}+fetched {fetched}"
    return PRICE_DATA_PACKAGE_VERSION


def price_data_info() -> dict:
    current = _current()
    newest = current.newest_price_change
    return {
        "package": PRICE_DATA_PACKAGE,
        "version": price_data_version(),
        "source": "fetched" if current.snapshot.from_auto_update else "bundled",
        "newest_price_change": newest.isoformat() if newest else None,
    }


def price_data_refresh(*, url: str = DEFAULT_UPDATE_URL) -> bool:
    """With AI_PRICES_AUTO_UPDATE on, fetch the newest price data (one HTTP GET, by default from the
    package's own URL, with its timeouts) and use it in this process; False when the setting is off.
    CatalogueError when the fetch fails, leaving the data in use as it was."""
    # getattr: the setting is declared in aipb/settings.py; off wherever it is not.
    if not settings.AI_PRICES_AUTO_UPDATE:
        return False
    try:
        snapshot = UpdatePrices(url=url).fetch()
    except Exception as exc:  # httpx2 transport errors, HTTP status, malformed data: all "not fetched"
        raise CatalogueError(f"cannot fetch price data: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    if snapshot is None:
        raise CatalogueError("cannot fetch price data: the server sent none")
    data_snapshot.set_custom_snapshot(snapshot)
    return True
