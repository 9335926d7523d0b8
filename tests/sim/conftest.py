"""The simulation logs nothing: thousands of passes would only fill the capture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


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
