"""Google Gemini (Gemini Developer API, ``generativelanguage``) through google-genai.

Structured output: ``responseMimeType: application/json`` plus ``responseSchema``, the page schema
converted by ``to_gemini_schema`` to the OpenAPI subset Gemini's ``Schema`` accepts (no ``$ref``,
``$defs`` or ``additionalProperties``). The pipeline validates every answer against the full
schema, so whatever the conversion loses is still enforced.

What SDK 3.x does that matters here: it sends the key as ``x-goog-api-key``; it serialises
``responseSchema`` keys in snake_case (``any_of``, ``max_length``, ``property_ordering``) and
upper-cases types, which the API accepts; it does *not* wrap transport failures, so raw
``httpx2`` (or ``httpx``) timeouts and connection errors come out of ``generate_content``; its
default API version is ``v1``, so we pin ``v1beta``; a 200 body that is not JSON raises a bare
``json.JSONDecodeError``; and it can chain extra calls by itself (automatic function calling,
automatic continuation), both of which are switched off so one attempt is one HTTP call.
"""

from __future__ import annotations

import copy
import json
import re

import pydantic
from django.conf import settings
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from jobs.providers._common import (
    SDKProvider,
    as_int,
    call_timeout,
    option_float,
    option_int,
    parse_duration,
    retry_after_from_headers,
    retry_after_from_message,
)
from jobs.providers.base import CallContext, ProviderError, ProviderResponse, Usage
from jobs.providers.prompting import SYSTEM_PROMPT, user_message
from jobs.providers.registry import api_model_id
from jobs.schema import PAGE_SCHEMA

try:
    import httpx2
except ImportError:  # pragma: no cover - google-genai can run on either
    httpx2 = None
try:
    import httpx
except ImportError:  # pragma: no cover
    httpx = None

API_VERSION = "v1beta"
_TIMEOUT_ERRORS = tuple(m.TimeoutException for m in (httpx2, httpx) if m is not None)
_TRANSPORT_ERRORS = tuple(m.RequestError for m in (httpx2, httpx) if m is not None)
_RPC_STATUS = re.compile(r"^[A-Z][A-Z_]+$")

# Finish / block reasons meaning the answer was withheld; passed on as the error code.
_WITHHELD = frozenset(
    {
        "SAFETY",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "MODEL_ARMOR",
        "JAILBREAK",
    }
)

# The keys of Gemini's Schema object (an OpenAPI 3.0 subset) that carry over from JSON Schema.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "items",
        "properties",
        "required",
        "anyOf",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minProperties",
        "maxProperties",
        "pattern",
        "propertyOrdering",
    }
)


def to_gemini_schema(schema: dict) -> dict:
    """Convert a JSON Schema to the OpenAPI-style ``Schema`` Gemini's ``responseSchema`` takes.

    ``$ref``s are inlined from ``$defs`` (recursion is refused: Gemini cannot express it);
    ``$schema``, ``$defs``, ``additionalProperties`` and other unsupported keywords are dropped;
    ``const`` becomes a one-value ``enum``; ``type: [X, "null"]`` and ``anyOf`` branches of
    ``{"type": "null"}`` become ``nullable``; objects get ``propertyOrdering`` in schema order so
    the model writes fields in the order the schema lists them.
    """
    defs = schema.get("$defs", {}) or {}

    def convert(node: object, seen: tuple[str, ...]) -> dict:
        if not isinstance(node, dict):
            raise ValueError(f"schema node is not an object: {node!r}")
        if "$ref" in node:
            ref = node["$ref"]
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith("#/$defs/") or name not in defs:
                raise ValueError(f"unresolvable $ref {ref!r}")
            if name in seen:
                raise ValueError(f"recursive $ref {ref!r} cannot be expressed in a Gemini schema")
            merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
            return convert(merged, (*seen, name))

        out: dict = {}
        kind = node.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            if len(kinds) != 1:
                raise ValueError(f"type {kind!r} cannot be expressed in a Gemini schema")
            kind = kinds[0]
            if "null" in node["type"]:
                out["nullable"] = True
        if kind is not None:
            out["type"] = kind
        for key, value in node.items():
            if key not in _SCHEMA_KEYS or key == "type":
                continue
            if key == "properties":
                out[key] = {name: convert(sub, seen) for name, sub in value.items()}
                out.setdefault("propertyOrdering", list(value))
            elif key == "items":
                out[key] = convert(value, seen)
            elif key == "anyOf":
                branches = [b for b in value if not (isinstance(b, dict) and b.get("type") == "null")]
                if len(branches) < len(value):
                    out["nullable"] = True
                converted = [convert(b, seen) for b in branches]
                if len(converted) == 1:
                    out.update({k: v for k, v in converted[0].items() if k not in out})
                else:
                    out[key] = converted
            elif key == "enum":
                out[key] = [v if isinstance(v, str) else json.dumps(v) for v in value if v is not None]
            else:
                out[key] = copy.deepcopy(value)
        if "const" in node and "enum" not in out:
            const = node["const"]
            out["enum"] = [const if isinstance(const, str) else json.dumps(const)]
            out.setdefault("type", "string")
        return out

    return convert(schema, ())


GEMINI_PAGE_SCHEMA = to_gemini_schema(PAGE_SCHEMA)


