"""ai_job_queue_wait_seconds: observed when a worker claims a job's first attempt, labelled by provider and
priority; a retry's claim is not observed (its due time is gone from the row the claim returns)."""

from __future__ import annotations

import pytest

from jobs.models import AIJob
from jobs.worker import AIPBSimpleWorker
from tests.factories import submit_job
from tests.monitoring.test_metrics import SIM, parse_metrics, promtool_check, scrape, value

pytestmark = pytest.mark.django_db(transaction=True)
NAME = "ai_job_queue_wait_seconds"


def test_each_first_claim_is_observed_once_by_priority(user, run_worker):
    before = parse_metrics(scrape())
    retried = submit_job(user, simulate={**SIM, "fail_attempts": 1, "error": "invalid_json"})
    submit_job(user, simulate=SIM)
    submit_job(user, simulate=SIM, priority="high")
    run_worker(worker_class=AIPBSimpleWorker)
    assert AIJob.objects.get(id=retried.id).attempts == 2

    text = scrape()
    after = parse_metrics(text)

    def delta(sample: str, **labels) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    normal = {"provider": "simulated", "priority": "normal"}
    assert delta(f"{NAME}_count", **normal) == 2  # two first claims; the retry's claim is not one
    assert delta(f"{NAME}_count", provider="simulated", priority="high") == 1
    assert 0 <= delta(f"{NAME}_sum", **normal) < 30
    assert delta(f"{NAME}_bucket", **normal, le="+Inf") == 2
    assert f"# TYPE {NAME} histogram" in text and promtool_check(text) == ""
