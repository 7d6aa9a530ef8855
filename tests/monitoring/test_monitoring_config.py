"""The monitoring configuration in monitoring/config/, checked by its own tools.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages. When
they are missing these tests fail (never skip): an unchecked alerting config is a broken one.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "monitoring" / "config"
PROMETHEUS_CONFIG = CONFIG_DIR / "prometheus.yml"
ALERT_RULES = CONFIG_DIR / "alert_rules.yml"
ALERT_RULES_TESTS = CONFIG_DIR / "alert_rules.test.yml"
ALERTMANAGER_CONFIG = CONFIG_DIR / "alertmanager.yml"
EMAIL_TEMPLATE = CONFIG_DIR / "email.tmpl"
DASHBOARD = CONFIG_DIR / "grafana-dashboard.json"


def runbook_base() -> str:
    """The one base of every runbook_url, declared in alert_rules.yml's header (docs/OPERATIONS_GUIDE.md says
    how to point it at your copy of the docs)."""
    (base,) = re.findall(r"^# runbook base: (\S+)$", ALERT_RULES.read_text(), re.MULTILINE)
    return base


# Every metric the application exports, by the name it has on /metrics (histograms by their base
# name). The alert rules and the dashboard may reference only these, plus PROMETHEUS_METRICS.
EXPORTED_METRICS = (
    "ai_jobs_total",
    "ai_jobs_processing_duration_seconds",
    "ai_job_queue_wait_seconds",
    "ai_jobs_retry_total",
    "ai_jobs_validation_pass_rate",
    "ai_jobs_validation_total",
    "ai_queue_size",
    "ai_llm_tokens_total",
    "ai_llm_cost_usd_total",
    "ai_llm_unpriced_calls_total",
    "ai_jobs_errors_total",
    "ai_jobs_attempts_total",
    "ai_dlq_entries",
    "ai_budgets_nearly_exhausted",
    "ai_budgets_exhausted",
    "ai_budget_spent_ratio",
    "ai_budget_refusals_total",
    "ai_rate_limit_wait_total",
    "ai_workers",
    "ai_worker_slots",
    "ai_database_up",
    "ai_redis_up",
    "ai_build_info",
    "ai_schedule_firings_total",
    "ai_scheduler_last_tick_timestamp_seconds",
    "ai_webhook_pending",
    "ai_webhook_deliveries_total",
    "ai_webhook_delivery_duration_seconds",
    "ai_provider_circuit_state",
    "ai_circuit_wait_total",
    # django-prometheus: the API's latency panel
    "django_http_requests_latency_seconds_by_view_method",
)
HISTOGRAM_METRICS = (
    "ai_jobs_processing_duration_seconds",
    "ai_job_queue_wait_seconds",
    "ai_webhook_delivery_duration_seconds",
    "django_http_requests_latency_seconds_by_view_method",
)
# Synthesised by Prometheus itself for every scrape.
PROMETHEUS_METRICS = ("up",)

REQUIRED_ALERTS = (
    "HighAIJobFailureRate",
    "CriticalAIJobFailureRate",
    "SlowAIJobProcessing",
    "HighAIJobRetryRate",
    "AIQueueCongestion",
    "AIQueueSeverelyCongested",
    "LowValidationPassRate",
    "NoAIJobsProcessed",
    "HighTokenUsage",
    "ProviderFailures",
    "AIPBTargetDown",
    "DLQGrowing",
    "NoAIWorkers",
    "AISchedulerStopped",
    "WebhookBacklog",
    "BudgetNearlyExhausted",
)
SEVERITIES = ("critical", "warning", "info")
COMPONENTS = ("api", "worker", "llm", "queue")
SLACK_RECEIVERS = {
    "slack-critical": "#aipb-critical",
    "slack-warnings": "#aipb-warnings",
    "slack-info": "#aipb-info",
    "slack-worker": "#aipb-workers",
}

_METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])(ai_[a-z_]+|up)(?![A-Za-z0-9_:])")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH, so the monitoring config cannot be checked. "
            "Install it with: apt-get install -y prometheus prometheus-alertmanager",
            pytrace=False,
        )
    return path


def _run(*args: str, cwd: Path = CONFIG_DIR) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_tool(args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=120)
    print(f"$ {' '.join(args)}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}")
    return proc


def _assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


def _load_yaml(path: Path) -> dict:
    with path.open() as f:
        return yaml.safe_load(f)


def _alert_rules() -> list[dict]:
    return [rule for group in _load_yaml(ALERT_RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def _alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in _alert_rules()})


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _dashboard_panels() -> list[dict]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels nested in collapsed rows
    return panels


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in _dashboard_panels() for target in panel.get("targets", []) if "expr" in target]


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression, histogram series mapped to their base name."""
    names = set()
    for name in _METRIC_RE.findall(expr):
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAM_METRICS:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


