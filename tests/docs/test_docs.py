"""README.md and docs/*.md against the code: what the docs name must exist.

- every `manage.py <command> [<subcommand> ...] [--option ...]` is a real command, subcommand and option
  (Django's command registry and each command's own argparse parser);
- every `/api/...`, `/admin/...`, `/django-rq/...` and `/metrics` path resolves in the URLconf to a real
  view (not the `/api/` or admin catch-all), and `GET|POST|DELETE /path` or a curl's method is one the
  view answers;
- the README's settings table lists exactly the environment variables the code reads (an AST scan of the
  service's Python, plus the Makefile), and every setting named anywhere in the docs is read by the code;
- every `ai_...` metric (and `name{label="value"}` series) named is in a live `/metrics` scrape taken after
  real jobs ran through an RQ worker: one success, one retry, one dead, and rate-limit waits;
- every `make <target>` named exists in the Makefile;
- every alert's `runbook_url` lands on a heading of the guide named exactly like the alert (GitHub's
  anchors), and every relative link between the docs resolves, anchors included.

The checkers return what they found and what is wrong; test_checkers_catch_mistakes feeds them wrong
docs to prove they can fail.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import yaml
from django.core.management import call_command, get_commands, load_command_class
from django.test import Client
from django.urls import Resolver404, resolve
from prometheus_client.parser import text_string_to_metric_families

from jobs import submission
from jobs.models import AIJob, JobStatus
from jobs.providers import simulated
from jobs.worker import AIPBSimpleWorker

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
GUIDE = REPO / "docs" / "OPERATIONS_GUIDE.md"
DOCS = (README, *sorted((REPO / "docs").glob("*.md")))
ALERT_RULES = REPO / "monitoring" / "config" / "alert_rules.yml"
MAKEFILE = REPO / "Makefile"
SERVICE_SOURCES = ("aipb", "jobs", "dlq", "usage", "monitoring", "manage.py")
ALL_SOURCES = (*SERVICE_SOURCES, "bench")
SETTING_PREFIXES = (
    "AI_",
    "AIPB_",
    "DJANGO_",
    "DATABASE_",
    "REDIS_",
    "OPENAI_",
    "ANTHROPIC_",
    "GEMINI_",
    "METRICS_",
    "PROMETHEUS_",
    "LOG_",
    "WEB_",
    "BENCH_",
    "PYTEST_",
)


# --------------------------------------------------------------------------- markdown


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def without_fences(text: str) -> str:
    """The text with fenced code blocks blanked (line numbers kept)."""
    return _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def fenced_lines(text: str) -> list[str]:
    """Each line of every fenced block, shell continuations joined."""
    return [line for block in _FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def code_snippets(text: str) -> list[str]:
    """Each line of every fenced block and every inline code span."""
    return fenced_lines(text) + _INLINE.findall(without_fences(text))


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: formatting dropped, lowercase, punctuation dropped, spaces → '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: keep their text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(text: str) -> list[tuple[str, str]]:
    """(heading text, anchor) for every heading outside code blocks, with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = []
    for match in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", without_fences(text), re.MULTILINE):
        base = github_anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.append((match.group(1).strip(), base if count == 0 else f"{base}-{count}"))
    return out


