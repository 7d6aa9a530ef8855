"""The circuit breaker per target in real Redis: when it opens, the half-open probe, when it closes."""

from __future__ import annotations

import threading
import time

import pytest

from jobs.errors import Classified, ErrorType
from jobs.routing import circuits
from jobs.routing.circuits import Target

A = Target("simulated", "sim-small")
B = Target("simulated", "sim-large")


def error(kind: ErrorType, retry_after: float | None = None) -> Classified:
    return Classified(type=kind, retryable=True, message=str(kind), retry_after=retry_after)


@pytest.fixture(autouse=True)
def circuit_settings(settings, redis_conn):
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.AI_CIRCUIT_WINDOW_SECONDS = 60
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 0.3
    return settings


def fail(target: Target, n: int = 1, kind: ErrorType = ErrorType.SERVICE_UNAVAILABLE) -> None:
    for _ in range(n):
        circuits.report(target, error=error(kind), latency_ms=5)


def state(target: Target) -> str:
    return circuits.health([target])[target].circuit


def test_opens_after_the_threshold_of_provider_side_failures_and_calls_nothing_while_open():
    fail(A, 2)
    assert state(A) == "closed"
    assert circuits.acquire([A]).index == 0
    assert circuits.report(A, error=error(ErrorType.TIMEOUT), latency_ms=5) == "open"
    assert state(A) == "open"
    acquired = circuits.acquire([A])
    assert acquired.index is None and 0 < acquired.wait_seconds <= 0.3
    assert circuits.acquire([A, B]).index == 1  # the next candidate, its circuit closed


@pytest.mark.parametrize(
    "kind,retry_after,opens",
    [
        (ErrorType.TIMEOUT, None, True),
        (ErrorType.SERVICE_UNAVAILABLE, None, True),
        (ErrorType.PROVIDER_ERROR, None, True),
        (ErrorType.NETWORK_ERROR, None, True),
        (ErrorType.RATE_LIMIT, None, True),
        (ErrorType.RATE_LIMIT, 5.0, False),
        (ErrorType.VALIDATION_ERROR, None, False),
        (ErrorType.AUTH_ERROR, None, False),
        (ErrorType.MODEL_ERROR, None, False),
    ],
)
def test_which_failures_count(kind, retry_after, opens):
    for _ in range(3):
        circuits.report(A, error=error(kind, retry_after), latency_ms=5)
    assert state(A) == ("open" if opens else "closed")


def test_a_success_breaks_the_run():
    fail(A, 2)
    circuits.report(A, error=None, latency_ms=5)
    fail(A, 2)
    assert state(A) == "closed"
    fail(A, 1)
    assert state(A) == "open"


def test_failures_older_than_the_window_start_a_new_run(settings):
    settings.AI_CIRCUIT_WINDOW_SECONDS = 1
    fail(A, 2)
    time.sleep(1.2)
    fail(A, 2)
    assert state(A) == "closed"


def test_after_the_cooldown_exactly_one_probe_goes_and_its_success_closes():
    fail(A, 3)
    time.sleep(0.35)
    assert state(A) == "half_open"
    results = []
    barrier = threading.Barrier(8)

    def take():
        barrier.wait()
        results.append(circuits.acquire([A]))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [r for r in results if r.index == 0]
    assert len(probes) == 1 and probes[0].probe
    assert all(r.index is None and r.wait_seconds > 0 for r in results if r is not probes[0])
    # a call that began before the circuit opened, ending now, does not decide: the probe does
    assert circuits.report(A, error=None, latency_ms=5, probe=False) is None
    assert state(A) == "half_open"
    assert circuits.report(A, error=None, latency_ms=5, probe=True) == "closed"
    assert circuits.acquire([A]) == circuits.Acquired(0)


def test_a_failed_probe_opens_it_for_another_cooldown():
    fail(A, 3)
    time.sleep(0.35)
    assert circuits.acquire([A]).probe
    assert circuits.report(A, error=error(ErrorType.SERVICE_UNAVAILABLE), latency_ms=5, probe=True) == "open"
    assert circuits.acquire([A]).index is None
    time.sleep(0.35)
    assert circuits.acquire([A]).probe


def test_a_probe_that_says_nothing_frees_the_probe_for_the_next_attempt():
    fail(A, 3)
    time.sleep(0.35)
    assert circuits.acquire([A]).probe
    assert circuits.acquire([A]).index is None
    circuits.report(A, error=error(ErrorType.AUTH_ERROR), latency_ms=5, probe=True)
    assert circuits.acquire([A]).probe


def test_threshold_zero_turns_circuits_off(settings):
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 0
    fail(A, 10)
    assert circuits.acquire([A]).index == 0
    assert state(A) == "closed"


def test_recent_calls_give_p50_and_error_rate():
    for ms in (100, 300, 200):
        circuits.report(A, error=None, latency_ms=ms)
    circuits.report(A, error=error(ErrorType.TIMEOUT), latency_ms=5000)
    found = circuits.health([A])[A]
    assert found.p50_latency_ms == 200  # the failure's time is not an answer's latency
    assert found.error_rate == 0.25
    assert circuits.p50_latencies([A, B]) == [200, None]
    assert circuits.known_targets() == [A]


@pytest.mark.django_db
def test_the_scrape_shows_each_targets_circuit(client, settings):
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 60
    fail(A, 3)
    circuits.report(B, error=None, latency_ms=5)
    circuits.probe_record(B, ok=False, latency_ms=1500, error="down")

    text = client.get("/metrics").content.decode()

    assert 'ai_provider_circuit_state{model="sim-small",provider="simulated"} 2.0' in text
    assert 'ai_provider_circuit_state{model="sim-large",provider="simulated"} 0.0' in text
    assert 'ai_provider_circuit_state{model="local-page",provider="local"} 0.0' in text  # configured: always there
    assert 'ai_provider_probe_success{model="sim-large",provider="simulated"} 0.0' in text
    assert 'ai_provider_probe_latency_seconds{model="sim-large",provider="simulated"} 1.5' in text