# ------------------------------------------------------------------------ prometheus


def test_promtool_check_config():
    proc = _run("promtool", "check", "config", PROMETHEUS_CONFIG.name)
    _assert_ok(proc)
    assert "SUCCESS" in proc.stdout


def test_prometheus_config_scrapes_both_jobs_and_alerts_to_alertmanager():
    config = _load_yaml(PROMETHEUS_CONFIG)

    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["alert_rules.yml"]
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert targets == {"aipb-api": ["127.0.0.1:8000"], "aipb-workers": ["127.0.0.1:9108"]}
    (alertmanager,) = config["alerting"]["alertmanagers"]
    assert [t for sc in alertmanager["static_configs"] for t in sc["targets"]] == ["127.0.0.1:9093"]


_COMMENTED_AUTH_LINE = re.compile(
    r"^(?P<indent>[ ]*)# (?P<line>authorization:|  type: Bearer|  credentials_file: /etc/aipb/metrics_token)$",
    re.MULTILINE,
)


def test_prometheus_bearer_token_block_is_valid_once_uncommented(tmp_path):
    # The authorization blocks are committed commented out (promtool fails on a credentials_file
    # that does not exist); prove that following the instructions yields a valid config.
    text = PROMETHEUS_CONFIG.read_text()
    assert len(_COMMENTED_AUTH_LINE.findall(text)) == 6, "expected one commented 3-line authorization block per job"

    token_file = tmp_path / "metrics_token"
    token_file.write_text("s3cret\n")
    enabled = _COMMENTED_AUTH_LINE.sub(r"\g<indent>\g<line>", text).replace("/etc/aipb/metrics_token", str(token_file))
    (tmp_path / "prometheus.yml").write_text(enabled)
    shutil.copy(ALERT_RULES, tmp_path / ALERT_RULES.name)

    for job in yaml.safe_load(enabled)["scrape_configs"]:
        assert job["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}, job["job_name"]
    _assert_ok(_run("promtool", "check", "config", "prometheus.yml", cwd=tmp_path))


def test_promtool_check_rules():
    proc = _run("promtool", "check", "rules", ALERT_RULES.name)
    _assert_ok(proc)
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules():
    proc = _run("promtool", "test", "rules", ALERT_RULES_TESTS.name)
    _assert_ok(proc)
    assert "SUCCESS" in proc.stdout


# ----------------------------------------------------------------------- alert rules


def test_required_alerts_exist():
    missing = set(REQUIRED_ALERTS) - set(_alert_names())
    assert not missing, f"alerts missing from alert_rules.yml: {sorted(missing)}"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_labels_and_annotations(rule):
    name = rule["alert"]
    labels = rule.get("labels", {})
    annotations = rule.get("annotations", {})

    assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
    assert labels.get("component") in COMPONENTS, f"{name}: component {labels.get('component')!r}"
    assert annotations.get("summary", "").strip(), f"{name}: empty summary"
    assert "$value" in annotations.get("description", ""), f"{name}: description does not show the current value"
    assert annotations.get("runbook_url") == f"{runbook_base()}#{name.lower()}", name


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    tests = _load_yaml(ALERT_RULES_TESTS)
    assert tests["rule_files"] == [ALERT_RULES.name]
    firing, silent = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])

    alerts = set(_alert_names())
    assert not alerts - firing, f"alerts with no test where they fire: {sorted(alerts - firing)}"
    assert not alerts - silent, f"alerts with no test where they stay silent: {sorted(alerts - silent)}"
    assert not (firing | silent) - alerts, f"tests for unknown alerts: {sorted((firing | silent) - alerts)}"


# ---------------------------------------------------------------------- alertmanager


def test_amtool_check_config():
    proc = _run("amtool", "check-config", ALERTMANAGER_CONFIG.name)
    _assert_ok(proc)
    assert "SUCCESS" in proc.stdout
    # A template glob that matches nothing passes check-config silently; make sure it matched.
    assert EMAIL_TEMPLATE.is_file()
    assert _load_yaml(ALERTMANAGER_CONFIG)["templates"] == [EMAIL_TEMPLATE.name]


