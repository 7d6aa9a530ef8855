"""GeminiProvider on the real google-genai SDK against the loopback fake Gemini server."""

from __future__ import annotations

import json
import time

import pytest

from jobs.errors import ErrorType, classify
from jobs.providers import reset_providers
from jobs.providers.base import ProviderError, Usage
from jobs.providers.gemini import GEMINI_PAGE_SCHEMA, to_gemini_schema
from jobs.providers.prompting import SYSTEM_PROMPT
from jobs.schema import PAGE_SCHEMA, PageInvalid, parse_page
from tests.fakes import DEFAULT_API_KEY, SAMPLE_PAGE
from tests.fakes.gemini_server import SCHEMA_FIELDS, normalized_schema
from tests.providers.conftest import generate

MODEL = "gemini-2.0-flash"
# candidates (300) + thoughts (50) are both billed as output.
BILLED = Usage(prompt_tokens=1200, completion_tokens=350, cached_tokens=1024)


def fail(server, scenario, **kwargs) -> ProviderError:
    server.enqueue(scenario)
    with pytest.raises(ProviderError) as info:
        generate("google", MODEL, **kwargs)
    return info.value


def keys(node: object) -> set[str]:
    """Every schema keyword used anywhere in a (normalised) Gemini schema."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            if key == "properties":
                for sub in value.values():
                    found |= keys(sub)
            elif key in ("items", "anyOf"):
                found |= keys(value)
    elif isinstance(node, list):
        for item in node:
            found |= keys(item)
    return found


# -- the schema conversion ----------------------------------------------------------------------


def test_page_schema_converts_to_gemini_schema_fields_only():
    assert keys(GEMINI_PAGE_SCHEMA) <= SCHEMA_FIELDS
    text = json.dumps(GEMINI_PAGE_SCHEMA)
    for dropped in ("$ref", "$defs", "$schema", "additionalProperties"):
        assert dropped not in text


def test_conversion_inlines_refs_and_keeps_constraints():
    sections = GEMINI_PAGE_SCHEMA["properties"]["sections"]
    assert (sections["minItems"], sections["maxItems"]) == (1, 30)
    branches = sections["items"]["anyOf"]
    assert [b["properties"]["type"]["enum"] for b in branches] == [[name] for name in PAGE_SCHEMA["$defs"]]
    hero = branches[0]
    assert hero["required"] == PAGE_SCHEMA["$defs"]["hero"]["required"]
    assert hero["properties"]["heading"]["maxLength"] == 200
    assert hero["propertyOrdering"] == list(PAGE_SCHEMA["$defs"]["hero"]["properties"])
    assert GEMINI_PAGE_SCHEMA["propertyOrdering"] == ["title", "meta", "sections"]


def test_conversion_handles_nullable_const_and_refuses_recursion():
    converted = to_gemini_schema(
        {
            "type": "object",
            "properties": {
                "a": {"type": ["string", "null"]},
                "b": {"anyOf": [{"$ref": "#/$defs/x"}, {"type": "null"}]},
                "c": {"const": "fixed"},
            },
            "$defs": {"x": {"type": "integer", "minimum": 1, "additionalProperties": False}},
        }
    )
    assert converted["properties"]["a"] == {"nullable": True, "type": "string"}
    assert converted["properties"]["b"] == {"nullable": True, "type": "integer", "minimum": 1}
    assert converted["properties"]["c"] == {"enum": ["fixed"], "type": "string"}

    with pytest.raises(ValueError, match="recursive"):
        to_gemini_schema({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"})


# -- calls against the fake -----------------------------------------------------------------------


def test_ok_returns_the_page_usage_and_response_id(gemini_server):
    response = generate("google", MODEL)

    assert parse_page(response.text) == SAMPLE_PAGE
    assert response.usage == BILLED
    assert response.request_id == json.loads(gemini_server.last.reply_body)["responseId"]


def test_request_carries_model_key_and_response_schema(gemini_server):
    generate("google", MODEL, prompt="A bakery")

    sent = gemini_server.last
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == DEFAULT_API_KEY
    assert "authorization" not in sent.headers and "key" not in sent.query
    config = sent.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    # google-genai sends the schema's keys in snake_case and upper-cases types; the API reads both.
    assert "any_of" in json.dumps(config["responseSchema"])
    schema = normalized_schema(sent)
    assert keys(schema) <= SCHEMA_FIELDS
    assert schema["type"] == "OBJECT"
    assert schema["required"] == ["title", "meta", "sections"]
    assert len(schema["properties"]["sections"]["items"]["anyOf"]) == len(PAGE_SCHEMA["$defs"])
    assert sent.body["systemInstruction"]["parts"] == [{"text": SYSTEM_PROMPT}]
    assert sent.body["contents"][0]["role"] == "user"
    assert "<page_request>\nA bakery\n</page_request>" in sent.body["contents"][0]["parts"][0]["text"]
    assert "tools" not in sent.body


def test_a_versioned_id_is_sent_as_submitted(gemini_server):
    # It shares gemini-2.0-flash's price, but the caller pinned that version: the API gets it, not the alias.
    generate("google", "gemini-2.0-flash-001")

    assert gemini_server.last.path == "/v1beta/models/gemini-2.0-flash-001:generateContent"


def test_options_reach_the_request(gemini_server):
    generate("google", MODEL, options={"max_tokens": 1500, "temperature": 0.4})

    config = gemini_server.last.body["generationConfig"]
    assert (config["maxOutputTokens"], config["temperature"]) == (1500, 0.4)


def test_thought_parts_are_not_part_of_the_answer(gemini_server):
    gemini_server.enqueue("thoughts")

    response = generate("google", MODEL)

    assert parse_page(response.text) == SAMPLE_PAGE
    assert response.usage == BILLED


def test_invalid_page_answer_returns_normally_with_usage_and_fails_validation(gemini_server):
    gemini_server.enqueue("invalid_page")

    response = generate("google", MODEL)

    assert response.usage == BILLED
    with pytest.raises(PageInvalid) as info:
        parse_page(response.text)
    assert (classify(info.value).type, classify(info.value).retryable) == (ErrorType.VALIDATION_ERROR, True)


@pytest.mark.parametrize(
    ("scenario", "status", "code", "kind", "retryable"),
    [
        ("400", 400, "INVALID_ARGUMENT", ErrorType.INVALID_REQUEST, False),
        ("context_length", 400, "INVALID_ARGUMENT", ErrorType.CONTEXT_LENGTH, False),
        ("api_key_invalid", 400, "API_KEY_INVALID", ErrorType.AUTH_ERROR, False),
        ("401", 401, "UNAUTHENTICATED", ErrorType.AUTH_ERROR, False),
        ("403", 403, "PERMISSION_DENIED", ErrorType.AUTH_ERROR, False),
        ("404", 404, "NOT_FOUND", ErrorType.MODEL_ERROR, False),
        ("408", 408, "DEADLINE_EXCEEDED", ErrorType.TIMEOUT, True),
        ("413", 413, "INVALID_ARGUMENT", ErrorType.CONTEXT_LENGTH, False),
        ("429", 429, "RESOURCE_EXHAUSTED", ErrorType.RATE_LIMIT, True),
        ("quota", 429, "RESOURCE_EXHAUSTED", ErrorType.AUTH_ERROR, False),
        ("500", 500, "INTERNAL", ErrorType.PROVIDER_ERROR, True),
        ("503", 503, "UNAVAILABLE", ErrorType.SERVICE_UNAVAILABLE, True),
        ("504", 504, "DEADLINE_EXCEEDED", ErrorType.TIMEOUT, True),
    ],
)
def test_http_errors_carry_status_code_and_classify(gemini_server, scenario, status, code, kind, retryable):
    error = fail(gemini_server, scenario)

    assert (error.provider, error.status, error.code, error.transport) == ("google", status, code, None)
    assert error.usage is None
    verdict = classify(error)
    assert (verdict.type, verdict.retryable) == (kind, retryable)
    assert len(gemini_server.requests) == 1  # no SDK retries (google-genai retries 429/5xx when asked to)


def test_resource_exhausted_retry_info_reaches_backoff(gemini_server):
    error = fail(gemini_server, "429")

    assert error.retry_after == 37.0  # RetryInfo.retryDelay "37s"
    assert classify(error).retry_after == 37.0
    assert "PerMinute" in error.message


def test_retry_delay_falls_back_to_the_message(gemini_server):
    error = fail(gemini_server, {"name": "429", "retry_after": None, "message_retry": "12.5"})

    assert error.retry_after == 12.5  # "Please retry in 12.5s."


def test_daily_quota_is_not_retried(gemini_server):
    error = fail(gemini_server, "quota")

    assert "PerDay" in error.message
    assert classify(error).retryable is False


def test_connection_reset_is_a_network_error(gemini_server):
    # google-genai lets the raw httpx2 error through; the provider maps it.
    gemini_server.enqueue("reset", "ok")

    with pytest.raises(ProviderError) as info:
        generate("google", MODEL)

    assert (info.value.transport, info.value.status) == ("connection", None)
    assert (classify(info.value).type, classify(info.value).retryable) == (ErrorType.NETWORK_ERROR, True)
    assert len(gemini_server.requests) == 1


def test_read_timeout_is_a_timeout(gemini_server, settings):
    settings.AI_PROVIDER_TIMEOUT_SECONDS = 0.5
    reset_providers()
    started = time.monotonic()

    error = fail(gemini_server, "timeout")

    assert time.monotonic() - started < 1.9
    assert (error.transport, error.status) == ("timeout", None)
    assert (classify(error).type, classify(error).retryable) == (ErrorType.TIMEOUT, True)


def test_call_context_timeout_applies_per_call(gemini_server):
    started = time.monotonic()

    error = fail(gemini_server, "timeout", timeout=0.5)

    assert error.transport == "timeout"
    assert time.monotonic() - started < 1.9


@pytest.mark.parametrize("scenario", ["not_json", "bad_json"])
def test_a_200_that_is_not_json_is_a_provider_error(gemini_server, scenario):
    error = fail(gemini_server, scenario)

    assert (error.status, error.code) == (200, "malformed_response")
    assert (classify(error).type, classify(error).retryable) == (ErrorType.PROVIDER_ERROR, True)


@pytest.mark.parametrize(
    ("scenario", "code", "kind", "retryable", "usage"),
    [
        ("blocked", "SAFETY", ErrorType.CONTENT_POLICY, False, BILLED),
        ("prompt_blocked", "PROHIBITED_CONTENT", ErrorType.CONTENT_POLICY, False, Usage(prompt_tokens=1200)),
        ("truncated", "output_truncated", ErrorType.VALIDATION_ERROR, True, BILLED),
        ("empty", "empty_response", ErrorType.PROVIDER_ERROR, True, BILLED),
    ],
)
def test_unusable_answers_are_errors_that_keep_the_billed_usage(gemini_server, scenario, code, kind, retryable, usage):
    error = fail(gemini_server, scenario)

    assert (error.status, error.code) == (200, code)
    assert error.usage == usage
    assert error.request_id
    assert (classify(error).type, classify(error).retryable) == (kind, retryable)


def test_wrong_key_is_an_auth_error_and_the_key_is_never_in_the_message(gemini_server, settings):
    secret = "AIzaSyTHISISASECRETKEY0123456789abc"
    settings.GEMINI_API_KEY = secret
    gemini_server.echo_key = True
    reset_providers()

    with pytest.raises(ProviderError) as info:
        generate("google", MODEL)

    error = info.value
    assert (error.status, error.code) == (400, "API_KEY_INVALID")
    assert classify(error).type == ErrorType.AUTH_ERROR
    assert secret in gemini_server.last.reply_body  # the server did echo it back
    for text in (str(error), repr(error), classify(error).message):
        assert "SECRETKEY" not in text
