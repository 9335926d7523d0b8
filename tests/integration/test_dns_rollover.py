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

from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy
from tests.harness.danesync import json_events, start_danesync
from tests.harness.dnsservers import dns_server_fixture
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture
from tests.integration.test_rollover import MX, NAME, Host, issuer_of, names, ta, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
dns_server = dns_server_fixture(scope="function")
bind = bind_fixture(scope="function")

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


def test_wrong_secret_holds_the_rollover_and_says_so(
    tmp_path: Path,
    postfix: PostfixInstance,
    dns_server: BindServer,
    old: Hierarchy,
    new: Hierarchy,
) -> None:
    key_file = tmp_path / "tsig.key"
    good = dns_server.key_path.read_text()
    key_file.write_text(good)
    key_file.chmod(0o600)
    host = Host(tmp_path, postfix, dns_server, key_file=key_file)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    host.sync_until("chain.deployed")
    assert dns_server.dig_tlsa(NAME) == {ta(old)}
    # The secret goes wrong (re-read without SIGHUP), then a renewal comes.
    key_file.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "QUFB" * 11 + '"', good))
    renew(host.letsencrypt, MX, new.issue([MX]))
    code, events = host.sync()
    assert code == 1
    (failed,) = [e for e in events if e["event"] == "dns.failed"]
    reason = str(failed["reason"])
    assert "BADSIG" in reason and "secret" in reason, reason
    assert "QUFB" not in str(events)
    assert "chain.deployed" not in names(events)
    assert host.served_issuer() == issuer_of(old)  # held: the new record is not out
    assert dns_server.dig_tlsa(NAME) == {ta(old)}


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
    assert dns_server.dig_tlsa(other) == set()


def test_key_fixed_in_place_is_used_without_sighup(
    tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
) -> None:
    """Finding 3: the daemon re-reads the TSIG key file when it changes."""
    key_file = tmp_path / "tsig.key"
    good = bind.key_path.read_text()
    key_file.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "QUFB" * 11 + '"', good))
    key_file.chmod(0o600)
    host = Host(tmp_path, postfix, bind, key_file=key_file)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    log = tmp_path / "daemon.log"
    daemon = start_danesync("run", "-c", str(host.config), "--log-format", "json", log=log)
    try:
        wait_for(lambda: "dns.failed" in names(json_events(log.read_text())), 30, log)
        with key_file.open("w") as file:  # in place: same inode, no SIGHUP
            file.write(good)
        wait_for(lambda: bind.dig_tlsa(NAME) == {ta(old)}, 30, log)
    finally:
        daemon.terminate()
        assert daemon.wait(15) == 0
    events = names(json_events(log.read_text()))
    assert "config.reloaded" not in events
    assert events.index("dns.failed") < events.index("tlsa.published")


@pytest.mark.parametrize("published_by", ["danesync", "hand"])
def test_record_deleted_by_hand_comes_back_between_full_passes(
    tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy, published_by: str
) -> None:
    """Finding 5: the light check (monitor.check_interval) sees the served
    chain's record gone and runs a full pass, long before reconcile_interval."""
    host = Host(tmp_path, postfix, bind)
    text = host.config.read_text().replace(
        "settle = 0.1", "settle = 0.1\nreconcile_interval = 3600"
    )
    host.config.write_text(text + '\n[monitor]\ncheck_interval = 1\nresolver = "off"\n')
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    if published_by == "hand":  # danesync never owns it, yet the served chain needs it
        bind.add_record(NAME, "TLSA", ta(old))
    host.sync_until("chain.deployed")
    log = tmp_path / "daemon.log"
    daemon = start_danesync("run", "-c", str(host.config), "--log-format", "json", log=log)
    try:
        wait_for(lambda: "daemon.ready" in names(json_events(log.read_text())), 30, log)
        bind.delete_record(NAME, "TLSA", ta(old))
        wait_for(lambda: bind.dig_tlsa(NAME) == {ta(old)}, 30, log)
    finally:
        daemon.terminate()
        assert daemon.wait(15) == 0
    assert "tlsa.published" in names(json_events(log.read_text()))
