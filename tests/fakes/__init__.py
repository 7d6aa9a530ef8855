"""Loopback HTTP servers that speak the real providers' wire formats, for tests.

``FakeOpenAIServer``, ``FakeAnthropicServer`` and ``FakeGeminiServer`` run in a thread (context
manager or pytest fixture) or as their own process (``python -m tests.fakes.openai_server
--port N``). How a test picks each answer is described in ``tests.fakes.base``.
"""

from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.base import DEFAULT_API_KEY, INVALID_PAGE, SAMPLE_PAGE, FakeProviderServer, RecordedRequest
from tests.fakes.gemini_server import FakeGeminiServer
from tests.fakes.openai_server import FakeOpenAIServer

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
