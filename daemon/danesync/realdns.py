"""The DNS port over RFC 2136 and plain queries (actions/dns.py).

Imported only when DNS is on (adapters.open_dns): dnspython comes with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from danesync.actions import dns as dns_actions
from danesync.config import Config
from danesync.errors import DnsError
from danesync.history import RRset
from danesync.ports import Answers
from danesync.tlsa import TlsaRecord
from danesync.tsigkey import TsigKey
from danesync.tsigkeyfile import current_tsig_key


class RealDns:
    def __init__(self, config: Config) -> None:
        self.config = config
        server = config.dns.server
        self._primary = None
        if server is not None:
            self._primary = dns_actions.Server(server.host, server.port)
        self.primary = None if server is None else str(server)
        self._verify: list[dns_actions.Server] | None = None
        self._key: TsigKey | None = None

    def _servers(self) -> list[dns_actions.Server]:
        if self._verify is None:
            configured = self.config.dns.verify_servers
            if configured:
                self._verify = [dns_actions.Server(e.host, e.port) for e in configured]
            else:
                zone = self.config.dns.zone
                if self._primary is None:
                    raise DnsError("no dns.verify_servers, and no dns.server to find them")
                if zone is None:
                    # Check mode may name only the server: its SOA answer names the zone.
                    names = [n for c in self.config.certificates for n in c.tlsa]
                    if not names:
                        raise DnsError("no TLSA name to find the zone of")
                    zone = dns_actions.find_zone(self._primary, names[0])
                self._verify = dns_actions.find_verify_servers(zone, self._primary)
            if self._primary is not None and self._primary not in self._verify:
                self._verify.append(self._primary)  # what danesync's updates change
        return self._verify

    def query(self, names: Sequence[str]) -> Answers:
        try:
            servers = self._servers()
        except DnsError as error:
            return Answers({}, (str(error),))
        visibility = dns_actions.query_visibility(servers, names)
        rrsets: dict[str, dict[str, RRset]] = {}
        for name in visibility.names:
            per_server = visibility.answers.get(name, {})
            ttls = visibility.ttls.get(name, {})
            rrsets[name] = {
                str(server): RRset.of(records, ttls.get(server, 0))
                for server, records in per_server.items()
            }
        fresh = frozenset(n for n in visibility.names if not visibility.errors.get(n))
        by_server: dict[str, str | None] = {str(s): None for s in visibility.servers}
        for name in sorted(visibility.errors):
            for server, reason in sorted(visibility.errors[name].items()):
                by_server[str(server)] = by_server[str(server)] or f"{name}: {reason}"
        return Answers(rrsets, visibility.problems(), fresh, by_server)

    def update(
        self,
        add: Sequence[TlsaRecord],
        delete: Sequence[TlsaRecord],
        ttl: int,
        expected: Mapping[str, frozenset[TlsaRecord]],
    ) -> dns_actions.UpdateResult:
        zone = self.config.dns.zone
        if self._primary is None or zone is None:
            raise DnsError("dns.server and dns.zone are needed to publish")
        if self.config.dns.tsig_key_file is not None:
            # Re-read when the file changed: a key fixed in place needs no SIGHUP.
            self._key = current_tsig_key(self.config.dns.tsig_key_file)
        return dns_actions.send_tlsa_update(
            self._primary, zone, self._key, add=add, delete=delete, ttl=ttl, expected=expected
        )