def section(text: str, title: str) -> str:
    """The body of the `## title` section, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no '## {title}' section"
    return match.group(1)


@dataclass
class Report:
    found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- manage.py commands

_COMMAND_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
_SHELL_END = re.compile(r"\s(?:\||>|&&|;|#)\s|\)|$")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def check_commands(snippets: list[str]) -> Report:
    report = Report()
    commands = get_commands()
    for snippet in snippets:
        for match in re.finditer(r"manage\.py\s+(.*)", snippet):
            line = _SHELL_END.split(match.group(1), maxsplit=1)[0]
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            tokens = [t.strip("[]") for t in tokens if t.strip("[]")]
            if not tokens or not _COMMAND_NAME.match(tokens[0]):
                continue  # "manage.py ...", "manage.py commands": no command named
            name, rest = tokens[0], tokens[1:]
            text = f"manage.py {' '.join(tokens)}"
            report.found.append(text)
            if name not in commands:
                report.problems.append(f"{text}: no command {name!r}")
                continue
            parser = load_command_class(commands[name], name).create_parser("manage.py", name)
            parsers = [parser]
            # walk the subcommands: the first non-option token at each level must be a choice
            positional = [t for t in rest if not t.startswith("-")]
            while (sub := _subparsers(parsers[-1])) is not None and positional:
                word = positional.pop(0)
                if word not in sub.choices:
                    report.problems.append(f"{text}: {word!r} is not one of {sorted(sub.choices)}")
                    break
                parsers.append(sub.choices[word])
            known = set().union(*(_options(p) for p in parsers))
            for token in rest:
                if token.startswith("--"):
                    option = token.split("=", 1)[0]
                    if option not in known:
                        report.problems.append(f"{text}: no option {option}")
    return report


# --------------------------------------------------------------------------- URLs

_PATH = re.compile(
    r"(?:\b(?P<method>GET|POST|DELETE|PUT|PATCH)\s+)?"
    r"(?:\$BASE|https?://[A-Za-z0-9.:\[\]-]+)?"
    r"(?P<path>/(?:api|admin|django-rq|metrics)(?:[A-Za-z0-9_\-/{}$<>.])*)"
)
_PLACEHOLDER_SEGMENT = re.compile(r"[{}<>$]|^[A-Z][A-Z_]*$")


def _view_class(match):
    func = match.func
    return getattr(func, "view_class", None) or getattr(func, "cls", None)


def _resolve(path: str):
    """The resolver match for a documented path, placeholders tried as a UUID and as an int; None if none."""
    segments = path.split("/")
    for value in (str(uuid.uuid4()), "1"):
        concrete = "/".join(value if _PLACEHOLDER_SEGMENT.search(s) else s for s in segments)
        try:
            match = resolve(concrete)
        except Resolver404:
            continue
        name = getattr(match.func, "__name__", "")
        if name in ("api_not_found", "catch_all_view"):
            continue  # the catch-alls answer 404 for anything unknown
        return match
    return None


def _curl_method(snippet: str) -> str | None:
    if "curl" not in snippet:
        return None
    explicit = re.search(r"-X\s+([A-Z]+)", snippet)
    if explicit:
        return explicit.group(1)
    return "POST" if re.search(r"\s(-d|--data)\s", snippet) else "GET"


def check_paths(text: str) -> Report:
    report = Report()
    candidates = [(m, _curl_method(line)) for line in fenced_lines(text) for m in _PATH.finditer(line)]
    candidates += [(m, None) for m in _PATH.finditer(without_fences(text))]
    for match, curl_method in candidates:
        path = match.group("path").rstrip(".")
        if "..." in match.group("path"):
            continue  # "/api/..." stands for the whole API
        method = match.group("method") or curl_method
        report.found.append(f"{method or ''} {path}".strip())
        resolved = _resolve(path)
        if resolved is None:
            report.problems.append(f"{path}: resolves to no view")
            continue
        view = _view_class(resolved)
        if method and view is not None and not hasattr(view, method.lower()):
            report.problems.append(f"{method} {path}: {view.__name__} does not answer {method}")
    return report


# --------------------------------------------------------------------------- settings

_READERS = {"env_str", "env_int", "env_float", "env_bool", "env_list", "env_decimal", "getenv"}


def _python_files(roots: tuple[str, ...]) -> list[Path]:
    files = []
    for root in roots:
        path = REPO / root
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return [f for f in files if "migrations" not in f.parts]


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _string_value(node: ast.AST, constants: dict[str, str]) -> str | None:
    """A string literal, or a module-level string constant named by it (ENV_VAR = "...")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def env_vars_read(roots: tuple[str, ...]) -> dict[str, str]:
    """{variable: where} for every environment variable the Python under roots reads, and the Makefile."""
    found: dict[str, str] = {}
    for path in _python_files(roots):
        tree = ast.parse(read(path), filename=str(path))
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name) and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            arg = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called in _READERS or (called == "get" and _is_environ(getattr(func, "value", None))):
                    arg = node.args[0]
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                arg = node.slice
            elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
                arg = node.left
            name = _string_value(arg, constants) if arg is not None else None
            if name:
                found.setdefault(name, str(path.relative_to(REPO)))
    makefile = read(MAKEFILE)
    defined = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*[:?+]?=", makefile, re.MULTILINE)) | {"CURDIR", "MAKE", "SHELL"}
    for name in re.findall(r"\$\$\{?([A-Z][A-Z0-9_]*)", makefile) + re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", makefile):
        if name not in defined:
            found.setdefault(name, "Makefile")
    return found


