"""Every provider, declared once: its id, the setting that turns it on, where its models come from, its
default model and the module that implements it. Everything else is derived from these declarations:
``PROVIDER_IDS``, whether a provider is configured, the default chain, the id an API is sent, and (in
``jobs.catalogue``) the model catalogue. Adding a provider is one module plus one entry in ``PROVIDERS``.

This module names the implementing modules but never imports them: the SDKs take 0.5-1.5 s of CPU to
import, so ``jobs.providers.get_provider`` imports one on first use and ``preload`` ahead of a fork.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from django.conf import settings

from jobs.providers import local


@dataclass(frozen=True)
class DeclaredModels:
    """Models we define ourselves (the offline providers): (name, context tokens) pairs."""

    models: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class PriceDataModels:
    """The models the genai-prices data lists under ``provider`` whose ids match ``serves`` and not
    ``excludes``: the families the API we call can answer a page request with (no embeddings, speech,
    image generation or realtime models, which the data lists too)."""

    provider: str
    serves: str
    excludes: str = ""


@dataclass(frozen=True)
class ProviderSpec:
    id: str
    implementation: str  # "module:Class", imported on first use
    setting: str | None  # the setting whose non-empty value turns the provider on; None: always on
    models: DeclaredModels | PriceDataModels
    default_model: str
    # Tried in declaration order for a job that names no provider; the first configured one wins.
    default_candidate: bool = False
    # Names people use that the provider's API does not know, and the id to send instead.
    api_ids: Mapping[str, str] = field(default_factory=dict)
    # A setting holding a base URL: when it points anywhere but ``official_host`` the server is an
    # OpenAI-compatible one (Ollama, vLLM, llama.cpp), whose model names are its own.
    base_url_setting: str | None = None
    official_host: str = ""


# Model families the data lists that cannot answer a page request: embeddings, speech, images, realtime,
# completions-only and fine-tune id prefixes (a fine-tuned model's own id is the operator's to price).
_NOT_FOR_PAGES = (
    r"embedding|tts|whisper|transcribe|realtime|audio|image|banana|live|search|moderation|computer-use"
    r"|instruct|vision|^ft:|\.ft-"
)

PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        id="openai",
        implementation="jobs.providers.openai:OpenAIProvider",
        setting="OPENAI_API_KEY",
        models=PriceDataModels("openai", serves=r"^(gpt-|o\d|chatgpt-|codex-)", excludes=_NOT_FOR_PAGES),
        default_model="gpt-4o-mini",
        default_candidate=True,
        base_url_setting="OPENAI_BASE_URL",
        official_host="api.openai.com",
    ),
    ProviderSpec(
        id="anthropic",
        implementation="jobs.providers.anthropic:AnthropicProvider",
        setting="ANTHROPIC_API_KEY",
        models=PriceDataModels("anthropic", serves=r"^claude-"),
        default_model="claude-3-haiku",
        default_candidate=True,
        # Anthropic's API knows dated ids and a few "-latest"/"-4-5" style aliases, not these short names.
        api_ids=MappingProxyType(
            {
                "claude-3-haiku": "claude-3-haiku-20240307",
                "claude-3-sonnet": "claude-3-sonnet-20240229",
                "claude-3-opus": "claude-3-opus-20240229",
                "claude-3-5-sonnet": "claude-3-5-sonnet-20241022",
                "claude-3-5-haiku": "claude-3-5-haiku-20241022",
                "claude-3-7-sonnet": "claude-3-7-sonnet-20250219",
                "claude-sonnet-4": "claude-sonnet-4-20250514",
                "claude-opus-4": "claude-opus-4-20250514",
            }
        ),
    ),
    ProviderSpec(
        id="google",
        implementation="jobs.providers.gemini:GeminiProvider",
        setting="GEMINI_API_KEY",
        # The data's google entry also prices Claude on Vertex AI; the Gemini API serves Gemini and Gemma.
        models=PriceDataModels("google", serves=r"^gem(ini|ma)-", excludes=_NOT_FOR_PAGES + r"|robotics|omni"),
        default_model="gemini-2.0-flash",
        default_candidate=True,
    ),
    ProviderSpec(
        id="local",
        implementation="jobs.providers.local:LocalProvider",
        setting=None,
        models=DeclaredModels(((local.MODEL, 1_000_000),)),
        default_model=local.MODEL,
        default_candidate=True,  # always configured and last: the default when no key is set
    ),
    ProviderSpec(
        id="simulated",
        implementation="jobs.providers.simulated:SimulatedProvider",
        setting="AI_ENABLE_SIMULATED_PROVIDER",
        models=DeclaredModels((("sim-small", 100_000), ("sim-large", 1_000_000))),
        default_model="sim-small",
    ),
)

PROVIDER_IDS: tuple[str, ...] = tuple(spec.id for spec in PROVIDERS)
_BY_ID: dict[str, ProviderSpec] = {spec.id: spec for spec in PROVIDERS}


def spec(provider_id: str) -> ProviderSpec:
    """The declaration of ``provider_id``; KeyError for an unknown id."""
    return _BY_ID[provider_id]


def configured(provider_id: str) -> bool:
    declared = _BY_ID.get(provider_id)
    if declared is None:
        return False
    return declared.setting is None or bool(getattr(settings, declared.setting))


def default_chain() -> tuple[str, ...]:
    return tuple(declared.id for declared in PROVIDERS if declared.default_candidate)


def any_model_accepted(provider_id: str) -> bool:
    """True when the provider points at an OpenAI-compatible server, which takes model names we cannot know."""
    declared = _BY_ID.get(provider_id)
    if declared is None or declared.base_url_setting is None:
        return False
    base_url = getattr(settings, declared.base_url_setting) or ""
    return bool(base_url) and declared.official_host not in base_url


def api_model_id(provider_id: str, model: str) -> str:
    """The id the provider's API is sent for ``model``: the name as submitted (a dated id pins that
    version), except the short names its API does not know."""
    declared = _BY_ID.get(provider_id)
    return declared.api_ids.get(model, model) if declared is not None else model
