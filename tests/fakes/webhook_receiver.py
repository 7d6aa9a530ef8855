"""A loopback webhook receiver: verifies each delivery with the `standardwebhooks` verifier and counts events.

``WebhookReceiver(secret)`` listens on 127.0.0.1 (a free port unless given). Scripted answers, one per request, in
order (``receiver.enqueue("500", "ok")``); with none left it answers ``ok``. Scenarios: ``ok`` (200), any other
status code as a string ("500", "302" with a Location), ``timeout`` (holds the request ``delay`` seconds before
a 200, longer than the sender's timeout), ``slow_body`` (a 200 whose body drips forever).

Every request is recorded: its webhook-id, whether its signature verified (with the secret given, or any of
``secrets``), the parsed body and the answer it got. ``events(verified=True)`` is the de-duplicated view a real
receiver keeps (one per webhook-id). ``stop()`` takes the receiver down (connections refused) and ``start()``
brings it back on the same port: an outage.

Standalone (for the e2e drills): ``python -m tests.fakes.webhook_receiver --port N --secret whsec_...``, with
``GET /__fake__/requests`` listing the records and ``POST /__fake__/secrets`` (a JSON list) replacing the secrets.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    verified: bool
    body: dict | None
    answer: str
    headers: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class WebhookReceiver:
    def __init__(self, secret: str | None = None, *, port: int = 0, secrets: list[str] | None = None) -> None:
        self.secrets = list(secrets or ([secret] if secret else []))
        self.port = port
        self.received: list[Received] = []
        self._script: deque = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.timeout_delay = 30.0

    # --- lifecycle ---

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path == "/__fake__/requests":
                    self._json(200, [asdict(item) for item in receiver.received])
                else:
                    self._json(404, {"error": "no such path"})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if self.path == "/__fake__/secrets":
                    receiver.secrets = json.loads(raw)
                    self._json(200, {"ok": True})
                    return
                receiver._handle(self, raw)

            def _json(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def enqueue(self, *scenarios: str) -> None:
        with self._lock:
            self._script.extend(scenarios)

    # --- what arrived ---

    def events(self, *, verified: bool = True) -> dict[str, Received]:
        """One per webhook-id (the first that verified), as a receiver that de-duplicates keeps them."""
        out: dict[str, Received] = {}
        for item in list(self.received):
            if item.verified == verified and item.answer == "ok":
                out.setdefault(item.webhook_id, item)
        return out

    def count(self, answer: str | None = None) -> int:
        return sum(1 for item in list(self.received) if answer is None or item.answer == answer)

    # --- one request ---

    def _verify(self, raw: bytes, headers: dict) -> tuple[bool, dict | None]:
        for secret in self.secrets:
            try:
                return True, Webhook(secret).verify(raw, headers)
            except WebhookVerificationError:
                continue
        try:
            return False, json.loads(raw)
        except ValueError:
            return False, None

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        headers = {key.lower(): value for key, value in handler.headers.items()}
        verified, body = self._verify(raw, headers)
        with self._lock:
            answer = self._script.popleft() if self._script else "ok"
        self.received.append(
            Received(
                webhook_id=headers.get("webhook-id", ""), verified=verified, body=body, answer=answer, headers=headers
            )
        )
        if answer == "timeout":
            time.sleep(self.timeout_delay)
            answer = "ok"
        if answer == "slow_body":
            handler.send_response(200)
            handler.send_header("content-length", "1000000")
            handler.end_headers()
            try:
                for _ in range(10_000):
                    handler.wfile.write(b"x")
                    handler.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            return
        status = 200 if answer == "ok" else int(answer)
        data = json.dumps({"received": status == 200}).encode()
        handler.send_response(status)
        if 300 <= status < 400:
            handler.send_header("location", "http://127.0.0.1:9/elsewhere")
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", action="append", default=[])
    args = parser.parse_args()
    receiver = WebhookReceiver(secrets=args.secret, port=args.port).start()
    print(f"listening on {receiver.url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
