"""Machinery shared by the loopback fake provider servers.

A fake server is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 that speaks one provider's wire
format. Each provider module subclasses ``FakeProviderServer`` and supplies routing, the auth
check, request validation and how each scenario looks on that provider's wire.

Choosing a scenario, per request, first match wins:

1. the queue: ``server.enqueue("429", "ok")`` scripts the next answers in order (one per request);
2. a marker in the request body, i.e. in the user's prompt: ``[[fake:429]]``. A marker may list a
   sequence, ``[[fake:429,503,ok]]``: the n-th request carrying that exact marker gets the n-th
   scenario (the last one repeats), so one job's successive attempts get different answers. Add a
   tag to keep two jobs' counters apart: ``[[fake:429,ok#job-7]]``;
3. otherwise ``default_scenario`` (``ok`` unless a test takes the API down).

A scenario is a name, or a dict with ``name`` plus parameters: ``retry_after`` (seconds header,
``None`` to omit it), ``retry_after_ms``, ``delay`` (seconds the ``timeout`` scenario waits before
answering), ``page`` (the page dict or raw answer text of ``ok``), ``usage`` (wire-format usage
fields to override). The names every fake knows are in ``COMMON_SCENARIOS``; a fake may add its own.

Every request (control calls aside) is recorded as a ``RecordedRequest`` with path, query, headers
(lower-cased names), parsed JSON body and the scenario it got, so tests can assert what our code
sent. Run standalone (``python -m tests.fakes.openai_server --port N``), the same queue and
records are reachable over HTTP: ``POST /__fake__/scenarios`` with a JSON list, ``GET
/__fake__/requests``, ``POST /__fake__/reset``, ``GET /__fake__/health``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import sys
import threading
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_API_KEY = "test-key-0123456789abcdef"

COMMON_SCENARIOS = frozenset(
    {
        "ok",  # 200, a valid page, usage with cached tokens
        "invalid_page",  # 200, the model's answer is JSON but not a valid page (billed)
        "not_json",  # 200, an HTML body
        "bad_json",  # 200, content type JSON, body cut off
        "blocked",  # 200, the answer withheld by the provider's safety system (billed)
        "truncated",  # 200, the answer cut off at the output token limit (billed)
        "empty",  # 200, an answer with nothing in it
        "400",
        "context_length",  # 400 (or the provider's form of it): prompt too long
        "401",
        "403",
        "404",  # model not found
        "408",
        "413",
        "429",  # rate limited, with Retry-After
        "500",
        "503",
        "504",
        "reset",  # connection closed with a TCP reset, no response
        "timeout",  # no answer until ``delay`` seconds have passed
    }
)

_MARKER = re.compile(r"\[\[fake:([^\]\s]+)\]\]")

# A page that satisfies jobs/schema/page.schema.json (tests check that it still does).
SAMPLE_PAGE: dict = {
    "title": "Crumb & Co. Bakery",
    "meta": {
        "description": "Sourdough, pastries and coffee baked fresh every morning in the old town.",
        "keywords": ["bakery", "sourdough", "pastries"],
        "language": "en",
    },
    "sections": [
        {
            "id": "hero",
            "type": "hero",
            "heading": "Bread worth getting up for",
            "subheading": "Naturally leavened loaves and flaky pastries, out of the oven by 7am.",
            "cta_label": "See today's bakes",
            "cta_url": "#menu",
        },
        {
            "id": "menu",
            "type": "features",
            "heading": "What we bake",
            "items": [
                {"title": "Sourdough", "description": "A 36-hour country loaf.", "icon": "bread"},
                {"title": "Croissants", "description": "Butter laminated by hand.", "icon": "star"},
            ],
        },
        {
            "id": "footer",
            "type": "footer",
            "text": "© Crumb & Co.",
            "links": [{"label": "Contact", "url": "/contact"}],
        },
    ],
}

INVALID_PAGE: dict = {"title": "Only a title", "sections": "not a list"}


@dataclass
class Scenario:
    name: str
    params: dict = field(default_factory=dict)

    @classmethod
    def of(cls, spec: str | dict | Scenario) -> Scenario:
        if isinstance(spec, Scenario):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            return cls(spec["name"], {k: v for k, v in spec.items() if k != "name"})
        raise ValueError(f"not a scenario: {spec!r}")

    def get(self, key: str, default: object = None) -> object:
        return self.params.get(key, default)


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    headers: dict
    body: object
    raw_body: str
    scenario: str = ""
    reply_status: int | None = None  # None: no HTTP answer (reset, or the client gave up waiting)
    reply_body: str = ""
    reply_headers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict/list -> JSON; str/bytes -> as is
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"
    action: str = ""  # "reset" | "hang"
    delay: float = 0.0

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


def json_reply(status: int, body: object, headers: dict | None = None) -> Reply:
    return Reply(status=status, body=body, headers=dict(headers or {}))


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class FakeProviderServer:
    """One provider's fake API on loopback. Subclasses implement ``route`` and ``render``."""

    provider = ""
    scenarios: frozenset[str] = COMMON_SCENARIOS

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        hang_seconds: float = 3.0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.hang_seconds = hang_seconds
        # Like a misbehaving proxy, put the rejected credential verbatim in the 401 message,
        # so tests can prove our error messages never carry a key.
        self.echo_key = False
        # What a request gets when neither the queue nor a marker chooses: "503" makes the whole API down (an outage
        # drill), until set back to "ok".
        self.default_scenario = "ok"
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Scenario] = deque()
        self._marker_counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeProviderServer:
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer((self.host, self.port), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-{self.provider}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the matching ``*_BASE_URL`` setting should be."""
        return self.origin

    # -- scripting ------------------------------------------------------------------------------

    def enqueue(self, *specs: str | dict | Scenario) -> None:
        parsed = [Scenario.of(spec) for spec in specs]
        for scenario in parsed:
            self._check_known(scenario.name)
        with self._lock:
            self._queue.extend(parsed)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._marker_counts.clear()
            self.requests.clear()

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def _check_known(self, name: str) -> None:
        if name not in self.scenarios:
            raise ValueError(f"fake {self.provider} server has no scenario {name!r}; known: {sorted(self.scenarios)}")

    def _choose(self, raw_body: str) -> Scenario:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            match = _MARKER.search(raw_body)
            if not match:
                return Scenario(self.default_scenario)
            marker = match.group(1)
            names = marker.split("#", 1)[0].split(",")
            count = self._marker_counts.get(marker, 0)
            self._marker_counts[marker] = count + 1
            return Scenario(names[min(count, len(names) - 1)].strip())

    # -- provider hooks -------------------------------------------------------------------------

    def route(self, request: RecordedRequest) -> Reply | str | None:
        """Check path, auth and body. Return an error ``Reply`` to send, the model id the
        request is for (then a scenario is chosen and rendered), or ``None`` for an unknown path."""
        raise NotImplementedError

    def render(self, scenario: Scenario, request: RecordedRequest, model: str) -> Reply:
        raise NotImplementedError

    def not_found(self, request: RecordedRequest) -> Reply:
        return json_reply(404, {"error": {"message": f"Unknown path {request.path}"}})

    # -- shared wire helpers --------------------------------------------------------------------

    @staticmethod
    def page_text(scenario: Scenario) -> str:
        page = scenario.get("page", SAMPLE_PAGE if scenario.name == "ok" else INVALID_PAGE)
        return page if isinstance(page, str) else json.dumps(page)

    @staticmethod
    def retry_headers(scenario: Scenario, default_seconds: int) -> dict:
        headers = {}
        seconds = scenario.get("retry_after", default_seconds)
        if seconds is not None:
            headers["retry-after"] = str(seconds)
        if scenario.get("retry_after_ms") is not None:
            headers["retry-after-ms"] = str(scenario.get("retry_after_ms"))
        return headers

    def common_transport(self, scenario: Scenario) -> Reply | None:
        if scenario.name == "reset":
            return Reply(action="reset")
        if scenario.name == "timeout":
            return Reply(action="hang", delay=float(scenario.get("delay", self.hang_seconds)))
        if scenario.name == "not_json":
            return Reply(200, "<html><body><h1>Welcome to the proxy login page</h1></body></html>", {}, "text/html")
        if scenario.name == "bad_json":
            return Reply(200, '{"id": "cut-off", "choices": [{"index": 0, "mess', {})
        return None

    # -- HTTP plumbing --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = f"fake-{fake.provider}/1.0"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                self._handle()

            def do_POST(self) -> None:  # noqa: N802
                self._handle()

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                text = raw.decode("utf-8", errors="replace")
                parts = urlsplit(self.path)
                if parts.path.startswith("/__fake__/"):
                    self._send(fake._control(self.command, parts.path, text))
                    return
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = None
                request = RecordedRequest(
                    method=self.command,
                    path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    raw_body=text,
                )
                with fake._lock:
                    fake.requests.append(request)
                routed = fake.route(request)
                if routed is None:
                    reply = fake.not_found(request)
                elif isinstance(routed, Reply):
                    reply = routed
                else:
                    scenario = fake._choose(text)
                    request.scenario = scenario.name
                    if scenario.name not in fake.scenarios:
                        reply = json_reply(500, {"error": {"message": f"fake: unknown scenario {scenario.name!r}"}})
                    else:
                        reply = fake.render(scenario, request, routed)
                if not reply.action:
                    request.reply_status = reply.status
                    request.reply_body = reply.encoded().decode("utf-8", errors="replace")
                    request.reply_headers = {k.lower(): v for k, v in reply.headers.items()}
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if reply.action == "reset":
                    # SO_LINGER 0: close() sends RST instead of FIN - a reset with no response.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if reply.action == "hang":
                    fake._stopping.wait(reply.delay)
                    reply = Reply(500, {"error": {"message": "fake: answered after the hang"}})
                payload = reply.encoded()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.content_type)
                    self.send_header("content-length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True

            def finish(self) -> None:
                try:
                    super().finish()
                except (OSError, ValueError):
                    pass

        return Handler

    def _control(self, method: str, path: str, text: str) -> Reply:
        try:
            if path == "/__fake__/health":
                return json_reply(200, {"provider": self.provider, "ok": True})
            if path == "/__fake__/requests" and method == "GET":
                with self._lock:
                    return json_reply(200, [r.to_json() for r in self.requests])
            if path == "/__fake__/reset" and method == "POST":
                self.reset()
                return json_reply(200, {"ok": True})
            if path == "/__fake__/scenarios" and method == "POST":
                specs = json.loads(text or "[]")
                self.enqueue(*(specs if isinstance(specs, list) else [specs]))
                return json_reply(200, {"ok": True, "queued": len(self._queue)})
        except ValueError as exc:
            return json_reply(400, {"error": {"message": str(exc)}})
        return json_reply(404, {"error": {"message": f"unknown control path {path}"}})


def serve_main(server_class: type[FakeProviderServer], argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Fake {server_class.provider} API on loopback, for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--hang-seconds", type=float, default=3.0, help="how long the 'timeout' scenario waits")
    args = parser.parse_args(argv)
    server = server_class(api_key=args.api_key, host=args.host, port=args.port, hang_seconds=args.hang_seconds)
    server.start()
    print(f"fake {server.provider} listening on {server.base_url}", flush=True)
    try:
        assert server._thread is not None
        while server._thread.is_alive():
            server._thread.join(timeout=1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        sys.exit(0)
