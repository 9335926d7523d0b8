"""The DANE-safe rollover through `danesync sync`, against BIND, Knot DNS and
PowerDNS alike, with a real Postfix: the hand-made record is kept, the old
record retired only after the new chain is served, and DNS faults hold the
rollover with a `dns.failed` that names the real cause.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.harness.bind import BindServer
from tests.harness.certs import Hierarchy
from tests.harness.dnsservers import dns_server_fixture
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture
from tests.integration.test_rollover import MX, NAME, Host, issuer_of, names, ta

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
dns_server = dns_server_fixture(scope="function")

BY_HAND = "3 1 1 " + "ab" * 32


@pytest.fixture
def old() -> Hierarchy:
    return Hierarchy(f"Old {uuid.uuid4().hex[:8]}")


@pytest.fixture
def new() -> Hierarchy:
    return Hierarchy(f"New {uuid.uuid4().hex[:8]}")


def test_rollover_keeps_the_hand_made_record(
    tmp_path: Path,
    postfix: PostfixInstance,
    dns_server: BindServer,
    old: Hierarchy,
    new: Hierarchy,
) -> None:
    host = Host(tmp_path, postfix, dns_server)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    dns_server.add_record(NAME, "TLSA", BY_HAND)

    code, events = host.sync()
    assert code == 0, events
    assert "tlsa.published" in names(events) and "chain.deployed" not in names(events)
    assert dns_server.dig_tlsa(NAME) == {ta(old), BY_HAND}
    host.sync_until("chain.deployed")
    assert host.served_issuer() == issuer_of(old)

    renew(host.letsencrypt, MX, new.issue([MX]))
    code, events = host.sync()
    assert code == 0 and "tlsa.published" in names(events), events
    assert dns_server.dig_tlsa(NAME) == {ta(old), ta(new), BY_HAND}
    assert host.served_issuer() == issuer_of(old)  # held until the new record is old enough

    events = host.sync_until("chain.deployed")
    assert "tlsa.retired" in names(events)
    assert host.served_issuer() == issuer_of(new)
    assert dns_server.dig_tlsa(NAME) == {ta(new), BY_HAND}
    ok, output = postfix.dane_verify(MX, ta(new))
    assert ok, output


def test_record_deleted_by_hand_is_republished(
    tmp_path: Path, postfix: PostfixInstance, dns_server: BindServer, old: Hierarchy
) -> None:
    host = Host(tmp_path, postfix, dns_server)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    host.sync_until("chain.deployed")
    dns_server.delete_record(NAME, "TLSA", ta(old))
    code, events = host.sync()
    assert code == 0 and "tlsa.published" in names(events), events
    assert dns_server.dig_tlsa(NAME) == {ta(old)}


def test_wrong_secret_says_so(
    tmp_path: Path, postfix: PostfixInstance, dns_server: BindServer, old: Hierarchy
) -> None:
    bad_key = tmp_path / "bad.key"
    text = dns_server.key_path.read_text()
    bad_key.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "QUFB" * 11 + '"', text))
    bad_key.chmod(0o600)
    host = Host(tmp_path, postfix, dns_server, key_file=bad_key)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    code, events = host.sync()
    assert code == 1
    (failed,) = [e for e in events if e["event"] == "dns.failed"]
    reason = str(failed["reason"])
    assert "BADSIG" in reason and "secret" in reason, reason
    assert "QUFB" not in str(events)
    # No TLSA records exist, so no cache can hold any: the chain is deployed
    # first (DESIGN.md, "deploy first, then publish") and the publish fails.
    assert "chain.deployed" in names(events)
    assert dns_server.dig_tlsa(NAME) == set()


def test_policy_refusal_says_so(
    tmp_path: Path, postfix: PostfixInstance, dns_server: BindServer, old: Hierarchy
) -> None:
    other = "_25._tcp.other.example.test"
    host = Host(tmp_path, postfix, dns_server, tlsa=other)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    code, events = host.sync()
    assert code == 1
    (failed,) = [e for e in events if e["event"] == "dns.failed"]
    reason = str(failed["reason"])
    assert "REFUSED" in reason and f"{other}. TLSA" in reason, reason
    assert "does not know TSIG key" not in reason
    assert "chain.deployed" in names(events)  # no records yet: deploy first, then publish
