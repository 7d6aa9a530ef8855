"""Loopback HTTP servers that speak the real providers' wire formats, for tests.

``FakeOpenAIServer``, ``FakeAnthropicServer`` and ``FakeGeminiServer`` run in a thread (context
manager or pytest fixture) or as their own process (``python -m tests.fakes.openai_server
--port N``). How a test picks each answer is described in ``tests.fakes.base``.
"""

from importlib import import_module

from tests.fakes.base import DEFAULT_API_KEY, INVALID_PAGE, SAMPLE_PAGE, FakeProviderServer, RecordedRequest

# The server modules load on first use, so `python -m tests.fakes.<server>` runs a module
# that this package has not already imported.
_LAZY = {
    "FakeOpenAIServer": "tests.fakes.openai_server",
    "FakeAnthropicServer": "tests.fakes.anthropic_server",
    "FakeGeminiServer": "tests.fakes.gemini_server",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_API_KEY",
    "INVALID_PAGE",
    "SAMPLE_PAGE",
    "FakeAnthropicServer",
    "FakeGeminiServer",
    "FakeOpenAIServer",
    "FakeProviderServer",
    "RecordedRequest",
]
