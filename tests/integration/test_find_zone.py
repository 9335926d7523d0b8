"""Check mode with only `dns.server`: the zone comes from the server's SOA answer."""

from __future__ import annotations

import pytest

from danesync.actions.dns import Server, find_zone
from danesync.errors import DnsError
from tests.harness.bind import BindServer, bind_fixture

pytestmark = pytest.mark.integration

bind = bind_fixture()


class TestFindZone:
    """An SOA query without recursion names the zone a TLSA name is in."""

    def test_name_below_the_apex(self, bind: BindServer) -> None:
        server = Server("127.0.0.1", bind.port)
        assert find_zone(server, "_25._tcp.mx.example.test") == "example.test."

    def test_name_outside_the_servers_zones(self, bind: BindServer) -> None:
        server = Server("127.0.0.1", bind.port)
        with pytest.raises(DnsError, match=r"set dns\.zone"):
            find_zone(server, "_25._tcp.mx.example.org")
