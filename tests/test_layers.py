"""The one-way layers of ARCHITECTURE.md (apps -> recipes -> rewards | eval -> core), as the
import-linter contracts in ``.importlinter`` state them."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"  # import-linter's console script
    run = subprocess.run([str(lint_imports), "--config", str(REPO / ".importlinter"), "--no-cache"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.count("KEPT") == 2, run.stdout[-2000:]
