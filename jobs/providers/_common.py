"""Helpers the SDK-backed providers share: Retry-After parsing, key redaction, option reading.

Nothing here classifies. These functions only pull facts out of what a provider sent
(headers, error bodies, messages) in the shape ``ProviderError`` carries them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from jobs.providers.base import CallContext, Provider, ProviderError, Usage

# Error messages are stored on attempts, shown in the admin and the API, and logged.
# A provider (or a proxy in front of it) may echo the credential back, so anything
# key-shaped is removed before it leaves the provider module.
_KEY_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{12,}|AIza[0-9A-Za-z_\-]{20,})")
# "Please retry in 37.5s." (Gemini), "Please try again in 1.2s" / "in 20ms" (OpenAI).
_RETRY_IN = re.compile(r"(?:retry|try again) in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)
# google.rpc.RetryInfo.retryDelay is a protobuf Duration in JSON form: "37s", "0.5s".
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")

MAX_MESSAGE_CHARS = 1000


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every given secret and anything shaped like an API key replaced."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _KEY_SHAPES.sub("[redacted]", text)


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        seconds = _non_negative(raw_ms, scale=1000.0)
        if seconds is not None:
            return seconds
    raw = headers.get("retry-after")
    if not raw:
        return None
    seconds = _non_negative(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after_from_message(message: str | None) -> float | None:
    if not message:
        return None
    match = _RETRY_IN.search(message)
    if not match:
        return None
    value = float(match.group(1))
    return value / 1000.0 if match.group(2).lower() == "ms" else value


def parse_duration(value: object) -> float | None:
    """A protobuf JSON Duration (``"37s"``, ``"0.250s"``) in seconds."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    return float(match.group(1)) if match else None


def _non_negative(raw: str, *, scale: float = 1.0) -> float | None:
    try:
        value = float(raw) / scale
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or math.isinf(value) or value < 0:
        return None
    return value


def as_int(value: object) -> int:
    """Token counts as sent; absent, null or malformed counts are 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float) and value.is_integer():
        return max(0, int(value))
    return 0


def call_timeout(ctx: CallContext, default: float) -> float:
    """The per-call timeout: the attempt's own when it has a usable one, else the configured one."""
    timeout = ctx.timeout
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return float(timeout)
    return float(default)


def option_int(ctx: CallContext, name: str, *, minimum: int = 1, maximum: int = 1_000_000) -> int | None:
    value = (ctx.options or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if minimum <= value <= maximum else None


def option_float(ctx: CallContext, name: str, *, minimum: float = 0.0, maximum: float = 2.0) -> float | None:
    value = (ctx.options or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if minimum <= value <= maximum else None


class SDKProvider(Provider):
    """A provider on an official SDK: every failure becomes a ProviderError whose message never holds the key."""

    label = ""  # message prefix, e.g. "openai"
    _key = ""

    def _error(
        self,
        text: str,
        status: int | None = None,
        code: str | None = None,
        rid: str | None = None,
        usage: Usage | None = None,
        *,
        transport: str | None = None,
        retry_after: float | None = None,
    ) -> ProviderError:
        return ProviderError(
            clip(redact(f"{self.label}: {text}", self._key)),
            provider=self.id,
            status=status,
            code=code,
            transport=transport,
            retry_after=retry_after,
            request_id=rid,
            usage=usage,
        )

    def _malformed(self, detail: str, request_id: str | None) -> ProviderError:
        return self._error(f"malformed response: {detail}", status=200, code="malformed_response", rid=request_id)
