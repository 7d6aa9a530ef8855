"""Fault drills and load test for issue 10. They run real gunicorn, workers and reconcile against a
private Postgres and Redis (see harness.py), and run last in `make test` (tests/conftest.py orders
them); `make test-e2e` runs only them.

On the 2-core machine: the eight take about 9 minutes together, each drill 34-80 s and the
10,000-job load test about 2.5 min.
"""
