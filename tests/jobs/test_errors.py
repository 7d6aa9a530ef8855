"""jobs.errors.classify: every row of the error table (DESIGN.md §3, with the rows docs/ARCHITECTURE.md adds),
from the facts a provider module extracts into a ProviderError or the exception the attempt raised.

How each provider's real SDK errors become those facts is tested per provider in tests/providers/."""

from __future__ import annotations

import pytest

from jobs.errors import RETRYABLE, BudgetExceeded, ErrorType, classify
from jobs.providers.base import ProviderError
from jobs.schema import PageInvalid, parse_page


def err(message: str = "provider said no", **facts) -> ProviderError:
    return ProviderError(message, provider="test", **facts)


def page_error(text: str) -> PageInvalid:
    with pytest.raises(PageInvalid) as info:
        parse_page(text)
    return info.value


ROWS = [
    # TIMEOUT: client/read timeouts, 408, 504, Gemini DEADLINE_EXCEEDED
    ("client timeout", err(transport="timeout"), ErrorType.TIMEOUT),
    ("TimeoutError", TimeoutError("read timed out"), ErrorType.TIMEOUT),
    ("408", err(status=408), ErrorType.TIMEOUT),
    ("504", err(status=504), ErrorType.TIMEOUT),
    ("Gemini DEADLINE_EXCEEDED", err(status=504, code="DEADLINE_EXCEEDED"), ErrorType.TIMEOUT),
    # RATE_LIMIT: 429 that is not an exhausted quota
    ("429", err(status=429), ErrorType.RATE_LIMIT),
    ("OpenAI rate_limit_exceeded", err(status=429, code="rate_limit_exceeded"), ErrorType.RATE_LIMIT),
    (
        "Gemini per-minute RESOURCE_EXHAUSTED",
        err(
            "You exceeded your current quota, please check your plan and billing details. "
            "Quota: GenerateRequestsPerMinutePerProjectPerModel",
            status=429,
            code="RESOURCE_EXHAUSTED",
        ),
        ErrorType.RATE_LIMIT,
    ),
    # SERVICE_UNAVAILABLE: 503, Anthropic 529
    ("503", err(status=503), ErrorType.SERVICE_UNAVAILABLE),
    ("503 with a generic api_error", err(status=503, code="api_error"), ErrorType.SERVICE_UNAVAILABLE),
    ("Anthropic 529", err(status=529, code="overloaded_error"), ErrorType.SERVICE_UNAVAILABLE),
    ("Gemini UNAVAILABLE", err(status=503, code="UNAVAILABLE"), ErrorType.SERVICE_UNAVAILABLE),
    # PROVIDER_ERROR: other 5xx, a malformed provider response
    ("500", err(status=500), ErrorType.PROVIDER_ERROR),
    ("502", err(status=502), ErrorType.PROVIDER_ERROR),
    ("malformed body", err(status=200, code="malformed_response"), ErrorType.PROVIDER_ERROR),
    ("no choices", err(status=200, code="empty_response"), ErrorType.PROVIDER_ERROR),
    # NETWORK_ERROR: connection refused/reset, DNS
    ("connection refused", err(transport="connection"), ErrorType.NETWORK_ERROR),
    ("ConnectionRefusedError", ConnectionRefusedError("refused"), ErrorType.NETWORK_ERROR),
    ("ConnectionResetError", ConnectionResetError("reset by peer"), ErrorType.NETWORK_ERROR),
    ("DNS, as the SDKs report it", err("Name or service not known", transport="connection"), ErrorType.NETWORK_ERROR),
    # VALIDATION_ERROR: model output not JSON or not a valid page; an answer cut off at the token limit
    ("not JSON", page_error('{"title": "truncated page", "sections": ['), ErrorType.VALIDATION_ERROR),
    ("not a valid page", page_error('{"title": "", "sections": []}'), ErrorType.VALIDATION_ERROR),
    ("truncated output", err(status=200, code="output_truncated"), ErrorType.VALIDATION_ERROR),
    # AUTH_ERROR: 401, 403, invalid key, quota exhausted, 402 billing
    ("401", err(status=401), ErrorType.AUTH_ERROR),
    ("403", err(status=403), ErrorType.AUTH_ERROR),
    ("402", err(status=402), ErrorType.AUTH_ERROR),
    ("OpenAI invalid_api_key", err(status=401, code="invalid_api_key"), ErrorType.AUTH_ERROR),
    ("Gemini API_KEY_INVALID", err(status=400, code="API_KEY_INVALID"), ErrorType.AUTH_ERROR),
    ("OpenAI insufficient_quota on a 429", err(status=429, code="insufficient_quota"), ErrorType.AUTH_ERROR),
    (
        "Anthropic spend limit on a 429",
        err(status=429, code="enforced_spend_limit_reached"),
        ErrorType.AUTH_ERROR,
    ),
    (
        "Gemini daily quota",
        err("Quota exceeded: GenerateRequestsPerDayPerProjectPerModel", status=429, code="RESOURCE_EXHAUSTED"),
        ErrorType.AUTH_ERROR,
    ),
    ("Gemini model without quota", err("limit: 0", status=429, code="RESOURCE_EXHAUSTED"), ErrorType.AUTH_ERROR),
    # MODEL_ERROR: 404 model, unknown model
    ("404", err(status=404), ErrorType.MODEL_ERROR),
    ("model_not_found", err(status=404, code="model_not_found"), ErrorType.MODEL_ERROR),
    ("Anthropic not_found_error", err(status=404, code="not_found_error"), ErrorType.MODEL_ERROR),
    # CONTEXT_LENGTH: prompt too long for the model, 413
    ("413", err(status=413), ErrorType.CONTEXT_LENGTH),
    ("context_length_exceeded", err(status=400, code="context_length_exceeded"), ErrorType.CONTEXT_LENGTH),
    ("a 400 that says so", err("prompt is too long: 250000 tokens > 200000", status=400), ErrorType.CONTEXT_LENGTH),
    # CONTENT_POLICY: refused for content policy / safety
    ("content_filter", err(status=400, code="content_filter"), ErrorType.CONTENT_POLICY),
    ("Gemini SAFETY", err(status=200, code="SAFETY"), ErrorType.CONTENT_POLICY),
    ("refusal", err(status=200, code="refusal"), ErrorType.CONTENT_POLICY),
    # INVALID_REQUEST: any other 4xx
    ("400", err(status=400), ErrorType.INVALID_REQUEST),
    ("422", err(status=422), ErrorType.INVALID_REQUEST),
    # BUDGET_EXCEEDED: the owner's spending limit, found before the call (usage.budgets)
    (
        "a reached spending limit",
        BudgetExceeded("the monthly budget of user 'alice' is exhausted"),
        ErrorType.BUDGET_EXCEEDED,
    ),
    # UNKNOWN: anything else
    ("a bug of ours", ValueError("unexpected"), ErrorType.UNKNOWN),
    ("a ProviderError with no facts", err(), ErrorType.UNKNOWN),
    ("a status outside HTTP's errors", err(status=302), ErrorType.UNKNOWN),
]


