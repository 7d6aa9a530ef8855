"""e2e: a staff user logs in with headless Chromium and opens the operations page and the job list.

Real browser (Debian's `chromium`, DevTools protocol over a pipe), real Django server (pytest-django's
live_server), real Postgres and Redis, jobs run by a real RQ worker.
"""

from __future__ import annotations

import re

import pytest

from jobs import queue_control
from jobs.models import AIJob, JobStatus
from tests.factories import submit_job
from tests.ops.chromium import Chromium
from tests.ops.conftest import sim

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def browser(tmp_path):
    chromium = Chromium(tmp_path / "profile")
    try:
        chromium.open_page()
        yield chromium
    finally:
        chromium.close()


def test_staff_opens_the_operations_page_and_the_job_list_in_chromium(
    live_server, browser, staff_user, user, run_worker, settings, tmp_path
):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False  # the test server speaks plain http
    done = submit_job(user, prompt="A landing page for a bakery in Lisbon")
    dead = submit_job(user, prompt="A page for a florist", **sim(fail_attempts=9, error="auth"))
    run_worker()
    waiting = [submit_job(user, prompt=f"A page for shop {i}") for i in range(3)]
    assert AIJob.objects.get(id=done.id).status == JobStatus.SUCCEEDED
    assert AIJob.objects.get(id=dead.id).status == JobStatus.DEAD

    # log in through the admin's own form
    browser.navigate(f"{live_server.url}/admin/login/?next=/admin/operations/")
    browser.submit_form({"id_username": staff_user.username, "id_password": "correct-horse-battery"})
    assert browser.evaluate("location.pathname") == "/admin/operations/"

    html = browser.html()
    browser.screenshot(tmp_path / "operations.png")
    status = queue_control.queue_status()
    assert status["totals"]["waiting"] == 3
    assert re.search(r'id="paused-state">RUNNING<', html)
    assert re.search(r'id="total-waiting">3<', html)
    assert re.search(rf'id="total-completed">{status["totals"]["completed"]}<', html)
    assert re.search(r'id="queue-ai-default"><th>ai-default</th><td class="num">3</td>', html)
    assert "Postgres: 3 queued, 0 running, 0 retrying." in html
    assert re.search(r'id="dlq-open">1<', html) and "AUTH_ERROR" in html
    assert re.search(r'id="spend-total">[0-9.]+<', html)
    assert 'href="/django-rq/"' in html

    # the pause button: a real form POST with the CSRF token the page carries, then its confirmation step
    browser.click("#pause-button")
    assert "confirm-button" in browser.html() and not queue_control.queue_is_paused()  # asked, nothing changed
    browser.click("#confirm-button")
    assert browser.evaluate("location.pathname") == "/admin/operations/"
    assert re.search(r'id="paused-state">PAUSED<', browser.html())
    assert queue_control.queue_is_paused()
    browser.click("#resume-button")
    assert re.search(r'id="paused-state">RUNNING<', browser.html())
    assert not queue_control.queue_is_paused()

    # the job list, linked from the admin index
    browser.navigate(f"{live_server.url}/admin/")
    assert "Operations page" in browser.html()
    browser.navigate(f"{live_server.url}/admin/jobs/aijob/")
    html = browser.html()
    browser.screenshot(tmp_path / "jobs.png")
    for job in (done, dead, *waiting):
        assert str(job.id) in html
    rows = browser.evaluate(
        "Array.from(document.querySelectorAll('#result_list tbody tr'))"
        ".map(tr => Array.from(tr.querySelectorAll('th, td')).map(c => c.innerText.trim()))"
    )
    by_id = {row[1]: row for row in rows}
    assert by_id[str(dead.id)][2:4] == ["dead", "simulated"]  # the status as the API and commands say it, coloured
    assert by_id[str(done.id)][2] == "succeeded"
    assert len(rows) == 5

    # and one job's page with its JSON
    browser.navigate(f"{live_server.url}/admin/jobs/aijob/{done.id}/change/")
    page = browser.evaluate("document.body.innerText")
    assert '"sections": [' in page and AIJob.objects.get(id=done.id).result["title"] in page
