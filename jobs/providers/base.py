"""The one small interface every provider implements.

A provider turns a prompt and a model into page JSON text plus usage, or raises
``ProviderError`` carrying what the provider reported (HTTP status, its own error code,
Retry-After, usage). Providers only *extract* those facts; ``jobs.errors.classify`` alone
decides what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0  # all input tokens, cached ones included
    completion_tokens: int = 0  # output tokens, thinking tokens included
    cached_tokens: int = 0  # cache reads (part of prompt_tokens)
    cache_write_tokens: int = 0  # cache writes (part of prompt_tokens)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ProviderResponse:
    text: str  # the page JSON text as the model returned it
    usage: Usage | None
    request_id: str | None = None


@dataclass(frozen=True)
class CallContext:
    job_id: str
    attempt: int  # lifetime attempt number, 1-based
    options: dict = field(default_factory=dict)
    timeout: float = 60.0


class ProviderError(Exception):
    """A provider call that did not produce an answer.

    ``transport`` is ``"timeout"`` or ``"connection"`` when no HTTP response arrived;
    ``status`` is the HTTP status otherwise (200 for a malformed success body);
    ``code`` is the provider's own error type or code (``insufficient_quota``,
    ``overloaded_error``, ``API_KEY_INVALID``, ``malformed_response`` ...).
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        code: str | None = None,
        transport: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status = status
        self.code = code
        self.transport = transport
        self.retry_after = retry_after
        self.request_id = request_id
        self.usage = usage

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.message!r}, provider={self.provider!r}, status={self.status!r}, "
            f"code={self.code!r}, transport={self.transport!r})"
        )


class Provider:
    id: str = ""

    def generate(self, *, prompt: str, model: str, ctx: CallContext) -> ProviderResponse:
        raise NotImplementedError
