"""Log lines (settings.LOGGING): plain text, or one JSON object a line with ``AIPB_LOG_FORMAT=json``.

An event line (``log_event``) is a name and fields: in plain text ``attempt_ended job_id=… outcome=failed …``,
in JSON the same fields as keys, so a log pipeline can filter on them without parsing the message. Every line
written while a web request is served carries its request id (aipb.middleware.RequestIdMiddleware), the id
the response's X-Request-ID header and an /api/ 500's body show the caller; and, with tracing on (aipb.tracing),
every line written inside a span carries its ``trace_id`` and ``span_id``, the ids an OTLP backend finds it by.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

from opentelemetry import trace

from aipb import tracing

FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"

request_id_var: ContextVar[str] = ContextVar("aipb_request_id", default="")

# What every LogRecord has; anything else on a record came from `extra` and is a field of the line.
_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _value(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    # operator- or provider-supplied text stays one token on one line
    return json.dumps(text) if any(c.isspace() or c in '"=' for c in text) else text


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: object) -> None:
    """One line: `event k=v …` in plain text, `{"event": …, k: v, …}` in JSON."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{key}={_value(value)}" for key, value in fields.items())
    logger.log(level, "%s %s", event, text, extra={"event": event, **fields})


class RequestIdFilter(logging.Filter):
    """Puts the current request's id (empty outside a request) on every record the handler writes, and the
    current span's trace and span ids when tracing is on and a span is being recorded."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        if tracing.enabled() and not getattr(record, "trace_id", ""):
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = trace.format_trace_id(context.trace_id)
                record.span_id = trace.format_span_id(context.span_id)
        return True


class PlainFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%", **kwargs) -> None:
        super().__init__(fmt or PLAIN_FORMAT, datefmt, style, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{key}={value}" for key in ("request_id", "trace_id", "span_id") if (value := getattr(record, key, ""))
        )
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} {ids}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC)
        line = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and not key.startswith("_") and value not in ("", None):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


# RQ logs each delivery at INFO: which job it dequeued, "Job OK" (even when our attempt failed: the RQ job
# returned), "Successfully completed …", how long the result is kept. Three or four lines a delivery, about
# fifteen a job in a busy hour, and none says what happened to the job (jobs.accounting's lines do). These
# are its format strings in rq 3.0 (rq/worker/base.py); anything else RQ says stays as it is.
RQ_DELIVERY_MESSAGES = frozenset(
    {
        "Worker %s: %s: %s (%s)",  # dequeued, with the job's description; also "Job OK"
        "Worker %s: %s: %s",  # dequeued
        "Successfully completed %s job in %ss on worker %s",
        "Successfully completed job %s in %ss on worker %s",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result is kept for %s seconds",
        "Worker %s: job %s result will never expire, clean up result key manually",
    }
)


class RQDeliveryChatterFilter(logging.Filter):
    """RQ's per-delivery INFO lines become DEBUG: shown only when the rq.worker logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg in RQ_DELIVERY_MESSAGES:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True
