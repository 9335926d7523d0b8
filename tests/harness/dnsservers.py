"""One fixture over the three RFC 2136 primaries operators run: BIND, Knot
DNS and PowerDNS, each a real server on loopback (tests/harness/bind.py,
knot.py, pdns.py) with the same zone, keys, grants and helpers.

Use in a test module::

    dns_server = dns_server_fixture()            # module-scoped, 3 parameters

    def test_x(dns_server: BindServer) -> None:  # runs once per server
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_program
from tests.harness.bind import BindServer
from tests.harness.knot import KnotServer
from tests.harness.pdns import PdnsServer

SERVERS: dict[str, type[BindServer]] = {
    "bind": BindServer,
    "knot": KnotServer,
    "pdns": PdnsServer,
}


def dns_server_fixture(
    name: str = "dns_server", scope: Any = "module", **options: Any
) -> Callable[..., Iterator[BindServer]]:
    """A pytest fixture giving a running server, parametrised over `SERVERS`."""

    @pytest.fixture(name=name, scope=scope, params=list(SERVERS))
    def _fixture(request: pytest.FixtureRequest) -> Iterator[BindServer]:
        kind = SERVERS[request.param]
        for program in kind.programs:
            require_program(program)
        with kind(**options) as server:
            yield server

    return _fixture
