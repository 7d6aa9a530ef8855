"""A fake OpenAI Chat Completions API (``POST /v1/chat/completions``) on loopback.

Speaks OpenAI's wire format: ``Authorization: Bearer <key>`` (a wrong key gets the real 401
``invalid_api_key`` body, with the key masked the way OpenAI masks it), ``{"error": {"message",
"type", "param", "code"}}`` error bodies, ``x-request-id`` on every answer, rate-limit headers on
429s. It checks the request like the real API would: a model, messages, and a ``response_format``
``json_schema`` that strict mode accepts (every object closed, every property required, no
``minLength``/``maxLength``), answering 400 otherwise.

Scenarios (see ``tests.fakes.base`` for how one is chosen): the common ones, plus
``quota`` (429 ``insufficient_quota``), ``refusal`` (the model's ``refusal`` message) and
``blocked`` (``finish_reason: content_filter``). ``base_url`` is what ``OPENAI_BASE_URL`` should be.

    python -m tests.fakes.openai_server --port 8091
"""

from __future__ import annotations

import time

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

PATH = "/v1/chat/completions"
# Keywords OpenAI strict structured outputs refuse (string lengths among them).
_STRICT_UNSUPPORTED = ("minLength", "maxLength", "patternProperties")

# Chat Completions request fields; anything else is "Unrecognized request argument".
REQUEST_FIELDS = frozenset(
    {
        "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
        "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
    }
)  # fmt: skip

USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 350,
    "total_tokens": 1550,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None, headers=None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_reply(status, body, headers)


def strict_schema_problem(schema: object, context: tuple = ()) -> str | None:
    """The first reason OpenAI strict mode would refuse ``schema``, or None."""
    if not isinstance(schema, dict):
        return None
    for key in _STRICT_UNSUPPORTED:
        if key in schema:
            return f"In context={context}, '{key}' is not permitted."
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties", {})
        missing = [k for k in props if k not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'."
            )
        for name, sub in props.items():
            found = strict_schema_problem(sub, (*context, "properties", name))
            if found:
                return found
    children: list[tuple[tuple, object]] = []
    if isinstance(schema.get("items"), dict):
        children.append((("items",), schema["items"]))
    children += [(("anyOf", i), sub) for i, sub in enumerate(schema.get("anyOf") or [])]
    children += [(("$defs", name), sub) for name, sub in (schema.get("$defs") or {}).items()]
    for path, sub in children:
        found = strict_schema_problem(sub, (*context, *path))
        if found:
            return found
    return None


class FakeOpenAIServer(FakeProviderServer):
    provider = "openai"
    scenarios = COMMON_SCENARIOS | {"quota", "refusal"}

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def route(self, request: RecordedRequest) -> Reply | str | None:
        if request.method != "POST" or request.path != PATH:
            return None
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            given = auth.removeprefix("Bearer ").strip()
            shown = given if self.echo_key else (f"{given[:3]}***{given[-4:]}" if len(given) > 8 else "***")
            return _error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        body = request.body
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _error(400, "you must provide a model parameter", "invalid_request_error", param="model")
        unknown = sorted(set(body) - REQUEST_FIELDS)
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "[] is too short - 'messages'", "invalid_request_error", "empty_array", "messages")
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema") or {}
            if spec.get("strict"):
                problem = strict_schema_problem(spec.get("schema"))
                if problem:
                    return _error(
                        400,
                        f"Invalid schema for response_format '{spec.get('name')}': {problem}",
                        "invalid_request_error",
                        param="response_format",
                    )
        return body["model"]

    def render(self, scenario: Scenario, request: RecordedRequest, model: str) -> Reply:
        name = scenario.name
        transport = self.common_transport(scenario)
        if transport is not None:
            return transport
        rid = {"x-request-id": new_id("req_")}
        if name in ("ok", "invalid_page"):
            return self._completion(model, self.page_text(scenario), "stop", scenario, rid)
        if name == "truncated":
            return self._completion(model, self.page_text(Scenario("ok"))[:200], "length", scenario, rid)
        if name == "blocked":
            return self._completion(model, None, "content_filter", scenario, rid)
        if name == "refusal":
            return self._completion(model, None, "stop", scenario, rid, refusal="I'm sorry, I can't help with that.")
        if name == "empty":
            return self._completion(model, "", "stop", scenario, rid)
        if name == "400":
            return _error(
                400,
                "Invalid value for 'temperature': must be <= 2.",
                "invalid_request_error",
                "invalid_value",
                None,
                rid,
            )
        if name == "context_length":
            return _error(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 "
                "tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
                rid,
            )
        if name == "401":
            return _error(
                401, "Incorrect API key provided: sk-***", "invalid_request_error", "invalid_api_key", None, rid
            )
        if name == "403":
            return _error(
                403,
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
                None,
                rid,
            )
        if name == "404":
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                None,
                rid,
            )
        if name == "408":
            return _error(408, "Request timed out.", "timeout", None, None, rid)
        if name == "413":
            return _error(413, "Request too large. Max size: 1048576 bytes.", "invalid_request_error", None, None, rid)
        if name == "429":
            headers = {
                **rid,
                **self.retry_headers(scenario, 7),
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "7s",
            }
            return _error(
                429,
                f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): Limit 500, "
                "Used 500, Requested 1. Please try again in 6.5s. Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                "rate_limit_exceeded",
                None,
                headers,
            )
        if name == "quota":
            return _error(
                429,
                "You exceeded your current quota, please check your plan and billing details. For more information "
                "on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                "insufficient_quota",
                None,
                rid,
            )
        if name == "500":
            return _error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
                rid,
            )
        if name == "503":
            return _error(
                503, "The engine is currently overloaded, please try again later.", "server_error", None, None, rid
            )
        if name == "504":
            # Gateway timeouts come from the edge, as HTML, not from the API.
            return Reply(504, "<html><head><title>504 Gateway Time-out</title></head></html>", {}, "text/html")
        raise AssertionError(f"unhandled scenario {name}")

    def _completion(
        self,
        model: str,
        content: str | None,
        finish: str,
        scenario: Scenario,
        headers: dict,
        refusal: str | None = None,
    ) -> Reply:
        usage = {**USAGE, **(scenario.get("usage") or {})}
        body = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        return json_reply(200, body, {**headers, "openai-processing-ms": "321"})


if __name__ == "__main__":
    serve_main(FakeOpenAIServer)
