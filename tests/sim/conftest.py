"""The simulation logs nothing: thousands of passes would only fill the capture."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
import structlog

import danesync

# Hypothesis (6.13x and later) also draws values from the constants of every
# local module imported so far, rescanning whenever sys.modules grows. A module
# the product imports lazily (deploy.py: actions.postfix at the first deploy),
# or one an earlier test happened to import, changed what the derandomized
# simulation generated: it failed after tests/unit/test_steps.py and passed
# alone. With every danesync module imported before any test, it is one run.
for _module in pkgutil.walk_packages(danesync.__path__, "danesync."):
    if not _module.name.endswith("__main__"):
        importlib.import_module(_module.name)


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    previous = structlog.get_config()
    structlog.configure(
        processors=[lambda logger, name, event: ""],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)