def test_alertmanager_secrets_come_from_files():
    config = _load_yaml(ALERTMANAGER_CONFIG)
    assert "hooks.slack.com" not in ALERTMANAGER_CONFIG.read_text()
    assert "slack_api_url" not in config.get("global", {})
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}

    for name, channel in SLACK_RECEIVERS.items():
        (slack,) = receivers[name]["slack_configs"]
        assert slack["channel"] == channel
        assert slack["api_url_file"] == "/etc/alertmanager/slack_webhook_url"
        assert "api_url" not in slack

    (email,) = receivers["email-oncall"]["email_configs"]
    assert "auth_password" not in email and "smtp_auth_password" not in config["global"]
    assert config["global"]["smtp_auth_password_file"] == "/etc/alertmanager/smtp_password"


def _routes_test(labels: dict[str, str], expected: list[str]) -> subprocess.CompletedProcess[str]:
    return _run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG.name}",
        f"--verify.receivers={','.join(expected)}",
        *(f"{key}={value}" for key, value in labels.items()),
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"severity": "critical", "component": "api"}, ["email-oncall", "slack-critical"]),
        ({"severity": "critical", "component": "worker"}, ["slack-worker", "email-oncall", "slack-critical"]),
        ({"severity": "warning", "component": "worker"}, ["slack-worker"]),
        ({"severity": "info", "component": "worker"}, ["slack-worker"]),
        ({"severity": "warning", "component": "llm"}, ["slack-warnings"]),
        ({"severity": "warning", "component": "queue"}, ["slack-warnings"]),
        ({"severity": "info", "component": "llm"}, ["slack-info"]),
        ({"alertname": "SomethingUnlabelled"}, ["slack-warnings"]),
    ],
)
def test_alertmanager_routing(labels, expected):
    proc = _routes_test(labels, expected)
    _assert_ok(proc)
    assert proc.stdout.split() == [",".join(expected)]


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: f"{rule['alert']}-{rule['labels']['component']}")
def test_every_alert_reaches_its_channels(rule):
    labels = {"alertname": rule["alert"], **rule["labels"]}
    expected = []
    if labels["component"] == "worker":
        expected.append("slack-worker")
    if labels["severity"] == "critical":
        expected += ["email-oncall", "slack-critical"]
    elif labels["component"] != "worker":
        expected.append({"warning": "slack-warnings", "info": "slack-info"}[labels["severity"]])
    _assert_ok(_routes_test(labels, expected))


def test_alertmanager_inhibit_rules():
    inhibits = _load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    pairs = {
        (rule["source_matchers"][0], rule["target_matchers"][0]): rule.get("equal", [])
        for rule in inhibits
        if len(rule["source_matchers"]) == 1
    }
    critical_to_warning = {
        "CriticalAIJobFailureRate": "HighAIJobFailureRate",
        "AIQueueSeverelyCongested": "AIQueueCongestion",
    }
    for critical, warning in critical_to_warning.items():
        equal = pairs.get((f'alertname="{critical}"', f'alertname="{warning}"'))
        assert equal, f"{critical} must inhibit {warning} with equal labels"
    assert pairs[('alertname="AIPBTargetDown"', 'alertname!="AIPBTargetDown"')] == ["job", "instance"]


def _render(text: str, template_type: str = "text") -> str:
    proc = _run(
        "amtool",
        "template",
        "render",
        f"--template.glob={EMAIL_TEMPLATE.name}",
        f"--template.text={text}",
        f"--template.type={template_type}",
    )
    _assert_ok(proc)
    return proc.stdout


@pytest.mark.parametrize(
    ("name", "template_type", "expected"),
    [
        ("aipb.email.subject", "text", "[aipb "),
        ("aipb.email.text", "text", "Runbook:"),
        ("aipb.email.html", "html", "<h2>[aipb "),
    ],
)
def test_email_templates_render(name, template_type, expected):
    assert f'{{{{ define "{name}" -}}}}' in EMAIL_TEMPLATE.read_text()
    assert expected in _render(f'{{{{ template "{name}" . }}}}', template_type)


def test_email_receiver_uses_the_templates():
    (receiver,) = [r for r in _load_yaml(ALERTMANAGER_CONFIG)["receivers"] if r["name"] == "email-oncall"]
    (email,) = receiver["email_configs"]
    assert email["headers"]["Subject"] == '{{ template "aipb.email.subject" . }}'
    assert email["html"] == '{{ template "aipb.email.html" . }}'


def test_slack_templates_render():
    receivers = {r["name"]: r for r in _load_yaml(ALERTMANAGER_CONFIG)["receivers"]}
    for name in SLACK_RECEIVERS:
        (slack,) = receivers[name]["slack_configs"]
        assert _render(slack["title"]).strip(), f"{name}: empty title"
        assert "Runbook:" in _render(slack["text"]), f"{name}: text lacks the runbook"


