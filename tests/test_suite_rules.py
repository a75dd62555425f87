"""The rules tests/conftest.py sets for the whole suite hold."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tests_run_outside_the_checkout():
    """A path relative to the working directory (``configs/tiny.yaml``) must fail in every test, wherever pytest
    was started: tests find files from ``Path(__file__)``."""
    cwd = Path.cwd().resolve()
    assert cwd != REPO and REPO not in cwd.parents
    assert not any(cwd.iterdir()) or not (cwd / "configs").exists()