def settings_table(text: str) -> list[str]:
    """The variables in the first column of the README's settings table."""
    names = []
    for line in section(text, "Settings").splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first_cell = line.split("|")[1]
            names.extend(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def settings_named(text: str) -> set[str]:
    """Every environment-variable-looking name in the text's code (by the prefixes our settings use)."""
    names = set()
    for snippet in code_snippets(text):
        for name in re.findall(r"(?<![A-Za-z0-9_])([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])(?![A-Za-z0-9_])", snippet):
            if name.startswith(SETTING_PREFIXES):
                names.add(name)
    return names


# --------------------------------------------------------------------------- metrics

_METRIC = re.compile(r"(?<![A-Za-z0-9_])(ai_[a-z0-9_]*[a-z0-9])(\{[^}]*\})?")


def metrics_named(text: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value}) for every ai_ metric named; only exact `label="value"` matchers count."""
    out = []
    for match in _METRIC.finditer(text):
        labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', match.group(2) or ""))
        out.append((match.group(1), labels))
    return out


@dataclass
class Scrape:
    names: set[str]
    samples: list[tuple[str, dict[str, str]]]

    def has(self, name: str, labels: dict[str, str]) -> bool:
        if not labels:
            return name in self.names
        return any(n == name and labels.items() <= s.items() for n, s in self.samples)


def parse_scrape(text: str) -> Scrape:
    names, samples = set(), []
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        for sample in family.samples:
            names.add(sample.name)
            samples.append((sample.name, dict(sample.labels)))
    return Scrape(names, samples)


def check_metrics(text: str, scrape: Scrape) -> Report:
    report = Report()
    for name, labels in metrics_named(text):
        shown = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        report.found.append(shown)
        if not scrape.has(name, labels):
            report.problems.append(f"{shown}: not in the /metrics scrape")
    return report


# --------------------------------------------------------------------------- make targets


def make_targets() -> set[str]:
    targets = set()
    for line in read(MAKEFILE).splitlines():
        match = re.match(r"^([A-Za-z0-9_.\- ]+?)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets - {".PHONY"}


def check_make(snippets: list[str], targets: set[str]) -> Report:
    report = Report()
    for snippet in snippets:
        for target in re.findall(r"(?:^|[\s;&(])make\s+([a-z][a-z0-9_-]*)", snippet):
            report.found.append(f"make {target}")
            if target not in targets:
                report.problems.append(f"make {target}: no such target in the Makefile")
    return report


# --------------------------------------------------------------------------- links


def check_links(doc: Path) -> Report:
    report = Report()
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", without_fences(read(doc))):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        report.found.append(f"{doc.name}: {target}")
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            report.problems.append(f"{doc.name}: {target}: no file {file_part}")
            continue
        if anchor and linked.suffix == ".md" and anchor not in {a for _, a in headings(read(linked))}:
            report.problems.append(f"{doc.name}: {target}: no heading with anchor #{anchor} in {linked.name}")
    return report


# =========================================================================== tests


def _all_docs_text() -> str:
    return "\n".join(read(doc) for doc in DOCS)


def test_the_docs_exist_and_cover_what_the_issue_asks():
    readme, guide = read(README), read(GUIDE)
    for title in (
        "Two commands",
        "Five-minute tour",
        "How it fits together",
        "Guarantees",
        "Settings",
        "Providers",
        "Production",
        "Scaling out",
    ):
        section(readme, title)
    for title in (
        "1. System overview",
        "2. Monitoring and alerts",
        "3. Common operations",
        "4. Troubleshooting",
        "5. Performance tuning",
        "6. Cost management",
        "7. Runbooks",
        "8. Emergency procedures",
    ):
        section(guide, title)
    assert "docs/ARCHITECTURE.md" in readme


def test_every_manage_py_command_subcommand_and_option_named_exists():
    report = check_commands([s for doc in DOCS for s in code_snippets(read(doc))])
    assert len(report.found) >= 60, report.found
    assert {f.split()[1] for f in report.found} >= {"jobs", "dlq", "queue", "usage", "reconcile", "metrics_server"}
    assert report.problems == []


def test_every_endpoint_named_resolves_to_a_view_that_answers_its_method():
    found, problems = [], []
    for doc in DOCS:
        report = check_paths(read(doc))
        found += report.found
        problems += [f"{doc.name}: {p}" for p in report.problems]
    assert len(found) >= 50, found
    assert any(f.startswith("POST /api/ai/queue/pause") for f in found)
    assert problems == []


def test_settings_table_lists_exactly_the_environment_variables_the_code_reads():
    table = settings_table(read(README))
    read_by_code = env_vars_read(SERVICE_SOURCES)
    assert len(table) >= 40 and len(read_by_code) >= 40, (table, read_by_code)
    assert len(table) == len(set(table)), "a variable is listed twice"
    missing_from_table = {name: where for name, where in read_by_code.items() if name not in table}
    not_read = sorted(set(table) - set(read_by_code))
    assert missing_from_table == {}, "read by the code but not in README's settings table"
    assert not_read == [], "in README's settings table but read by no code"


def test_every_setting_named_anywhere_in_the_docs_is_read_by_the_code():
    named = settings_named(_all_docs_text())
    assert len(named) >= 30, named
    assert sorted(named - set(env_vars_read(ALL_SOURCES))) == []


def test_every_make_target_named_exists():
    targets = make_targets()
    assert {"run", "test", "stop", "bench"} <= targets
    report = check_make([s for doc in DOCS for s in code_snippets(read(doc))], targets)
    assert len(report.found) >= 5, report.found
    assert report.problems == []


def test_every_runbook_url_lands_on_a_heading_named_exactly_like_its_alert():
    rules = [r for g in yaml.safe_load(read(ALERT_RULES))["groups"] for r in g["rules"] if "alert" in r]
    assert len({r["alert"] for r in rules}) >= 13
    guide_headings = dict(headings(read(GUIDE)))  # text → anchor
    # absolute, from the one base the rules file declares: a link in Slack or an email opens the guide
    (base,) = re.findall(r"^# runbook base: (\S+)$", read(ALERT_RULES), re.MULTILINE)
    assert base.startswith("https://") and base.endswith("/" + str(GUIDE.relative_to(REPO))), base
    assert base in read(GUIDE), "the guide says where its runbook links point"
    for rule in rules:
        url, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert url == base, rule["alert"]
        assert anchor in guide_headings.values(), f"{rule['alert']}: no heading with anchor #{anchor}"
        assert guide_headings.get(rule["alert"]) == anchor, f"{rule['alert']}: the heading is not named after it"


def test_relative_links_between_the_docs_resolve():
    found, problems = [], []
    for doc in DOCS:
        report = check_links(doc)
        found += report.found
        problems += report.problems
    assert len(found) >= 30, found
    assert problems == []


def _submit(user, **simulate) -> AIJob:
    job, created = submission.job_submit(
        owner=user,
        prompt="A landing page for a bakery in Lisbon",
        provider="simulated",
        model="sim-small",
        options={"simulate": {"prompt_tokens": 100, "completion_tokens": 50, **simulate}},
    )
    assert created
    return job


def test_every_metric_named_is_in_a_live_scrape(user, run_worker, settings):
    from usage.models import ModelPrice

    if not ModelPrice.objects.filter(provider="simulated", model="sim-small").exists():
        # transactional tests flush the seeded prices; a price makes ai_llm_cost_usd_total count
        ModelPrice.objects.create(
            provider="simulated",
            model="sim-small",
            input_per_million=1,
            output_per_million=2,
            effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        )
    settings.AI_RATE_LIMIT_PER_SECOND = 2  # three jobs at once: some deliveries wait for a token
    settings.AI_RATE_LIMIT_BURST = 1
    settings.AI_RATE_LIMIT_RETRY_SECONDS = 0
    success = _submit(user)
    retried = _submit(user, fail_attempts=1, error="invalid_json")  # fails validation once, then passes
    dead = _submit(user, fail_attempts=1, error="auth")  # not retryable: dead at once
    # routing: sim-large is down, its first failure opens its circuit, the retry falls back to sim-small
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 1
    simulated.outage_set(model="sim-large", seconds=120)
    fell_back, _ = submission.job_submit(
        owner=user,
        prompt="A landing page for a bakery in Porto",
        provider="simulated",
        model="sim-large",
        fallbacks=[{"provider": "simulated", "model": "sim-small"}],
    )

    run_worker(worker_class=AIPBSimpleWorker)  # in this process, so its counters are in this registry
    call_command("providers", "probe", stdout=StringIO())  # ai_provider_probe_*

    statuses = dict(AIJob.objects.values_list("id", "status"))
    assert (statuses[success.id], statuses[retried.id], statuses[dead.id]) == (
        JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
        JobStatus.DEAD,
    )
    assert AIJob.objects.get(id=fell_back.id).served_model == "sim-small"
    response = Client().get("/metrics")
    assert response.status_code == 200
    scrape = parse_scrape(response.content.decode())

    report = check_metrics(_all_docs_text(), scrape)
    assert len(set(report.found)) >= 15, report.found
    assert sum(1 for f in report.found if "{" in f) >= 5, "labelled series named in the docs are checked too"
    assert report.problems == []


def test_checkers_catch_mistakes():
    wrong = """
