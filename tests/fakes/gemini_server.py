"""A fake Gemini Developer API (``POST /v1beta/models/{model}:generateContent``) on loopback.

Speaks Gemini's wire format: the key as ``x-goog-api-key`` (or ``?key=``); a wrong key gets the
real 400 ``INVALID_ARGUMENT`` with an ``ErrorInfo`` reason ``API_KEY_INVALID``, a missing one the
403 ``PERMISSION_DENIED``; errors are ``{"error": {"code", "message", "status", "details"}}`` with
``google.rpc`` detail objects (``RetryInfo.retryDelay`` on 429s); answers carry
``usageMetadata`` and a ``responseId``. It checks ``generationConfig.responseSchema`` the way the
API parses it: keys in either camelCase or snake_case (google-genai sends snake_case), and any
key the API's ``Schema`` message lacks (``additionalProperties``, ``$ref``, ``$defs`` ...) is a 400
"Unknown name". ``normalized_schema(request)`` gives tests the schema with camelCase keys.

Scenarios (see ``tests.fakes.base`` for how one is chosen): the common ones (``blocked`` is
``finishReason: SAFETY``), plus ``api_key_invalid``, ``quota`` (429 RESOURCE_EXHAUSTED on a
per-day quota), ``prompt_blocked`` (``promptFeedback.blockReason``) and ``thoughts`` (a thought
part before the answer). ``base_url`` is what ``GEMINI_BASE_URL`` should be.

    python -m tests.fakes.gemini_server --port 8093
"""

from __future__ import annotations

import re

from tests.fakes.base import (
    COMMON_SCENARIOS,
    FakeProviderServer,
    RecordedRequest,
    Reply,
    Scenario,
    json_reply,
    new_id,
    serve_main,
)

_PATH = re.compile(r"^/(?P<version>v1|v1beta)/models/(?P<model>[^/:]+):generateContent$")

# Fields of google.ai.generativelanguage Schema, camelCase.
SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
TYPES = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})
# Fields of GenerateContentRequest and GenerationConfig (camelCase); anything else is a 400.
REQUEST_FIELDS = frozenset(
    {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "generationConfig", "cachedContent"}
)
GENERATION_CONFIG_FIELDS = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "imageConfig",
        "mediaResolution",
    }
)

USAGE = {
    "promptTokenCount": 1200,
    "candidatesTokenCount": 300,
    "thoughtsTokenCount": 50,
    "cachedContentTokenCount": 1024,
    "totalTokenCount": 1550,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1200}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 1024}],
}

_TYPE = "type.googleapis.com/google.rpc."


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def normalize_keys(node: object, *, in_properties: bool = False) -> object:
    """The schema with snake_case keys turned camelCase, as the API's JSON parser reads them.
    Names under ``properties`` are the schema's own and are kept as they are."""
    if isinstance(node, list):
        return [normalize_keys(item) for item in node]
    if not isinstance(node, dict):
        return node
    if in_properties:
        return {name: normalize_keys(sub) for name, sub in node.items()}
    return {_camel(k): normalize_keys(v, in_properties=_camel(k) == "properties") for k, v in node.items()}


def normalized_schema(request: RecordedRequest) -> dict:
    config = (request.body or {}).get("generationConfig") or (request.body or {}).get("generation_config") or {}
    schema = config.get("responseSchema", config.get("response_schema"))
    return normalize_keys(schema) if schema is not None else {}


def schema_problem(schema: object, where: str = "generation_config.response_schema") -> str | None:
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key not in SCHEMA_FIELDS:
            return f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."
        if key == "type" and str(value).upper() not in TYPES:
            return f"Invalid value at '{where}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type)"
    for name, sub in (schema.get("properties") or {}).items():
        found = schema_problem(sub, f"{where}.properties[{name}].value")
        if found:
            return found
    if isinstance(schema.get("items"), dict):
        found = schema_problem(schema["items"], f"{where}.items")
        if found:
            return found
    for i, sub in enumerate(schema.get("anyOf") or []):
        found = schema_problem(sub, f"{where}.any_of[{i}]")
        if found:
            return found
    return None


def _error(status: int, rpc_status: str, message: str, details: list | None = None, headers: dict | None = None):
    error: dict = {"code": status, "message": message, "status": rpc_status}
    if details is not None:
        error["details"] = details
    return json_reply(status, {"error": error}, headers)


def _error_info(reason: str) -> dict:
    return {
        "@type": _TYPE + "ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }


def _quota_failure(quota_id: str, limit: int) -> dict:
    return {
        "@type": _TYPE + "QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                "quotaValue": str(limit),
            }
        ],
    }


