"""Shared fixtures. Integration harnesses live in tests/harness/."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

IN_CI = os.environ.get("CI") == "true"

# Property tests judge the code, not the machine: on two shared cores running
# four pytest workers, generating examples can be "too slow" and one example
# can pass hypothesis's default 200 ms deadline. Those are timing checks, not
# findings (a Debian 12 lane failed on one); every other health check stays.
settings.register_profile("danesync", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("danesync")


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


# -- parallel runs (pytest-xdist, docs/ci.md) ------------------------------------
# `make test` hands whole test files to its workers in collection order
# (--dist loadfile). The longest files go first, so that no worker starts one
# at the end while the others are idle: the simulation (one long, CPU-bound
# test), then the integration files with a `slow` test, then the other
# integration files, then the many short unit files that fill the gaps.
# Only the order of files changes; the tests of a file keep theirs.


def pytest_configure(config: pytest.Config) -> None:
    # Recent pytest-xdist (3.8 in the venv) sorts files by their number of tests
    # unless told not to; older ones keep the collection order.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _file_rank(item: pytest.Item) -> int:
    parts = item.path.parts
    if "sim" in parts:
        return 0
    if "integration" in parts:
        return 1 if item.get_closest_marker("slow") else 2
    return 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the usual order
    rank: dict[object, int] = {}
    for item in items:
        rank[item.path] = min(rank.get(item.path, 3), _file_rank(item))
    order = {path: index for index, path in enumerate(dict.fromkeys(i.path for i in items))}
    items.sort(key=lambda item: (rank[item.path], order[item.path]))