@pytest.mark.parametrize(("exc", "kind"), [(exc, kind) for _, exc, kind in ROWS], ids=[row[0] for row in ROWS])
def test_every_row_of_the_error_table(exc, kind):
    verdict = classify(exc)
    assert verdict.type == kind
    assert verdict.retryable == (kind in RETRYABLE)


def test_the_table_is_covered_and_retryable_as_documented():
    assert {kind for _, _, kind in ROWS} == set(ErrorType)
    assert RETRYABLE == {
        ErrorType.TIMEOUT,
        ErrorType.RATE_LIMIT,
        ErrorType.SERVICE_UNAVAILABLE,
        ErrorType.PROVIDER_ERROR,
        ErrorType.NETWORK_ERROR,
        ErrorType.VALIDATION_ERROR,
    }


def test_retry_after_comes_from_the_provider_only():
    assert classify(err(status=429, retry_after=7.0)).retry_after == 7.0
    assert classify(err(status=503, retry_after=2.5)).retry_after == 2.5
    assert classify(TimeoutError()).retry_after is None
    assert classify(page_error("not json")).retry_after is None


def test_the_message_is_kept_bounded_and_never_empty():
    assert classify(err("x" * 5000, status=500)).message == "x" * 2000
    assert classify(RuntimeError()).message == "RuntimeError"
    assert classify(err("simulated: service unavailable", status=503)).message == "simulated: service unavailable"
