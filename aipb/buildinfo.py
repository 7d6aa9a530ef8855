"""Write version.json (version, git commit, build date): run by the build, never edited by hand.

python -m aipb.buildinfo [--version X]
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.1.0"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str]) -> int:
    version = argv[argv.index("--version") + 1] if "--version" in argv else VERSION
    data = {"version": version, "commit": _git_commit(), "build_date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    (ROOT / "version.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"version.json: {data['version']} {data['commit']} {data['build_date']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
