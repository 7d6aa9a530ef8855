"""Anthropic Messages API.

Structured output is a forced tool call: one tool, ``emit_page``, whose ``input_schema`` is the
page schema, and ``tool_choice`` naming it, so the answer is the tool call's ``input``. That
works on every Claude model in the catalogue; Anthropic's ``output_config`` structured outputs
only exist on newer models, and ``messages.parse`` rewrites constraints it cannot send into
descriptions. Either way the pipeline validates the page against our own schema.

What SDK 2.x does that matters here: it sends the key as ``Authorization: Bearer <key>`` (1.x
sent ``x-api-key``); 529 raises ``OverloadedError``, a subclass of ``InternalServerError`` (it was
not one in 1.x), so we read the HTTP status and ``error.type`` instead of exception classes;
``error.details.error_code`` names causes more precisely (``enforced_spend_limit_reached``) and
is preferred when present; a 200 whose body is not JSON comes back from ``parse()`` as a ``str``;
``messages.create`` has no sampling parameters (``temperature`` is gone), so none are sent.
"""

from __future__ import annotations

import json

import anthropic
from anthropic.types import Message
from django.conf import settings

from jobs.providers._common import (
    SDKProvider,
    as_int,
    call_timeout,
    clip,
    option_int,
    retry_after_from_headers,
    retry_after_from_message,
)
from jobs.providers.base import CallContext, ProviderError, ProviderResponse, Usage
from jobs.providers.prompting import SYSTEM_PROMPT, user_message
from jobs.providers.registry import api_model_id
from jobs.schema import model_schema

TOOL_NAME = "emit_page"
DEFAULT_MAX_TOKENS = 4096  # the output ceiling of the Claude 3 models in the catalogue


class AnthropicProvider(SDKProvider):
    label = "anthropic"
    id = "anthropic"

    def __init__(self) -> None:
        self._key = settings.ANTHROPIC_API_KEY or ""
        self._client = anthropic.Anthropic(
            api_key=self._key or "unset",
            base_url=settings.ANTHROPIC_BASE_URL or None,
            timeout=float(settings.AI_PROVIDER_TIMEOUT_SECONDS),
            max_retries=0,
        )
        self._tools = [
            {
                "name": TOOL_NAME,
                "description": "Emit the finished web page. The input is the complete page object.",
                "input_schema": model_schema(),
            }
        ]
        self._tool_choice = {"type": "tool", "name": TOOL_NAME}

    def generate(self, *, prompt: str, model: str, ctx: CallContext) -> ProviderResponse:
        timeout = call_timeout(ctx, settings.AI_PROVIDER_TIMEOUT_SECONDS)
        try:
            raw = self._client.messages.with_raw_response.create(
                model=api_model_id(self.id, model),
                max_tokens=option_int(ctx, "max_tokens") or DEFAULT_MAX_TOKENS,
                system=SYSTEM_PROMPT,
                messages=[{"role": "user", "content": user_message(prompt)}],
                tools=self._tools,
                tool_choice=self._tool_choice,
                timeout=timeout,
            )
            request_id = raw.headers.get("request-id")
            try:
                message = raw.parse()
            except ValueError as exc:  # the content type said JSON, the body was not
                raise self._malformed(f"body is not JSON ({exc.__class__.__name__})", request_id) from None
        except anthropic.APITimeoutError:
            raise self._error(f"no response within {timeout:g}s", transport="timeout") from None
        except anthropic.APIConnectionError as exc:
            raise self._error(f"connection failed: {_cause(exc)}", transport="connection") from None
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from None
        except anthropic.APIResponseValidationError as exc:
            raise self._malformed(f"unexpected response ({exc.__class__.__name__})", None) from None
        return self._answer(message, request_id)

    # -- success bodies -------------------------------------------------------------------------

    def _answer(self, message: object, request_id: str | None) -> ProviderResponse:
        if not isinstance(message, Message):
            shown = clip(message, 120) if isinstance(message, str) else type(message).__name__
            raise self._malformed(f"body is not a message: {shown!r}", request_id)
        usage = _usage(getattr(message, "usage", None))
        stop = getattr(message, "stop_reason", None)
        if stop == "refusal":
            raise self._error("model refused to answer", 200, "refusal", request_id, usage)
        if stop == "model_context_window_exceeded":
            raise self._error("context window exceeded", 200, "model_context_window_exceeded", request_id, usage)
        if stop == "max_tokens":
            raise self._error("answer cut off at max_tokens", 200, "output_truncated", request_id, usage)
        blocks = getattr(message, "content", None) or []
        for block in blocks:
            if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == TOOL_NAME:
                page = json.dumps(getattr(block, "input", None))
                return ProviderResponse(text=page, usage=usage, request_id=request_id)
        # A model that ignored the forced tool and wrote text: let the page validation judge it.
        text = "".join(getattr(b, "text", "") or "" for b in blocks if getattr(b, "type", None) == "text")
        if text.strip():
            return ProviderResponse(text=text, usage=usage, request_id=request_id)
        raise self._error(f"answer has no page (stop_reason={stop})", 200, "empty_response", request_id, usage)

    # -- errors ---------------------------------------------------------------------------------

    def _status_error(self, exc: anthropic.APIStatusError) -> ProviderError:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = _text(exc.error_code) or _text(error.get("type"))
        detail = _text(error.get("message")) or (exc.body if isinstance(exc.body, str) and exc.body else None)
        request_id = exc.request_id or _text(body.get("request_id"))
        retry_after = retry_after_from_headers(exc.response.headers)
        if retry_after is None:
            retry_after = retry_after_from_message(detail)
        text = f"HTTP {exc.status_code}" + (f" {code}" if code else "") + (f": {detail}" if detail else "")
        return self._error(text, exc.status_code, code, request_id, retry_after=retry_after)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _usage(usage: object) -> Usage | None:
    if usage is None:
        return None
    fresh = as_int(getattr(usage, "input_tokens", 0))
    cache_read = as_int(getattr(usage, "cache_read_input_tokens", 0))
    cache_write = as_int(getattr(usage, "cache_creation_input_tokens", 0))
    # input_tokens counts only the uncached part of the prompt.
    return Usage(
        prompt_tokens=fresh + cache_read + cache_write,
        completion_tokens=as_int(getattr(usage, "output_tokens", 0)),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return cause.__class__.__name__ if cause is not None else exc.__class__.__name__
