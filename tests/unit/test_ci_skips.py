"""With CI=true, a skipped test fails the run."""

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def run_pytest(tmp_path: Path, ci: str) -> int:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_one.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "@pytest.mark.skip(reason='no broker')\ndef test_skipped():\n    pass\n"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        env={"CI": ci, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
    ).returncode


def test_skipped_test_fails_the_run_only_in_ci(tmp_path: Path) -> None:
    assert run_pytest(tmp_path, "true") == 1
    assert run_pytest(tmp_path, "") == 0