class GeminiProvider(SDKProvider):
    label = "google"
    id = "google"

    def __init__(self) -> None:
        self._key = settings.GEMINI_API_KEY or ""
        options = types.HttpOptions(
            api_version=API_VERSION,
            timeout=_ms(settings.AI_PROVIDER_TIMEOUT_SECONDS),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        if settings.GEMINI_BASE_URL:
            options.base_url = settings.GEMINI_BASE_URL
        self._client = genai.Client(vertexai=False, api_key=self._key or "unset", http_options=options)

    def generate(self, *, prompt: str, model: str, ctx: CallContext) -> ProviderResponse:
        timeout = call_timeout(ctx, settings.AI_PROVIDER_TIMEOUT_SECONDS)
        config = types.GenerateContentConfig(
            system_instruction=SYSTEM_PROMPT,
            response_mime_type="application/json",
            # The SDK rewrites the schema it is given in place: hand it a fresh copy every call.
            response_schema=copy.deepcopy(GEMINI_PAGE_SCHEMA),
            max_output_tokens=option_int(ctx, "max_tokens"),
            temperature=option_float(ctx, "temperature"),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            automatic_continuation=False,
            http_options=types.HttpOptions(timeout=_ms(timeout)),
        )
        try:
            response = self._client.models.generate_content(
                model=api_model_id(self.id, model), contents=user_message(prompt), config=config
            )
        except genai_errors.APIError as exc:
            raise self._status_error(exc) from None
        except _TIMEOUT_ERRORS:
            raise self._error(f"no response within {timeout:g}s", transport="timeout") from None
        except _TRANSPORT_ERRORS as exc:
            raise self._error(f"connection failed: {exc.__class__.__name__}", transport="connection") from None
        except (json.JSONDecodeError, pydantic.ValidationError, genai_errors.UnknownApiResponseError) as exc:
            # A 200 whose body is not JSON, or JSON of the wrong shape.
            raise self._error(
                f"malformed response: body is not a generateContent response ({exc.__class__.__name__})",
                status=200,
                code="malformed_response",
            ) from None
        return self._answer(response)

    # -- success bodies -------------------------------------------------------------------------

    def _answer(self, response: types.GenerateContentResponse) -> ProviderResponse:
        headers = response.sdk_http_response.headers if response.sdk_http_response else None
        request_id = (headers or {}).get("x-goog-request-id") or response.response_id
        usage = _usage(response.usage_metadata)
        feedback = response.prompt_feedback
        block = _enum_value(getattr(feedback, "block_reason", None))
        if block:
            detail = getattr(feedback, "block_reason_message", None) or block
            raise self._error(f"prompt blocked: {detail}", 200, block, request_id, usage)
        candidates = response.candidates or []
        if not candidates:
            raise self._error("answer has no candidates", 200, "empty_response", request_id, usage)
        candidate = candidates[0]
        finish = _enum_value(candidate.finish_reason)
        if finish in _WITHHELD:
            detail = candidate.finish_message or finish
            raise self._error(f"answer withheld: {detail}", 200, finish, request_id, usage)
        if finish == "MAX_TOKENS":
            raise self._error("answer cut off at max output tokens", 200, "output_truncated", request_id, usage)
        parts = (candidate.content.parts if candidate.content else None) or []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        if not text.strip():
            code = finish if finish and finish not in ("STOP", "FINISH_REASON_UNSPECIFIED") else "empty_response"
            raise self._error(f"answer has no text (finishReason={finish})", 200, code, request_id, usage)
        return ProviderResponse(text=text, usage=usage, request_id=request_id)

    # -- errors ---------------------------------------------------------------------------------

    def _status_error(self, exc: genai_errors.APIError) -> ProviderError:
        body = exc.details if isinstance(exc.details, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        details = error.get("details") if isinstance(error.get("details"), list) else []
        status = exc.status if isinstance(exc.status, str) and _RPC_STATUS.match(exc.status) else None
        reason = None
        retry_after = None
        quotas: list[str] = []
        for item in details:
            if not isinstance(item, dict):
                continue
            kind = str(item.get("@type", ""))
            if kind.endswith("google.rpc.ErrorInfo") and isinstance(item.get("reason"), str) and not reason:
                reason = item["reason"]
            elif kind.endswith("google.rpc.RetryInfo") and retry_after is None:
                retry_after = parse_duration(item.get("retryDelay"))
            elif kind.endswith("google.rpc.QuotaFailure"):
                violations = item.get("violations") if isinstance(item.get("violations"), list) else []
                quotas += [v["quotaId"] for v in violations if _has_str(v, "quotaId")]
        headers = getattr(exc.response, "headers", None)
        if retry_after is None:
            retry_after = retry_after_from_headers(headers)
        message = exc.message if isinstance(exc.message, str) else None
        if retry_after is None:
            retry_after = retry_after_from_message(message)
        code = reason or status
        request_id = headers.get("x-goog-request-id") if headers is not None else None
        http_status = exc.code if isinstance(exc.code, int) else None
        text = f"HTTP {http_status}" + (f" {code}" if code else "")
        if quotas:
            # Which quota ran out (per minute or per day) is what tells a pause from a dead end.
            text += f" [quota: {', '.join(dict.fromkeys(quotas))}]"
        text += f": {message}" if message else ""
        return self._error(text, http_status, code, request_id, retry_after=retry_after)


def _has_str(item: object, key: str) -> bool:
    return isinstance(item, dict) and isinstance(item.get(key), str)


def _ms(seconds: float) -> int:
    return max(1, int(round(float(seconds) * 1000)))


def _enum_value(value: object) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _usage(meta: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    if meta is None:
        return None
    return Usage(
        prompt_tokens=as_int(meta.prompt_token_count),
        # Thinking tokens are billed as output.
        completion_tokens=as_int(meta.candidates_token_count) + as_int(meta.thoughts_token_count),
        cached_tokens=as_int(meta.cached_content_token_count),
    )
