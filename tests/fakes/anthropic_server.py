"""A fake Anthropic Messages API (``POST /v1/messages``) on loopback.

Speaks Anthropic's wire format: the key as ``x-api-key`` or, as anthropic>=2 sends it,
``Authorization: Bearer <key>`` (a wrong key gets the real 401 ``authentication_error``); an
``anthropic-version`` header is required; errors are ``{"type": "error", "error": {"type",
"message"}, "request_id"}``; every answer carries a ``request-id`` header. It checks the request
like the real API: ``model``, ``max_tokens``, ``messages``, tools with an object
``input_schema``, and a ``tool_choice`` naming one of the tools.

Scenarios (see ``tests.fakes.base`` for how one is chosen): the common ones, plus ``402``
(billing), ``529`` (``overloaded_error``), ``quota`` (429 with ``error.details.error_code``
``enforced_spend_limit_reached``), ``refusal`` (``stop_reason: refusal``; also what
``blocked`` sends) and ``text_answer`` (the model wrote text instead of calling the tool).
``base_url`` is what ``ANTHROPIC_BASE_URL`` should be.

    python -m tests.fakes.anthropic_server --port 8092
"""

from __future__ import annotations

from tests.fakes.base import (
    COMMON_SCENARIOS,
    INVALID_PAGE,
    SAMPLE_PAGE,
    FakeProviderServer,
    RecordedRequest,
    Reply,
    Scenario,
    json_reply,
    new_id,
    serve_main,
)

PATH = "/v1/messages"

# Messages request fields; anything else is "Extra inputs are not permitted".
REQUEST_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier", "output_config", "container",
        "cache_control", "inference_geo",
    }
)  # fmt: skip

USAGE = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 76,
    "cache_read_input_tokens": 1024,
    "output_tokens": 350,
    "service_tier": "standard",
}


def _error(status: int, kind: str, message: str, headers: dict | None = None, error_code: str | None = None) -> Reply:
    rid = (headers or {}).get("request-id") or new_id("req_")
    error: dict = {"type": kind, "message": message}
    if error_code:
        error["details"] = {"error_code": error_code}
    return json_reply(
        status, {"type": "error", "error": error, "request_id": rid}, {**(headers or {}), "request-id": rid}
    )


class FakeAnthropicServer(FakeProviderServer):
    provider = "anthropic"
    scenarios = COMMON_SCENARIOS | {"402", "529", "quota", "refusal", "text_answer"}

    def route(self, request: RecordedRequest) -> Reply | str | None:
        if request.method != "POST" or request.path != PATH:
            return None
        headers = request.headers
        bearer = headers.get("authorization", "")
        given = headers.get("x-api-key") or (bearer[7:] if bearer.startswith("Bearer ") else "")
        if given != self.api_key:
            message = f"invalid x-api-key {given}" if self.echo_key else "invalid x-api-key"
            return _error(401, "authentication_error", message)
        if not headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        body = request.body
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "There was an issue with the request body: not JSON")
        unknown = sorted(set(body) - REQUEST_FIELDS)
        if unknown:
            return _error(400, "invalid_request_error", f"{unknown[0]}: Extra inputs are not permitted")
        for name, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            if not isinstance(body.get(name), kind):
                return _error(400, "invalid_request_error", f"{name}: Field required")
        tools = body.get("tools") or []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or (tool.get("input_schema") or {}).get("type") != "object":
                return _error(
                    400, "invalid_request_error", f"tools.{i}.custom.input_schema.type: Input should be 'object'"
                )
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "tool":
            if choice.get("name") not in {t.get("name") for t in tools}:
                return _error(400, "invalid_request_error", f"tool_choice.name: tool '{choice.get('name')}' not found")
        return body["model"]

    def render(self, scenario: Scenario, request: RecordedRequest, model: str) -> Reply:
        name = scenario.name
        transport = self.common_transport(scenario)
        if transport is not None:
            return transport
        rid = {"request-id": new_id("req_")}
        tool = self._tool_name(request)
        if name in ("ok", "invalid_page"):
            page = scenario.get("page", None)
            if isinstance(page, str):  # raw text: the model answered in prose
                return self._message(model, [{"type": "text", "text": page}], "end_turn", scenario, rid)
            page = page if page is not None else (SAMPLE_PAGE if name == "ok" else INVALID_PAGE)
            block = {"type": "tool_use", "id": new_id("toolu_"), "name": tool, "input": page}
            return self._message(model, [block], "tool_use", scenario, rid)
        if name == "text_answer":
            text = scenario.get("page") or self.page_text(Scenario("ok"))
            return self._message(model, [{"type": "text", "text": text}], "end_turn", scenario, rid)
        if name == "truncated":
            block = {"type": "tool_use", "id": new_id("toolu_"), "name": tool, "input": {"title": "Crumb"}}
            return self._message(model, [block], "max_tokens", scenario, rid)
        if name in ("refusal", "blocked"):
            return self._message(model, [], "refusal", scenario, rid)
        if name == "empty":
            return self._message(model, [], "end_turn", scenario, rid)
        if name == "400":
            return _error(400, "invalid_request_error", "messages.0.content: Input should be a valid list", rid)
        if name == "context_length":
            return _error(400, "invalid_request_error", "prompt is too long: 215467 tokens > 200000 maximum", rid)
        if name == "401":
            return _error(401, "authentication_error", "invalid x-api-key", rid)
        if name == "402":
            return _error(
                402,
                "billing_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to "
                "upgrade or purchase credits.",
                rid,
            )
        if name == "403":
            return _error(
                403, "permission_error", "Your API key does not have permission to use the specified resource.", rid
            )
        if name == "404":
            return _error(404, "not_found_error", f"model: {model}", rid)
        if name == "408":
            return _error(408, "timeout_error", "Request timed out while waiting for the request body.", rid)
        if name == "413":
            return _error(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", rid)
        if name == "429":
            headers = {
                **rid,
                **self.retry_headers(scenario, 7),
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "0",
            }
            return _error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50,000 input tokens per minute. "
                "For details, refer to: https://docs.claude.com/en/api/rate-limits.",
                headers,
            )
        if name == "quota":
            return _error(
                429,
                "rate_limit_error",
                "Your organization has reached the monthly usage limit of its API tier.",
                rid,
                error_code="enforced_spend_limit_reached",
            )
        if name == "500":
            return _error(500, "api_error", "Internal server error", rid)
        if name == "503":
            return _error(503, "api_error", "Service unavailable", {**rid, **self.retry_headers(scenario, None)})
        if name == "504":
            return _error(504, "timeout_error", "Gateway timeout", rid)
        if name == "529":
            return _error(529, "overloaded_error", "Overloaded", {**rid, **self.retry_headers(scenario, None)})
        raise AssertionError(f"unhandled scenario {name}")

    @staticmethod
    def _tool_name(request: RecordedRequest) -> str:
        body = request.body if isinstance(request.body, dict) else {}
        choice = body.get("tool_choice") or {}
        return choice.get("name") or "emit_page"

    @staticmethod
    def _message(model: str, content: list, stop: str, scenario: Scenario, headers: dict) -> Reply:
        body = {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {**USAGE, **(scenario.get("usage") or {})},
        }
        return json_reply(200, body, headers)


if __name__ == "__main__":
    serve_main(FakeAnthropicServer)
