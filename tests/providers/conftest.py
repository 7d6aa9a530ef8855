"""Fake provider servers wired into settings, and a helper that calls a provider like the pipeline does.

Each server fixture starts a loopback fake, points the provider's key and base URL at it, sets a
short timeout and drops cached provider instances, so the provider under test builds its real
SDK client against the fake.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobs.providers import get_provider, reset_providers
from jobs.providers.base import CallContext, ProviderResponse
from tests.fakes import DEFAULT_API_KEY, FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer

TIMEOUT = 5.0  # generous for answers on loopback; the timeout tests lower it
HANG = 2.0  # how long the fakes' "timeout" scenario keeps a request waiting


@pytest.fixture
def openai_server(settings) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(hang_seconds=HANG) as server:
        settings.OPENAI_API_KEY = DEFAULT_API_KEY
        settings.OPENAI_BASE_URL = server.base_url
        settings.AI_PROVIDER_TIMEOUT_SECONDS = TIMEOUT
        reset_providers()
        yield server
    reset_providers()


@pytest.fixture
def anthropic_server(settings) -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(hang_seconds=HANG) as server:
        settings.ANTHROPIC_API_KEY = DEFAULT_API_KEY
        settings.ANTHROPIC_BASE_URL = server.base_url
        settings.AI_PROVIDER_TIMEOUT_SECONDS = TIMEOUT
        reset_providers()
        yield server
    reset_providers()


@pytest.fixture
def gemini_server(settings) -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer(hang_seconds=HANG) as server:
        settings.GEMINI_API_KEY = DEFAULT_API_KEY
        settings.GEMINI_BASE_URL = server.base_url
        settings.AI_PROVIDER_TIMEOUT_SECONDS = TIMEOUT
        reset_providers()
        yield server
    reset_providers()


def generate(
    provider: str,
    model: str,
    prompt: str = "A landing page for a small bakery",
    *,
    timeout: float | None = None,
    options: dict | None = None,
) -> ProviderResponse:
    """One provider call the way the pipeline makes it: the registry's instance, a CallContext."""
    from django.conf import settings

    ctx = CallContext(
        job_id="job-test",
        attempt=1,
        options=options or {},
        timeout=timeout if timeout is not None else settings.AI_PROVIDER_TIMEOUT_SECONDS,
    )
    return get_provider(provider).generate(prompt=prompt, model=model, ctx=ctx)
