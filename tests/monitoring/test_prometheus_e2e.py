"""A real Prometheus (Debian's `prometheus`) on loopback, loading our `prometheus.yml` (targets rewritten to this
test's ports, 1 s intervals) and our `alert_rules.yml`, scrapes the running web app and a worker host while jobs run
through the simulated provider. Asserted through Prometheus's HTTP API: both targets are up, every rule group loads
and evaluates healthy, every expression of the Grafana dashboard and of the alert rules evaluates without error, and
the core series carry the numbers the jobs produced.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
import yaml

from tests.monitoring.test_metrics import SIM, ensure_sim_price, submit
from tests.monitoring.test_metrics_e2e import _free_port, all_final, http, stack, wait_for  # noqa: F401 (fixture)
from tests.monitoring.test_monitoring_config import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    _alert_rules,
    _dashboard_exprs,
    _load_yaml,
    _tool,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TOKEN = "prom-e2e-token"
# Grafana's built-in variables, as Grafana would expand them for a short time range
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "1s",
    "$__range": "5m",
    # the dashboard's own variables, as Grafana sends them with "All" selected (their allValue)
    "$provider": ".*",
    "$model": ".*",
    "$instance": ".*",
}
JOBS = ("aipb-api", "aipb-workers")


def prometheus_config(tmp_path, *, api: str, workers: str) -> str:
    """Our prometheus.yml with this test's targets and 1 s intervals, the bearer-token block as documented."""
    config = _load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(ALERT_RULES.resolve())]
    config.pop("alerting", None)  # no Alertmanager here
    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN)
    targets = {"aipb-api": api, "aipb-workers": workers}
    assert sorted(sc["job_name"] for sc in config["scrape_configs"]) == sorted(JOBS)
    for scrape_config in config["scrape_configs"]:
        scrape_config["static_configs"] = [{"targets": [targets[scrape_config["job_name"]]]}]
        scrape_config["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, text = http(url)
        body = json.loads(text)
        assert status == 200 and body["status"] == "success", f"{path} {params}: HTTP {status} {text}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query; fails (with Prometheus's error) unless it evaluates."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, text = http(url)
        body = json.loads(text)
        assert status == 200 and body.get("status") == "success", f"{expr!r} failed: {body.get('error', text)}"
        assert body["data"]["resultType"] == "vector", expr
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, f"{expr!r} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_app_and_evaluates_every_dashboard_and_alert_expression(stack, user, tmp_path):  # noqa: F811
    binary = _tool("prometheus")  # fails, never skips, when Prometheus is not installed
    ensure_sim_price()
    stack.worker()
    _, base = stack.gunicorn(METRICS_TOKEN=TOKEN)
    _, worker_url = stack.metrics_server(METRICS_TOKEN=TOKEN)
    port = _free_port()
    config = prometheus_config(
        tmp_path, api=base.removeprefix("http://"), workers=worker_url.removeprefix("http://").removesuffix("/metrics")
    )
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    argv += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    proc = stack.start("prometheus", argv)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    stack.wait_http(proc, prom.base + "/-/ready")
    wait_for(lambda: http(prom.base + "/-/ready")[0] == 200, what="prometheus ready")

    # both targets up, scraped with the bearer token
    def targets_up() -> bool:
        active = prom.api("targets", state="active")["activeTargets"]
        return sorted(t["labels"]["job"] for t in active) == sorted(JOBS) and all(t["health"] == "up" for t in active)

    wait_for(targets_up, timeout=15, what="both targets up")
    for target in prom.api("targets", state="active")["activeTargets"]:
        assert target["lastError"] == "", target

    # a first wave, seen by Prometheus, so the second wave shows up as a rate and not only as a first sample
    first = [submit(user) for _ in range(2)]
    wait_for(lambda: all_final([j.id for j in first]), what="the first 2 jobs")
    wait_for(
        lambda: prom.value('ai_jobs_total{job="aipb-workers",status="succeeded"}') == 2, what="the first wave scraped"
    )
    second = [
        submit(user),  # succeeds
        submit(user, fail_attempts=1, error="unavailable"),  # 503, retried, succeeds
        submit(user, fail_attempts=5, error="auth"),  # 401: dead at once
        submit(user, fail_attempts=1, error="invalid_page"),  # fails validation (billed), retried, passes
    ]
    wait_for(lambda: all_final([j.id for j in second]), what="the second wave")

    def scraped(job: str) -> bool:
        # the dead series is born with this wave: a rate over it needs two samples, so wait for a second scrape
        return (
            prom.value(f'ai_jobs_total{{job="{job}",status="succeeded"}}') == 5
            and prom.value(f'ai_jobs_total{{job="{job}",status="dead"}}') == 1
            and (prom.value(f'count_over_time(ai_jobs_total{{job="{job}",status="dead"}}[5m])') or 0) >= 2
        )

    for job in JOBS:
        wait_for(lambda job=job: scraped(job), timeout=15, what=f"{job}: the second wave scraped")

    # every rule group loaded from our file, every rule evaluated and healthy
    expected_groups = [group["name"] for group in _load_yaml(ALERT_RULES)["groups"]]

    def rules_evaluated() -> bool:
        groups = prom.api("rules")["groups"]
        return sorted(g["name"] for g in groups) == sorted(expected_groups) and all(
            r["health"] != "unknown" for g in groups for r in g["rules"]
        )

    try:
        wait_for(rules_evaluated, timeout=15, what="every rule evaluated once")
    except AssertionError as exc:
        rules = [(g["name"], r["name"], r["health"]) for g in prom.api("rules")["groups"] for r in g["rules"]]
        raise AssertionError(f"{exc}; expected groups {expected_groups}, got {rules}") from None
    groups = prom.api("rules")["groups"]
    assert all(g["file"] == str(ALERT_RULES.resolve()) for g in groups)
    assert sum(len(g["rules"]) for g in groups) == len(_alert_rules())
    unhealthy = [
        (r["name"], r["health"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"
    ]
    assert unhealthy == []

    # every expression the dashboard and the alert rules use evaluates
    dashboard = _dashboard_exprs()
    assert dashboard, "no dashboard expressions found"
    for expr in dashboard:
        for var, replacement in GRAFANA_VARS.items():
            expr = expr.replace(var, replacement)
        assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
        result = prom.query(expr)
        # nothing was rate limited here, and no spending limit is past its soft threshold (that series lists only
        # those: empty otherwise, by design)
        if not any(name in expr for name in ("ai_rate_limit_wait_total", "ai_budget_spent_ratio")):
            assert result, f"dashboard expression returned no data: {expr!r}"
    for rule in _alert_rules():
        prom.query(rule["expr"])  # most are (rightly) empty: nothing is wrong with this service

    # the core series, with the numbers the jobs produced (each target exports the host's counters)
    assert prom.value('count(up{job=~"aipb-api|aipb-workers"} == 1)') == 2
    for job in JOBS:
        sel = f'job="{job}",provider="simulated",model="sim-small"'
        assert prom.value(f"ai_jobs_retry_total{{{sel}}}") == 2
        assert prom.value(f'ai_jobs_attempts_total{{{sel},outcome="failed"}}') == 3
        assert prom.value(f'ai_jobs_validation_total{{{sel},result="fail"}}') == 1
        # 6 billed calls (5 successes, 1 invalid page) of 100 + 50 tokens
        assert prom.value(f'ai_llm_tokens_total{{{sel},type="prompt"}}') == 6 * SIM["prompt_tokens"]
        assert prom.value(f'ai_llm_tokens_total{{{sel},type="completion"}}') == 6 * SIM["completion_tokens"]
        assert prom.value(f'ai_queue_size{{job="{job}",status="waiting"}}') == 0
        assert prom.value(f'ai_queue_size{{job="{job}",status="completed"}}') == 8  # attempts
        assert prom.value(f'ai_dlq_entries{{job="{job}",status="open"}}') == 1
    assert prom.value('sum(rate(ai_jobs_total{job="aipb-workers",status="succeeded"}[1m]))') > 0
    assert prom.value('sum(rate(ai_llm_tokens_total{job="aipb-api"}[1m]))') > 0
    assert prom.value("max(ai_jobs_validation_pass_rate)") == pytest.approx(100 * 5 / 6)
    p95 = 'histogram_quantile(0.95, sum by (le) (rate(ai_jobs_processing_duration_seconds_bucket{job="aipb-api"}[1m])))'
    assert prom.value(p95) is not None