## Settings

| variable | default | meaning |
|---|---|---|
| `AI_NOT_A_SETTING` | – | nothing |

Run `manage.py jobs frobnicate`, `manage.py jobs list --no-such-flag`, `manage.py nosuchcommand` and
`manage.py usage prices drop`; call `POST /api/ai/providers`, `GET /api/ai/nothing-here`, open
`/admin/nothing/`; set `AI_NOT_A_SETTING`; run `make deploy`; graph `ai_no_such_metric` and
`ai_jobs_total{status="exploded"}`; read [the runbook](OPERATIONS_GUIDE.md#no-such-heading) and
[a missing file](NOPE.md).

```sh
curl -s -X DELETE $BASE/api/ai/queue
```
"""
    commands = check_commands(code_snippets(wrong))
    assert len(commands.problems) == 4, commands.problems
    paths = check_paths(wrong)
    assert sorted(paths.problems) == sorted(
        [
            "POST /api/ai/providers: ProviderListApi does not answer POST",
            "/api/ai/nothing-here: resolves to no view",
            "/admin/nothing/: resolves to no view",
            "DELETE /api/ai/queue: QueueStatusApi does not answer DELETE",
        ]
    )
    assert settings_table(wrong) == ["AI_NOT_A_SETTING"]
    assert "AI_NOT_A_SETTING" not in env_vars_read(ALL_SOURCES)
    assert "AI_NOT_A_SETTING" in settings_named(wrong)
    assert check_make(code_snippets(wrong), make_targets()).problems == ["make deploy: no such target in the Makefile"]
    scrape = parse_scrape('# TYPE ai_jobs counter\nai_jobs_total{status="succeeded"} 1.0\n')
    assert check_metrics(wrong, scrape).problems == [
        "ai_no_such_metric: not in the /metrics scrape",
        'ai_jobs_total{status="exploded"}: not in the /metrics scrape',
    ]
    assert check_metrics('`ai_jobs_total{status="succeeded"}`', scrape).problems == []
    assert github_anchor("5. Performance tuning") == "5-performance-tuning"
    assert github_anchor("`HighAIJobFailureRate`") == "highaijobfailurerate"
    assert [a for _, a in headings("# A\n## A\n```\n# not a heading\n```\n### A\n")] == ["a", "a-1", "a-2"]


def test_link_checker_catches_a_broken_anchor(tmp_path):
    doc = tmp_path / "doc.md"
    (tmp_path / "other.md").write_text("# Title\n\n## Real heading\n")
    doc.write_text("[ok](other.md#real-heading) [bad](other.md#fake) [gone](missing.md) [self](#title)\n# Title\n")
    report = check_links(doc)
    assert report.problems == [
        "doc.md: other.md#fake: no heading with anchor #fake in other.md",
        "doc.md: missing.md: no file missing.md",
    ]
