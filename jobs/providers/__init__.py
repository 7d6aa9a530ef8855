"""Provider instances: provider id -> instance, built once per process on first use.

Which providers exist, and the module implementing each, is declared in ``jobs.providers.registry``.
"""

from __future__ import annotations

from importlib import import_module

from jobs.providers import registry
from jobs.providers.base import Provider

_instances: dict[str, Provider] = {}


def _module_and_class(provider_id: str) -> tuple[str, str]:
    module_name, _, class_name = registry.spec(provider_id).implementation.partition(":")
    return module_name, class_name


def get_provider(provider_id: str) -> Provider:
    instance = _instances.get(provider_id)
    if instance is None:
        module_name, class_name = _module_and_class(provider_id)
        instance = getattr(import_module(module_name), class_name)()
        _instances[provider_id] = instance
    return instance


def preload() -> None:
    """Import every configured provider's module now (the SDKs take ~0.5-1.5 s of CPU to import).

    The forking worker calls this before its first fork, so each work-horse inherits the modules
    instead of importing them for every job it runs (found by the provider-outage drill, where
    every OpenAI job spent longer importing the SDK than calling the API)."""
    for provider_id in registry.PROVIDER_IDS:
        if registry.configured(provider_id):
            import_module(_module_and_class(provider_id)[0])


def reset_providers() -> None:
    """Forget built clients (settings changed: keys, base URLs)."""
    _instances.clear()
