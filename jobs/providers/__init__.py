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


def preload() -> None:
    """Import every configured provider's module now (the SDKs take ~0.5-1.5 s of CPU to import).

    The forking worker calls this before its first fork, so each work-horse inherits the modules
    instead of importing them for every job it runs (found by the provider-outage drill, where
    every OpenAI job spent longer importing the SDK than calling the API)."""
    from jobs.catalogue import provider_configured

    for provider_id, (module_name, _) in _MODULES.items():
        if provider_configured(provider_id):
            import_module(module_name)


def reset_providers() -> None:
    """Forget built clients (settings changed: keys, base URLs)."""
    _instances.clear()
