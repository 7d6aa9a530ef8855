"""Error classification: the one place that decides what a failure means.

Everything that decides whether to retry asks ``classify``. Providers only extract what
the provider reported into a ``ProviderError`` (status, the provider's own error code,
transport failure, Retry-After); this module maps those facts to an ``ErrorType``.
Codes are checked before statuses because providers reuse statuses for different
meanings (OpenAI's 429 is a rate limit *or* an exhausted quota).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from django.db import models
from rest_framework import status

from aipb.exceptions import ServiceError
from jobs.providers.base import ProviderError
from jobs.schema import PageInvalid


class ErrorType(models.TextChoices):
    TIMEOUT = "TIMEOUT"
    RATE_LIMIT = "RATE_LIMIT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    NETWORK_ERROR = "NETWORK_ERROR"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    AUTH_ERROR = "AUTH_ERROR"
    MODEL_ERROR = "MODEL_ERROR"
    CONTEXT_LENGTH = "CONTEXT_LENGTH"
    CONTENT_POLICY = "CONTENT_POLICY"
    INVALID_REQUEST = "INVALID_REQUEST"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"  # the owner's spending limit is reached: never sent to the provider
    UNKNOWN = "UNKNOWN"


RETRYABLE: frozenset[str] = frozenset(
    {
        ErrorType.TIMEOUT,
        ErrorType.RATE_LIMIT,
        ErrorType.SERVICE_UNAVAILABLE,
        ErrorType.PROVIDER_ERROR,
        ErrorType.NETWORK_ERROR,
        ErrorType.VALIDATION_ERROR,
    }
)

# Provider error codes/types (OpenAI `error.code`/`error.type`, Anthropic `error.type`,
# Gemini `error.status`/`details[].reason`), lower-cased.
_CODE_TYPES: dict[str, ErrorType] = {
    # quota and billing: retrying cannot help
    "insufficient_quota": ErrorType.AUTH_ERROR,
    "billing_error": ErrorType.AUTH_ERROR,
    "billing_hard_limit_reached": ErrorType.AUTH_ERROR,
    # Anthropic `error.details.error_code` on 429s/400s that waiting does not fix
    "enforced_spend_limit_reached": ErrorType.AUTH_ERROR,
    "contract_spend_limit_reached": ErrorType.AUTH_ERROR,
    "linked_organization_spend_limit_reached": ErrorType.AUTH_ERROR,
    "linked_organization_billing_unavailable": ErrorType.AUTH_ERROR,
    "organization_on_hold": ErrorType.AUTH_ERROR,
    # credentials and permissions
    "invalid_api_key": ErrorType.AUTH_ERROR,
    "api_key_invalid": ErrorType.AUTH_ERROR,
    "authentication_error": ErrorType.AUTH_ERROR,
    "permission_error": ErrorType.AUTH_ERROR,
    "permission_denied": ErrorType.AUTH_ERROR,
    "unauthenticated": ErrorType.AUTH_ERROR,
    # models
    "model_not_found": ErrorType.MODEL_ERROR,
    "not_found_error": ErrorType.MODEL_ERROR,
    "not_found": ErrorType.MODEL_ERROR,
    # request size
    "context_length_exceeded": ErrorType.CONTEXT_LENGTH,
    "string_above_max_length": ErrorType.CONTEXT_LENGTH,
    "request_too_large": ErrorType.CONTEXT_LENGTH,
    "model_context_window_exceeded": ErrorType.CONTEXT_LENGTH,  # Anthropic stop_reason
    # content policy
    "content_filter": ErrorType.CONTENT_POLICY,
    "content_policy_violation": ErrorType.CONTENT_POLICY,
    "safety": ErrorType.CONTENT_POLICY,
    "prohibited_content": ErrorType.CONTENT_POLICY,
    "blocklist": ErrorType.CONTENT_POLICY,
    "refusal": ErrorType.CONTENT_POLICY,  # OpenAI message.refusal, Anthropic stop_reason
    "spii": ErrorType.CONTENT_POLICY,  # Gemini finish/block reasons from here on
    "jailbreak": ErrorType.CONTENT_POLICY,
    "model_armor": ErrorType.CONTENT_POLICY,
    "image_safety": ErrorType.CONTENT_POLICY,
    "image_prohibited_content": ErrorType.CONTENT_POLICY,
    # transient
    "overloaded_error": ErrorType.SERVICE_UNAVAILABLE,
    "unavailable": ErrorType.SERVICE_UNAVAILABLE,
    "rate_limit_exceeded": ErrorType.RATE_LIMIT,
    "rate_limit_error": ErrorType.RATE_LIMIT,
    "resource_exhausted": ErrorType.RATE_LIMIT,
    "ramp_limit_exceeded": ErrorType.RATE_LIMIT,
    "deadline_exceeded": ErrorType.TIMEOUT,
    "timeout_error": ErrorType.TIMEOUT,
    "api_error": ErrorType.PROVIDER_ERROR,
    "internal": ErrorType.PROVIDER_ERROR,
    "malformed_response": ErrorType.PROVIDER_ERROR,
    "empty_response": ErrorType.PROVIDER_ERROR,
    # the answer was cut off at the output token limit: a re-ask, like an invalid page
    "output_truncated": ErrorType.VALIDATION_ERROR,
}

# Catch-all types that say less than the HTTP status beside them (Anthropic sends `api_error`
# with a 503, Ollama with a 404): the status decides when there is one.
_GENERIC_CODES = frozenset({"api_error", "internal", "server_error"})

# A rate-limit code whose message says the quota is gone for the day (Gemini names the quota,
# e.g. GenerateRequestsPerDayPerProjectPerModel), the spend cap is hit, or the model has no
# quota at all ("limit: 0"): waiting out a backoff will not help. Gemini's per-minute 429s also
# say "exceeded your current quota ... billing details", so those words alone decide nothing.
_QUOTA_EXHAUSTED = re.compile(r"per ?day|spending cap|credits are depleted|prepayment|\blimit: 0\b", re.IGNORECASE)

# Phrases providers use in 400 messages for over-long prompts, where they send no code.
_CONTEXT_PHRASES = (
    "prompt is too long",
    "context length",
    "context window",
    "too many tokens",
    "maximum context",
    "exceeds the maximum number of tokens",  # Gemini: "The input token count (N) exceeds the maximum ..."
)


class BudgetExceeded(ServiceError):
    """A spending limit is reached (usage.budgets): submission answers 429 and writes nothing; the pipeline ends
    the job BUDGET_EXCEEDED before its provider call. ``details`` names the limit (scope, name, limit_usd,
    spent_usd, resets_at)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "budget_exceeded"


