"""/metrics: every process on the host aggregated (prometheus_client multiprocess mode),
plus the scrape-time gauges. ``manage.py metrics_server`` serves the same bytes."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from aipb import prometheus_multiprocess as multiprocess
from monitoring.collectors import ScrapeTimeCollector

# django-rq's timing of its own /django-rq/metrics view: not ours to export, and its name (a summary
# ending in _total) fails `promtool check metrics`.
EXCLUDED = frozenset({"rq_request_processing_seconds_total"})


class _Scrape:
    """What one scrape reports: counters and histograms (from every process's files in
    multiprocess mode, else this process's registry) and the scrape-time gauges."""

    def collect(self) -> Iterator[Metric]:
        if multiprocess.enabled():
            # Not registered anywhere: a fresh collector per scrape reads the files as they are now.
            families = MultiProcessCollector(None, path=multiprocess.directory()).collect()
        else:
            families = REGISTRY.collect()
        yield from (family for family in families if family.name not in EXCLUDED)
        yield from ScrapeTimeCollector().collect()


def exposition() -> bytes:
    return generate_latest(_Scrape())


def authorized(header: str) -> bool:
    """True when no METRICS_TOKEN is configured, or the Authorization header carries it as a bearer token."""
    if not settings.METRICS_TOKEN:
        return True
    return hmac.compare_digest(header.encode(), f"Bearer {settings.METRICS_TOKEN}".encode())


def metrics_view(request):
    if not authorized(request.META.get("HTTP_AUTHORIZATION", "")):
        response = HttpResponse("unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