class FakeGeminiServer(FakeProviderServer):
    provider = "google"
    scenarios = COMMON_SCENARIOS | {"api_key_invalid", "quota", "prompt_blocked", "thoughts"}

    def route(self, request: RecordedRequest) -> Reply | str | None:
        match = _PATH.match(request.path)
        if request.method != "POST" or not match:
            return None
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not given:
            return _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). Please use API "
                "Key or other form of API consumer identity to call this API.",
            )
        if given != self.api_key:
            return self._api_key_invalid(given if self.echo_key else None)
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list) or not body["contents"]:
            return _error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified")
        config = body.get("generationConfig") or body.get("generation_config") or {}
        unknown = [k for k in body if _camel(k) not in REQUEST_FIELDS]
        unknown += [k for k in config if _camel(k) not in GENERATION_CONFIG_FIELDS]
        if unknown:
            return _error(400, "INVALID_ARGUMENT", f'Invalid JSON payload received. Unknown name "{unknown[0]}"')
        problem = schema_problem(normalized_schema(request))
        if problem:
            return _error(400, "INVALID_ARGUMENT", problem, [{"@type": _TYPE + "BadRequest", "fieldViolations": []}])
        if normalized_schema(request) and config.get("responseMimeType", config.get("response_mime_type")) != (
            "application/json"
        ):
            return _error(400, "INVALID_ARGUMENT", "responseSchema requires responseMimeType application/json")
        return match.group("model")

    def not_found(self, request: RecordedRequest) -> Reply:
        return _error(404, "NOT_FOUND", f"Requested entity was not found: {request.path}")

    def _api_key_invalid(self, given: str | None = None) -> Reply:
        return _error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key." + (f" Key: {given}" if given else ""),
            [
                _error_info("API_KEY_INVALID"),
                {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": "API key not valid."},
            ],
        )

    def render(self, scenario: Scenario, request: RecordedRequest, model: str) -> Reply:
        name = scenario.name
        transport = self.common_transport(scenario)
        if transport is not None:
            return transport
        if name in ("ok", "invalid_page"):
            return self._answer(model, [{"text": self.page_text(scenario)}], "STOP", scenario)
        if name == "thoughts":
            parts = [
                {"text": "Planning the sections first.", "thought": True},
                {"text": self.page_text(Scenario("ok"))},
            ]
            return self._answer(model, parts, "STOP", scenario)
        if name == "truncated":
            return self._answer(model, [{"text": self.page_text(Scenario("ok"))[:200]}], "MAX_TOKENS", scenario)
        if name == "blocked":
            ratings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]
            return self._answer(model, None, "SAFETY", scenario, safety=ratings)
        if name == "empty":
            return self._answer(model, [], "STOP", scenario)
        if name == "prompt_blocked":
            usage = {"promptTokenCount": 1200, "totalTokenCount": 1200}
            body = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": usage}
            return json_reply(200, {**body, "modelVersion": model, "responseId": new_id("")})
        if name == "400":
            return _error(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config.temperature' (TYPE_FLOAT)")
        if name == "context_length":
            return _error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200345) exceeds the maximum number of tokens allowed (1048576).",
            )
        if name == "api_key_invalid":
            return self._api_key_invalid()
        if name == "401":
            return _error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
                "valid authentication credential.",
            )
        if name == "403":
            return _error(403, "PERMISSION_DENIED", "The caller does not have permission")
        if name == "404":
            return _error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported for generateContent. Call "
                "ListModels to see the list of available models and their supported methods.",
            )
        if name == "408":
            return _error(408, "DEADLINE_EXCEEDED", "Request timed out before the body was received.")
        if name == "413":
            return _error(413, "INVALID_ARGUMENT", "Request payload size exceeds the limit: 20971520 bytes.")
        if name == "429":
            seconds = scenario.get("retry_after", 37)
            details = [
                _quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", 15),
                {"@type": _TYPE + "Help", "links": [{"description": "Learn more", "url": "https://ai.google.dev/"}]},
            ]
            if seconds is not None:
                details.append({"@type": _TYPE + "RetryInfo", "retryDelay": f"{seconds}s"})
            return _error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details. For more information "
                "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for "
                "metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 15, model: "
                f"{model}\nPlease retry in {scenario.get('message_retry', '37.5')}s.",
                details,
            )
        if name == "quota":
            details = [
                _quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier", 200),
                {"@type": _TYPE + "RetryInfo", "retryDelay": "43000s"},
            ]
            return _error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.\n* Quota exceeded for "
                "metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 200, model: "
                f"{model}\nPlease retry in 11h56m40s.",
                details,
            )
        if name == "500":
            return _error(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            )
        if name == "503":
            return _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        if name == "504":
            return _error(504, "DEADLINE_EXCEEDED", "The request timed out. Please try again.")
        raise AssertionError(f"unhandled scenario {name}")

    @staticmethod
    def _answer(model: str, parts: list | None, finish: str, scenario: Scenario, safety: list | None = None) -> Reply:
        candidate: dict = {"finishReason": finish, "index": 0}
        if parts is not None:
            candidate["content"] = {"parts": parts, "role": "model"}
        if safety:
            candidate["safetyRatings"] = safety
        body = {
            "candidates": [candidate],
            "usageMetadata": {**USAGE, **(scenario.get("usage") or {})},
            "modelVersion": model,
            "responseId": new_id(""),
        }
        return json_reply(200, body)


if __name__ == "__main__":
    serve_main(FakeGeminiServer)