@dataclass(frozen=True)
class Classified:
    type: ErrorType
    retryable: bool
    message: str
    retry_after: float | None = None


def _from_status(status: int) -> ErrorType:
    if status in (401, 403):
        return ErrorType.AUTH_ERROR
    if status == 402:
        return ErrorType.AUTH_ERROR
    if status == 404:
        return ErrorType.MODEL_ERROR
    if status in (408, 504):
        return ErrorType.TIMEOUT
    if status == 413:
        return ErrorType.CONTEXT_LENGTH
    if status == 429:
        return ErrorType.RATE_LIMIT
    if status in (503, 529):
        return ErrorType.SERVICE_UNAVAILABLE
    if status >= 500 or status == 200:
        return ErrorType.PROVIDER_ERROR
    if 400 <= status < 500:
        return ErrorType.INVALID_REQUEST
    return ErrorType.UNKNOWN


def _classify_provider_error(exc: ProviderError) -> ErrorType:
    if exc.transport == "timeout":
        return ErrorType.TIMEOUT
    if exc.transport == "connection":
        return ErrorType.NETWORK_ERROR
    code = (exc.code or "").lower()
    if code in _GENERIC_CODES and exc.status not in (None, 200):
        code = ""
    if code in _CODE_TYPES:
        found = _CODE_TYPES[code]
        # Gemini reports both per-minute limits and exhausted quotas as RESOURCE_EXHAUSTED.
        if found is ErrorType.RATE_LIMIT and _mentions_quota(exc.message):
            return ErrorType.AUTH_ERROR
        return found
    if exc.status in (400, 422) and any(p in exc.message.lower() for p in _CONTEXT_PHRASES):
        return ErrorType.CONTEXT_LENGTH
    if exc.status is not None:
        return _from_status(exc.status)
    return ErrorType.UNKNOWN


def _mentions_quota(message: str) -> bool:
    return bool(_QUOTA_EXHAUSTED.search(message))


def classify(exc: BaseException) -> Classified:
    """Map any exception from an attempt to its error type and retryability."""
    retry_after = None
    if isinstance(exc, PageInvalid):
        kind = ErrorType.VALIDATION_ERROR
    elif isinstance(exc, BudgetExceeded):
        kind = ErrorType.BUDGET_EXCEEDED
    elif isinstance(exc, ProviderError):
        kind = _classify_provider_error(exc)
        retry_after = exc.retry_after
    elif isinstance(exc, (TimeoutError, socket.timeout)):
        kind = ErrorType.TIMEOUT
    elif isinstance(exc, ConnectionError):
        kind = ErrorType.NETWORK_ERROR
    else:
        kind = ErrorType.UNKNOWN
    message = str(exc) or exc.__class__.__name__
    return Classified(type=kind, retryable=kind in RETRYABLE, message=message[:2000], retry_after=retry_after)
