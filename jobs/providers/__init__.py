"""Provider registry: provider id -> instance, built once per process on first use."""

from __future__ import annotations

from importlib import import_module

from jobs.providers.base import Provider

_MODULES = {
    "local": ("jobs.providers.local", "LocalProvider"),
    "simulated": ("jobs.providers.simulated", "SimulatedProvider"),
    "openai": ("jobs.providers.openai", "OpenAIProvider"),
    "anthropic": ("jobs.providers.anthropic", "AnthropicProvider"),
    "google": ("jobs.providers.gemini", "GeminiProvider"),
}

_instances: dict[str, Provider] = {}


def get_provider(provider_id: str) -> Provider:
    instance = _instances.get(provider_id)
    if instance is None:
        module_name, class_name = _MODULES[provider_id]
        instance = getattr(import_module(module_name), class_name)()
        _instances[provider_id] = instance
    return instance


def reset_providers() -> None:
    """Forget built clients (settings changed: keys, base URLs)."""
    _instances.clear()
