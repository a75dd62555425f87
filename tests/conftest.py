"""Suite-wide rules that no single test can forget."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def run_outside_the_checkout(tmp_path_factory):
    """Every test (and every fixture) runs from an empty folder, so a test that reads or writes a path
    relative to the working directory fails here rather than on someone else's machine. Find files
    from ``Path(__file__)``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("working_directory"))
        yield
