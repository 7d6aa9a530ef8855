"""manage.py metrics_server [--port 9108] [--bind 127.0.0.1]

For worker hosts without the web app: serves GET /metrics with what the web app's /metrics
serves — the counters and histograms every process on this host wrote to
PROMETHEUS_MULTIPROC_DIR (the RQ workers and their work-horses), and the scrape-time
gauges from Redis and Postgres — honouring METRICS_TOKEN the same way.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from aipb import prometheus_multiprocess as multiprocess
from monitoring.views import authorized, exposition


def port_number(raw: str) -> int:
    if not (raw.strip().isascii() and raw.strip().isdigit()) or not 1 <= int(raw) <= 65535:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 65535, got {raw!r}")
    return int(raw)


def metrics_app(environ, start_response):
    try:
        if environ.get("PATH_INFO") != "/metrics":
            return _reply(start_response, "404 Not Found", b"not found: metrics are at /metrics\n")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"method not allowed\n", [("Allow", "GET, HEAD")])
        if not authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return _reply(
                start_response, "401 Unauthorized", b"unauthorized\n", [("WWW-Authenticate", 'Bearer realm="metrics"')]
            )
        body = exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]
    finally:
        # each request runs in its own thread: close the DB connection it opened (ai_dlq_entries)
        connections.close_all()


def _reply(start_response, status: str, body: bytes, headers: list | None = None) -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] + (headers or [])
    )
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - a scrape every 15 s is not worth a log line
        pass


class Command(BaseCommand):
    help = "Serve /metrics for this host's RQ workers (the same metrics as the web app's /metrics)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=port_number, default=9108, help="TCP port (default 9108)")
        parser.add_argument(
            "--bind", default="127.0.0.1", help="IP address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)"
        )

    def handle(self, *args, **options):
        port, bind = options["port"], options["bind"].strip()
        if not multiprocess.enabled():
            raise CommandError(
                "PROMETHEUS_MULTIPROC_DIR is not set: set it to the directory this host's workers write their "
                "metrics to (the same value as theirs)"
            )
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
        except ValueError:
            raise CommandError(f"--bind must be an IP address (127.0.0.1, 0.0.0.0, ::), got {bind!r}") from None

        server_class = type(
            "MetricsServer", (ThreadingMixIn, WSGIServer), {"address_family": family, "daemon_threads": True}
        )
        try:
            server = server_class((bind, port), _QuietHandler)
        except OSError as exc:
            raise CommandError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
        server.set_app(metrics_app)
        self.stdout.write(
            f"metrics_server: serving http://{bind}:{port}/metrics from {multiprocess.directory()}", ending="\n"
        )
        self.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
