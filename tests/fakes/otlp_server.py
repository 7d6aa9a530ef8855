"""A loopback OTLP/HTTP trace receiver: what a collector (or Tempo, Jaeger, Honeycomb) would be sent.

It accepts ``POST /v1/traces`` with an ``application/x-protobuf`` ExportTraceServiceRequest (gzip or not), decodes
it with ``opentelemetry-proto`` and keeps every span, flattened to a ``ReceivedSpan`` with its resource's
attributes, so tests assert what real processes exported across process boundaries. Counts every request,
whatever its path, so a test can assert that nothing at all was sent.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind == "array_value":
        return [_value(v) for v in value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.values}
    return value


def _attributes(key_values) -> dict:
    return {kv.key: _value(kv.value) for kv in key_values}


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict
    status_code: str  # UNSET, OK, ERROR
    status_message: str
    events: list[tuple[str, dict]]
    links: list[tuple[str, str]]
    resource: dict = field(default_factory=dict)
    scope: str = ""

    @property
    def failed(self) -> bool:
        return self.status_code == "ERROR"


class OTLPReceiver:
    """``with OTLPReceiver() as otlp:`` serves on 127.0.0.1:<otlp.port> until the block ends."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0  # every request received, on any path
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests += 1
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._keep(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                with receiver.lock:
                    receiver.requests += 1
                self.send_error(405)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def _keep(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes=_attributes(span.attributes),
                            status_code=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                            status_message=span.status.message,
                            events=[(event.name, _attributes(event.attributes)) for event in span.events],
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            resource=resource,
                            scope=scope_spans.scope.name,
                        )
                    )
        with self.lock:
            self.spans.extend(spans)

    def __enter__(self) -> OTLPReceiver:
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- reading ---

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def named(self, name: str, *, trace_id: str | None = None) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.name == name and (trace_id is None or s.trace_id == trace_id)]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_for(self, predicate, *, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.snapshot())
            if result:
                return result
            if time.monotonic() > deadline:
                names = sorted({s.name for s in self.snapshot()})
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; spans so far: {names}")
            time.sleep(0.1)
