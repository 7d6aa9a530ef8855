"""AnthropicProvider on the real anthropic SDK against the loopback fake Anthropic server."""

from __future__ import annotations

import json
import time

import anthropic
import pytest

from jobs.errors import ErrorType, classify
from jobs.providers import reset_providers
from jobs.providers.anthropic import DEFAULT_MAX_TOKENS, TOOL_NAME
from jobs.providers.base import ProviderError, Usage
from jobs.providers.prompting import SYSTEM_PROMPT
from jobs.schema import PageInvalid, model_schema, parse_page
from tests.fakes import DEFAULT_API_KEY, SAMPLE_PAGE
from tests.providers.conftest import generate

MODEL = "claude-3-haiku"  # as a job stores it; the API is sent the dated id
# input_tokens (100) excludes the cache: prompt = 100 + 1024 read + 76 written.
BILLED = Usage(prompt_tokens=1200, completion_tokens=350, cached_tokens=1024, cache_write_tokens=76)


def fail(server, scenario, **kwargs) -> ProviderError:
    server.enqueue(scenario)
    with pytest.raises(ProviderError) as info:
        generate("anthropic", MODEL, **kwargs)
    return info.value


def test_ok_returns_the_tool_input_as_page_json_with_usage(anthropic_server):
    response = generate("anthropic", MODEL)

    assert json.loads(response.text) == SAMPLE_PAGE
    assert parse_page(response.text) == SAMPLE_PAGE
    assert response.usage == BILLED
    assert response.request_id == anthropic_server.last.reply_headers["request-id"]


