"""The model catalogue: which models each provider offers, in one place.

A model has one canonical name (the one prices and reports use, e.g. ``claude-3-haiku``),
the id sent to the provider's API, and aliases people type (dated ids, ``-latest``).
An alias and its canonical name share one price because usage is priced by canonical name.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

PROVIDER_IDS = ("openai", "anthropic", "google", "local", "simulated")


@dataclass(frozen=True)
class ModelInfo:
    provider: str
    name: str  # canonical
    api_id: str  # what the provider's API is sent
    context_tokens: int
    aliases: tuple[str, ...] = ()


def _m(provider: str, name: str, context: int, api_id: str | None = None, aliases: tuple[str, ...] = ()) -> ModelInfo:
    return ModelInfo(provider=provider, name=name, api_id=api_id or name, context_tokens=context, aliases=aliases)


MODELS: tuple[ModelInfo, ...] = (
    _m("openai", "gpt-4", 8_192, aliases=("gpt-4-0613",)),
    _m("openai", "gpt-4-turbo", 128_000, aliases=("gpt-4-turbo-2024-04-09",)),
    _m("openai", "gpt-3.5-turbo", 16_385, aliases=("gpt-3.5-turbo-0125",)),
    _m("openai", "gpt-4o", 128_000, aliases=("gpt-4o-2024-08-06", "gpt-4o-2024-11-20")),
    _m("openai", "gpt-4o-mini", 128_000, aliases=("gpt-4o-mini-2024-07-18",)),
    _m(
        "anthropic",
        "claude-3-opus",
        200_000,
        "claude-3-opus-20240229",
        ("claude-3-opus-20240229", "claude-3-opus-latest"),
    ),
    _m("anthropic", "claude-3-sonnet", 200_000, "claude-3-sonnet-20240229", ("claude-3-sonnet-20240229",)),
    _m(
        "anthropic",
        "claude-3-5-sonnet",
        200_000,
        "claude-3-5-sonnet-20241022",
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20240620", "claude-3-5-sonnet-latest"),
    ),
    _m("anthropic", "claude-3-haiku", 200_000, "claude-3-haiku-20240307", ("claude-3-haiku-20240307",)),
    _m("anthropic", "claude-sonnet-4", 200_000, "claude-sonnet-4-20250514", ("claude-sonnet-4-20250514",)),
    _m("google", "gemini-pro", 32_760, aliases=("gemini-1.0-pro",)),
    _m("google", "gemini-1.5-pro", 2_097_152, aliases=("gemini-1.5-pro-002", "gemini-1.5-pro-latest")),
    _m("google", "gemini-1.5-flash", 1_048_576, aliases=("gemini-1.5-flash-002", "gemini-1.5-flash-latest")),
    _m("google", "gemini-2.0-flash", 1_048_576, aliases=("gemini-2.0-flash-001",)),
    _m("google", "gemini-ultra", 32_760, aliases=("gemini-1.0-ultra",)),
    _m("local", "local-page", 1_000_000),
    _m("simulated", "sim-small", 100_000),
    _m("simulated", "sim-large", 1_000_000),
)

DEFAULT_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-haiku",
    "google": "gemini-2.0-flash",
    "local": "local-page",
    "simulated": "sim-small",
}

_BY_NAME: dict[tuple[str, str], ModelInfo] = {}
for _info in MODELS:
    for _key in (_info.name, *_info.aliases):
        _BY_NAME[(_info.provider, _key)] = _info


class CatalogueError(ValueError):
    pass


def provider_configured(provider: str) -> bool:
    if provider == "openai":
        return bool(settings.OPENAI_API_KEY)
    if provider == "anthropic":
        return bool(settings.ANTHROPIC_API_KEY)
    if provider == "google":
        return bool(settings.GEMINI_API_KEY)
    if provider == "simulated":
        return bool(settings.AI_ENABLE_SIMULATED_PROVIDER)
    return provider == "local"


def providers_status() -> list[dict]:
    """Every provider with whether it is offered here and its models (for the API and docs)."""
    return [
        {
            "id": provider,
            "available": provider_configured(provider),
            "default_model": DEFAULT_MODELS[provider],
            "models": [{"name": m.name, "context_tokens": m.context_tokens} for m in MODELS if m.provider == provider],
        }
        for provider in PROVIDER_IDS
    ]


def default_provider() -> str:
    if settings.AI_DEFAULT_PROVIDER:
        return settings.AI_DEFAULT_PROVIDER
    for provider in ("openai", "anthropic", "google"):
        if provider_configured(provider):
            return provider
    return "local"


def default_model(provider: str) -> str:
    if settings.AI_DEFAULT_MODEL and provider == default_provider():
        return settings.AI_DEFAULT_MODEL
    return DEFAULT_MODELS[provider]


def _openai_compatible() -> bool:
    # A custom OPENAI_BASE_URL points at Ollama, vLLM, llama.cpp ...: their model names are theirs.
    return bool(settings.OPENAI_BASE_URL) and "api.openai.com" not in settings.OPENAI_BASE_URL


def lookup(provider: str, model: str) -> ModelInfo:
    """The catalogue entry for a model, or CatalogueError with a reason fit for a 400."""
    if provider not in PROVIDER_IDS:
        raise CatalogueError(f"unknown provider '{provider}'; choose one of {', '.join(PROVIDER_IDS)}")
    info = _BY_NAME.get((provider, model))
    if info is not None:
        return info
    if provider == "openai" and _openai_compatible() and model and len(model) <= 200:
        return ModelInfo(provider=provider, name=model, api_id=model, context_tokens=0)
    known = ", ".join(m.name for m in MODELS if m.provider == provider)
    raise CatalogueError(f"unknown model '{model}' for provider '{provider}'; known models: {known}")


def canonical_model(provider: str, model: str) -> str:
    """The name prices and reports use; an unknown model keeps its own name."""
    info = _BY_NAME.get((provider, model))
    return info.name if info else model
