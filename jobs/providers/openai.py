"""OpenAI Chat Completions, and any OpenAI-compatible server (Ollama, vLLM, llama.cpp ...).

Set ``OPENAI_BASE_URL`` to the server's ``/v1`` URL (e.g. ``http://localhost:11434/v1`` for
Ollama) and any model name that server has is accepted. Structured output is asked for with
``response_format`` ``json_schema`` in strict mode; compatible servers turn it into a grammar.
Strict mode refuses ``minLength``/``maxLength``, so they are left out of the schema sent; every
answer is validated against the full page schema by the pipeline anyway.

What SDK 3.x does that matters here: it sends ``Authorization: Bearer <key>``; a 200 whose body
is not JSON comes back from ``parse()`` as a plain ``str`` (or raises ``JSONDecodeError`` when
the content type claims JSON) instead of an exception; status errors carry ``error.code`` /
``error.type`` from the body and the ``x-request-id`` header.
"""

from __future__ import annotations

import openai
from django.conf import settings
from openai.types.chat import ChatCompletion

from jobs.providers._common import (
    SDKProvider,
    as_int,
    call_timeout,
    clip,
    option_float,
    option_int,
    retry_after_from_headers,
    retry_after_from_message,
)
from jobs.providers.base import CallContext, ProviderError, ProviderResponse, Usage
from jobs.providers.prompting import SYSTEM_PROMPT, user_message
from jobs.providers.registry import any_model_accepted, api_model_id
from jobs.schema import model_schema

_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider(SDKProvider):
    label = "openai"
    id = "openai"

    def __init__(self) -> None:
        self._key = settings.OPENAI_API_KEY or ""
        self._base_url = settings.OPENAI_BASE_URL or _DEFAULT_BASE_URL
        # the registry says which base URL is OpenAI itself; anything else is an OpenAI-compatible server
        self._official = not any_model_accepted(self.id)
        self._client = openai.OpenAI(
            api_key=self._key or "unset",
            base_url=self._base_url,
            timeout=float(settings.AI_PROVIDER_TIMEOUT_SECONDS),
            max_retries=0,
        )
        self._response_format = {
            "type": "json_schema",
            "json_schema": {"name": "page", "schema": model_schema(string_lengths=False), "strict": True},
        }

    def generate(self, *, prompt: str, model: str, ctx: CallContext) -> ProviderResponse:
        timeout = call_timeout(ctx, settings.AI_PROVIDER_TIMEOUT_SECONDS)
        extra: dict = {}
        max_tokens = option_int(ctx, "max_tokens")
        if max_tokens is not None:
            # OpenAI's reasoning models refuse `max_tokens`; compatible servers may not know the newer name.
            extra["max_completion_tokens" if self._official else "max_tokens"] = max_tokens
        temperature = option_float(ctx, "temperature")
        if temperature is not None:
            extra["temperature"] = temperature
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=api_model_id(self.id, model),
                messages=[
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": user_message(prompt)},
                ],
                response_format=self._response_format,
                timeout=timeout,
                **extra,
            )
            request_id = raw.headers.get("x-request-id")
            try:
                completion = raw.parse()
            except ValueError as exc:  # the content type said JSON, the body was not
                raise self._malformed(f"body is not JSON ({exc.__class__.__name__})", request_id) from None
        except openai.APITimeoutError:
            raise self._error(f"no response within {timeout:g}s", transport="timeout") from None
        except openai.APIConnectionError as exc:
            raise self._error(f"connection failed: {_cause(exc)}", transport="connection") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APIResponseValidationError as exc:
            raise self._malformed(f"unexpected response ({exc.__class__.__name__})", None) from None
        return self._answer(completion, request_id)

    # -- success bodies -------------------------------------------------------------------------

    def _answer(self, completion: object, request_id: str | None) -> ProviderResponse:
        if not isinstance(completion, ChatCompletion):
            shown = clip(completion, 120) if isinstance(completion, str) else type(completion).__name__
            raise self._malformed(f"body is not a chat completion: {shown!r}", request_id)
        usage = _usage(getattr(completion, "usage", None))
        choices = getattr(completion, "choices", None) or []
        if not isinstance(choices, list) or not choices:
            raise self._error("answer has no choices", status=200, code="empty_response", rid=request_id, usage=usage)
        choice = choices[0]
        finish = getattr(choice, "finish_reason", None)
        message = getattr(choice, "message", None)
        refusal = getattr(message, "refusal", None)
        content = getattr(message, "content", None)
        if finish == "content_filter":
            raise self._error("answer withheld by the content filter", 200, "content_filter", request_id, usage)
        if refusal:
            raise self._error(f"model refused: {refusal}", 200, "refusal", request_id, usage)
        if finish == "length":
            raise self._error("answer cut off at the token limit", 200, "output_truncated", request_id, usage)
        if not isinstance(content, str) or not content.strip():
            detail = f"answer has no content (finish_reason={finish})"
            raise self._error(detail, 200, "empty_response", request_id, usage)
        return ProviderResponse(text=content, usage=usage, request_id=request_id)

    # -- errors ---------------------------------------------------------------------------------

    def _status_error(self, exc: openai.APIStatusError) -> ProviderError:
        body = exc.body if isinstance(exc.body, dict) else {}
        code = _code(body.get("code"), body.get("type"))
        detail = body.get("message") if isinstance(body.get("message"), str) else None
        if detail is None and isinstance(exc.body, str):
            detail = exc.body
        headers = exc.response.headers
        retry_after = retry_after_from_headers(headers)
        if retry_after is None:
            retry_after = retry_after_from_message(detail)
        text = f"HTTP {exc.status_code}" + (f" {code}" if code else "") + (f": {detail}" if detail else "")
        return self._error(text, exc.status_code, code, exc.request_id, retry_after=retry_after)


def _code(code: object, kind: object) -> str | None:
    # llama.cpp and vLLM put the HTTP status in `code` as a number; the type then says more.
    if isinstance(code, str) and code and not code.isdigit():
        return code
    if isinstance(kind, str) and kind:
        return kind
    return None


def _usage(usage: object) -> Usage | None:
    if usage is None:
        return None
    details = getattr(usage, "prompt_tokens_details", None)
    return Usage(
        prompt_tokens=as_int(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=as_int(getattr(usage, "completion_tokens", 0)),
        cached_tokens=as_int(getattr(details, "cached_tokens", 0)),
        cache_write_tokens=as_int(getattr(details, "cache_write_tokens", 0)),
    )


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return cause.__class__.__name__ if cause is not None else exc.__class__.__name__
