"""Fixtures shared by the fault drills and the load test: private servers per test module, a stack per test."""

from __future__ import annotations

import pytest

from tests.e2e import harness


@pytest.fixture(scope="module")
def servers():
    """A private Postgres and Redis for the module's tests: drills restart and flush them, which the machine's
    own services (and every other test) must never see. Each test gets a fresh database from a template."""
    with harness.private_servers() as s:
        yield s


@pytest.fixture
def stack(servers, django_db_blocker, request):
    """The processes of one test (gunicorn, workers, reconcile ...) on its own database; all stopped after it."""
    with harness.drill_stack(servers, django_db_blocker, request.node.name) as s:
        yield s
