"""Shared fixtures. Integration harnesses live in tests/harness/."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def require_program(name: str) -> None:
    """Skip on a developer machine without `name`; in CI a missing program fails."""
    if shutil.which(name) is None and not os.path.exists(name):
        message = f"{name} is not installed (make deps installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def require_root() -> None:
    if os.geteuid() != 0:
        message = "needs root (a private Postfix instance, chown to postfix)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