# ------------------------------------------------------------------------- dashboard


def _panel(title: str) -> dict:
    (panel,) = [p for p in _dashboard_panels() if p["title"] == title]
    return panel


def _threshold_steps(title: str) -> list[float]:
    """The values where a panel's colour changes (the first step, from minus infinity, has none)."""
    return [step["value"] for step in _panel(title)["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


def _alert_threshold(alert: str) -> float:
    (rule,) = [r for r in _alert_rules() if r["alert"] == alert]
    return float(re.search(r"[<>]\s*([0-9.e+]+)\s*(?:$|\n)", rule["expr"].strip()).group(1))


def test_grafana_thresholds_are_the_alert_thresholds():
    alerts = {
        "Dead jobs (share of finished, 5m)": ["HighAIJobFailureRate", "CriticalAIJobFailureRate"],
        "Validation pass rate": ["LowValidationPassRate"],
        "Attempt processing time (p50 / p95 / p99)": ["SlowAIJobProcessing"],
        "Queue status": ["AIQueueCongestion", "AIQueueSeverelyCongested"],
        "Retry rate": ["HighAIJobRetryRate"],
        "Provider failed-attempt rate": ["ProviderFailures"],
        "Token usage (tokens/hour)": ["HighTokenUsage"],
        "Cost rate (USD/hour)": ["HighLLMCostRate"],
    }
    for title, names in alerts.items():
        assert _threshold_steps(title) == [_alert_threshold(name) for name in names], title
    assert _alert_threshold("LowValidationPassRate") == 80.0  # the parser reads "< 80", not the guard after it


def test_grafana_units_say_what_is_counted():
    units = {p["title"]: p["fieldConfig"]["defaults"].get("unit") for p in _dashboard_panels() if p["type"] != "row"}
    assert "reqps" not in units.values(), "jobs, retries and attempts are not HTTP requests"
    assert units["Job rate by status"] == units["Jobs by provider"] == "suffix: jobs/s"
    assert units["Queue wait before the first attempt (p50 / p95 / p99)"] == "s"
    assert units["API latency by view (p50 / p95)"] == "s"


def test_grafana_dashboard_shape():
    dashboard = _dashboard()
    panels = _dashboard_panels()

    assert dashboard["schemaVersion"] >= 36
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("provider", "model", "instance"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"], name
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert f"${name}" in "\n".join(_dashboard_exprs()), f"no panel filters on ${name}"

    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 12
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in data_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_grafana_dashboard_covers_the_service():
    exprs = "\n".join(_dashboard_exprs())
    for metric in (
        "ai_jobs_total",
        "ai_jobs_processing_duration_seconds_bucket",
        "ai_queue_size",
        "ai_jobs_validation_pass_rate",
        "ai_llm_tokens_total",
        "ai_jobs_retry_total",
        "ai_llm_cost_usd_total",
        "ai_dlq_entries",
        "ai_workers",
        "ai_build_info",
        "ai_job_queue_wait_seconds_bucket",
        "django_http_requests_latency_seconds_by_view_method_bucket",
    ):
        assert metric in exprs, f"no dashboard panel queries {metric}"
    for quantile in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_grafana_dashboard_exprs_are_valid_promql(tmp_path):
    # promtool has no bare PromQL checker, so wrap every expression in a recording rule.
    grafana_vars = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "6h",
        "$provider": ".*",
        "$model": ".*",
        "$instance": ".*",
    }
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _assert_ok(_run("promtool", "check", "rules", "dashboard_rules.yml", cwd=tmp_path))


# --------------------------------------------------------------------- metric names


def test_metric_name_parser():
    expr = "histogram_quantile(0.9, sum by (le) (rate(ai_jobs_processing_duration_seconds_bucket[5m]))) / ai_bogus"
    assert metric_names(expr) == {"ai_jobs_processing_duration_seconds", "ai_bogus"}
    assert metric_names('up{job="aipb-api"} == 0 and ai_queue_size_count > 0') == {"up", "ai_queue_size_count"}


@pytest.mark.parametrize(
    "source",
    ["alert_rules", "grafana_dashboard"],
)
def test_only_exported_metrics_are_referenced(source):
    exprs = [rule["expr"] for rule in _alert_rules()] if source == "alert_rules" else _dashboard_exprs()
    referenced = set().union(*(metric_names(expr) for expr in exprs))
    assert referenced, f"no metric found in {source}"
    unknown = referenced - set(EXPORTED_METRICS) - set(PROMETHEUS_METRICS)
    assert not unknown, f"{source} references metrics the app does not export: {sorted(unknown)}"
