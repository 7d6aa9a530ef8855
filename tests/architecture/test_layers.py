"""The import contracts in pyproject.toml ([tool.importlinter]) hold, and they bite: a copy of the code with
one forbidden import breaks the named contract. `make lint` runs the same `lint-imports`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aipb", "jobs", "dlq", "usage", "monitoring", "audit", "schedules", "webhooks")
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def code_copy(tmp_path_factory) -> Path:
    """The packages and the contracts, without migrations, templates or caches (only imports matter)."""
    dest = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        ignore = shutil.ignore_patterns("__pycache__", "*.html", "*.json")
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def inject(copy: Path, module: str, line: str):
    path = copy / (module.replace(".", "/") + ".py")
    original = path.read_text()
    path.write_text(original + f"\n{line}\n")
    return lambda: path.write_text(original)


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_copy_keeps_them_too(code_copy):
    """The copy is faithful, so the failures below come from the injected line alone."""
    result = lint_imports(code_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken", "named"),
    [
        # the ground floor importing an app
        ("aipb.env", "import jobs.models  # noqa", "Layers:", "aipb.env -> jobs.models"),
        # core reaching up into orchestration: the state machine calling the pipeline
        ("jobs.transitions", "from jobs import pipeline  # noqa", "Layers:", "jobs.transitions -> jobs.pipeline"),
        # a leaf reaching up: dead-letter records calling the operator actions (the old jobs ↔ dlq cycle)
        ("dlq.records", "from jobs.actions import job_retry  # noqa", "Layers:", "dlq.records -> jobs.actions"),
        # a cycle between two modules of one package that the layers contract does not order
        ("jobs.providers.base", "import jobs.providers.local  # noqa", "No import cycles", "jobs.providers"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(code_copy, module, line, broken, named):
    restore = inject(code_copy, module, line)
    try:
        result = lint_imports(code_copy)
    finally:
        restore()
    assert result.returncode != 0, result.stdout
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section and named in broken_section, result.stdout
