"""Test-suite configuration: the ``slow`` mark (tests over ~10 s; deselect with ``-m "not slow"``)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that runs for more than about 10 seconds")