def test_request_forces_the_page_tool_and_sends_the_key_as_bearer(anthropic_server):
    generate("anthropic", MODEL, prompt="A bakery")

    sent = anthropic_server.last
    assert sent.path == "/v1/messages"
    # anthropic>=2 sends the key as a bearer token, not x-api-key.
    assert sent.headers["authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert "x-api-key" not in sent.headers
    assert sent.headers["anthropic-version"]
    body = sent.body
    assert body["model"] == "claude-3-haiku-20240307"
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert body["system"] == SYSTEM_PROMPT
    assert body["tools"] == [
        {"name": TOOL_NAME, "description": body["tools"][0]["description"], "input_schema": model_schema()}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": TOOL_NAME}
    assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    assert "<page_request>\nA bakery\n</page_request>" in body["messages"][0]["content"]


def test_max_tokens_option_reaches_the_request(anthropic_server):
    # anthropic 2.x's messages.create has no `temperature`; that option is not sent.
    generate("anthropic", MODEL, options={"max_tokens": 2000, "temperature": 0.2})

    assert anthropic_server.last.body["max_tokens"] == 2000
    assert "temperature" not in anthropic_server.last.body


def test_a_text_answer_instead_of_the_tool_is_passed_on_for_validation(anthropic_server):
    anthropic_server.enqueue("text_answer")

    response = generate("anthropic", MODEL)

    assert parse_page(response.text) == SAMPLE_PAGE
    assert response.usage == BILLED


def test_invalid_page_answer_returns_normally_with_usage_and_fails_validation(anthropic_server):
    anthropic_server.enqueue("invalid_page")

    response = generate("anthropic", MODEL)

    assert response.usage == BILLED
    with pytest.raises(PageInvalid) as info:
        parse_page(response.text)
    assert (classify(info.value).type, classify(info.value).retryable) == (ErrorType.VALIDATION_ERROR, True)


def test_the_sdk_raises_overloaded_as_an_internal_server_error_subclass():
    # Why classification reads status and error.type, never exception classes: in 2.x a 529 is
    # an InternalServerError (so "5xx" handling would catch it), in 1.x it was not.
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)


@pytest.mark.parametrize(
    ("scenario", "status", "code", "kind", "retryable"),
    [
        ("400", 400, "invalid_request_error", ErrorType.INVALID_REQUEST, False),
        ("context_length", 400, "invalid_request_error", ErrorType.CONTEXT_LENGTH, False),
        ("401", 401, "authentication_error", ErrorType.AUTH_ERROR, False),
        ("402", 402, "billing_error", ErrorType.AUTH_ERROR, False),
        ("403", 403, "permission_error", ErrorType.AUTH_ERROR, False),
        ("404", 404, "not_found_error", ErrorType.MODEL_ERROR, False),
        ("408", 408, "timeout_error", ErrorType.TIMEOUT, True),
        ("413", 413, "request_too_large", ErrorType.CONTEXT_LENGTH, False),
        ("429", 429, "rate_limit_error", ErrorType.RATE_LIMIT, True),
        ("quota", 429, "enforced_spend_limit_reached", ErrorType.AUTH_ERROR, False),
        ("500", 500, "api_error", ErrorType.PROVIDER_ERROR, True),
        ("503", 503, "api_error", ErrorType.SERVICE_UNAVAILABLE, True),
        ("504", 504, "timeout_error", ErrorType.TIMEOUT, True),
        ("529", 529, "overloaded_error", ErrorType.SERVICE_UNAVAILABLE, True),
    ],
)
def test_http_errors_carry_status_code_and_classify(anthropic_server, scenario, status, code, kind, retryable):
    error = fail(anthropic_server, scenario)

    assert (error.provider, error.status, error.code, error.transport) == ("anthropic", status, code, None)
    assert error.usage is None
    assert error.request_id and error.request_id.startswith("req_")
    verdict = classify(error)
    assert (verdict.type, verdict.retryable) == (kind, retryable)
    assert len(anthropic_server.requests) == 1  # no SDK retries


def test_rate_limit_retry_after_reaches_backoff(anthropic_server):
    error = fail(anthropic_server, "429")

    assert error.retry_after == 7.0
    assert classify(error).retry_after == 7.0


def test_retry_after_ms_wins(anthropic_server):
    assert fail(anthropic_server, {"name": "529", "retry_after": 30, "retry_after_ms": 250}).retry_after == 0.25


def test_connection_reset_is_a_network_error(anthropic_server):
    anthropic_server.enqueue("reset", "ok")

    with pytest.raises(ProviderError) as info:
        generate("anthropic", MODEL)

    assert (info.value.transport, info.value.status) == ("connection", None)
    assert (classify(info.value).type, classify(info.value).retryable) == (ErrorType.NETWORK_ERROR, True)
    assert len(anthropic_server.requests) == 1


def test_read_timeout_is_a_timeout(anthropic_server, settings):
    settings.AI_PROVIDER_TIMEOUT_SECONDS = 0.5
    reset_providers()
    started = time.monotonic()

    error = fail(anthropic_server, "timeout")

    assert time.monotonic() - started < 1.9
    assert (error.transport, error.status) == ("timeout", None)
    assert (classify(error).type, classify(error).retryable) == (ErrorType.TIMEOUT, True)


@pytest.mark.parametrize("scenario", ["not_json", "bad_json"])
def test_a_200_that_is_not_json_is_a_provider_error(anthropic_server, scenario):
    error = fail(anthropic_server, scenario)

    assert (error.status, error.code) == (200, "malformed_response")
    assert (classify(error).type, classify(error).retryable) == (ErrorType.PROVIDER_ERROR, True)


@pytest.mark.parametrize(
    ("scenario", "code", "kind", "retryable"),
    [
        ("refusal", "refusal", ErrorType.CONTENT_POLICY, False),
        ("truncated", "output_truncated", ErrorType.VALIDATION_ERROR, True),
        ("empty", "empty_response", ErrorType.PROVIDER_ERROR, True),
    ],
)
def test_unusable_answers_are_errors_that_keep_the_billed_usage(anthropic_server, scenario, code, kind, retryable):
    error = fail(anthropic_server, scenario)

    assert (error.status, error.code) == (200, code)
    assert error.usage == BILLED
    assert (classify(error).type, classify(error).retryable) == (kind, retryable)


def test_wrong_key_is_an_auth_error_and_the_key_is_never_in_the_message(anthropic_server, settings):
    secret = "sk-ant-api03-THISISASECRETKEY0123456789"
    settings.ANTHROPIC_API_KEY = secret
    anthropic_server.echo_key = True
    reset_providers()

    with pytest.raises(ProviderError) as info:
        generate("anthropic", MODEL)

    error = info.value
    assert (error.status, error.code) == (401, "authentication_error")
    assert classify(error).type == ErrorType.AUTH_ERROR
    assert secret in anthropic_server.last.reply_body  # the server did echo it back
    for text in (str(error), repr(error), classify(error).message):
        assert "SECRETKEY" not in text
