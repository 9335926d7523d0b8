"""The invariant as a real sending Postfix judges it.

A second, private Postfix (tests/harness/sending_postfix.py) relays mail for
example.test as a DANE sender (``smtp_tls_security_level = dane``,
``smtp_dns_support_level = dnssec``), its smtp client resolving through the
validating Unbound of tests/harness/unbound.py: the MX, its address and the
TLSA RRset signed by BIND, the receiving Postfix on 127.53.10.2:25. A mail
the sender defers for a certificate or TLSA reason is the operator's mail
stuck in a queue: through a whole rollover by `danesync run`, every message
must be delivered over a DANE-verified session. The hand-made key switch
before its TLSA record shows the same sender does defer when DANE breaks.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from danesync.tlsa import spki_sha256
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.invariant_host import MX, NAME, Host, names
from tests.harness.lineage import make_lineage, renew
from tests.harness.sending_postfix import (
    RECEIVER_PARAMETERS,
    MailStream,
    SendingPostfix,
    report,
)
from tests.harness.unbound import (
    MX_ADDRESS,
    RESOLVER_ADDRESS,
    DanePostfix,
    UnboundResolver,
    address_lock,
    require_dane_tools,
    unbound_fixture,
)

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

bind = bind_fixture(scope="function", dnssec=True, mx_address=MX_ADDRESS, mx_ttl=300)
unbound = unbound_fixture()

TTL = 4  # the TLSA RRset's TTL: how long the cache and the smtp client hold a version


@pytest.fixture(autouse=True)
def _fixed_addresses() -> Iterator[None]:
    # The resolver and the MX use fixed addresses: one test run at a time.
    with address_lock():
        yield


@pytest.fixture
def postfix() -> Iterator[DanePostfix]:
    require_dane_tools()
    with DanePostfix(parameters=RECEIVER_PARAMETERS) as instance:
        yield instance


@pytest.fixture
def sender(unbound: UnboundResolver) -> Iterator[SendingPostfix]:
    with SendingPostfix(unbound.address) as instance:
        yield instance


def ta(hierarchy: Hierarchy) -> str:
    return f"2 1 1 {spki_sha256(hierarchy.intermediate)}"


def hierarchy(label: str) -> Hierarchy:
    return Hierarchy(f"{label} {uuid.uuid4().hex[:8]}")


def serve_by_hand(postfix: DanePostfix, leaf: Leaf, name: str) -> None:
    """Point the receiving Postfix at `leaf` by hand (not through danesync)."""
    path = postfix.root / name
    path.write_bytes(leaf.key_pem + leaf.fullchain_pem)
    path.chmod(0o600)
    postfix.set_parameters({"smtpd_tls_chain_files": str(path)})
    past = time.time() - 10  # complete main.cf: no "cool down" wait before the reload
    os.utime(postfix.config_dir / "main.cf", (past, past))
    mark = len(postfix.maillog)
    postfix.reload()
    assert postfix.wait_for_log("reload", mark), postfix.maillog[-2000:]


def issued_by(h: Hierarchy) -> str:
    """The issuer CN the sender logs for a leaf of `h`."""
    return f"{h.name} Intermediate"


def test_every_message_is_delivered_through_a_rollover(
    tmp_path: Path,
    postfix: DanePostfix,
    bind: BindServer,
    unbound: UnboundResolver,
    sender: SendingPostfix,
) -> None:
    """`danesync run` rolls to a new issuer while mail flows: none is deferred.

    The renewal brings a new intermediate (a DANE-TA rollover): danesync
    publishes its 2 1 1 record, waits until no cache can hold the RRset
    without it, deploys, then retires the old record. A message every 0.5 s
    keeps the cache and the sender's own TLSA cache full of whatever DNS
    served last; each is a new lookup and a new handshake.
    """
    assert RESOLVER_ADDRESS in sender.resolver_seen()
    old, new = hierarchy("Old"), hierarchy("New")
    host = Host(tmp_path, postfix, bind, ttl=TTL, rollover_wait=2)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    daemon = host.start()
    try:
        daemon.wait_for("chain.deployed")
        daemon.wait_until(lambda: bind.dig_tlsa(NAME) == {ta(old)}, "the old record published")
        with MailStream(sender, interval=0.5) as stream:
            wait_until_delivered(sender, stream, issued_by(old))
            renew(host.letsencrypt, MX, new.issue([MX]))
            daemon.wait_for("chain.deployed", count=2, timeout=90)
            daemon.wait_for("tlsa.retired", timeout=60)
            # The RRset without the old record is now served; mail on until the
            # versions before it are gone from every cache too.
            daemon.wait_until(lambda: bind.dig_tlsa(NAME) == {ta(new)}, "the old record gone")
            time.sleep(TTL + 1)
            wait_until_delivered(sender, stream, issued_by(new))
        deliveries = sender.wait_for_attempts(stream.queue_ids)
    finally:
        host.close()
    assert stream.errors == [], stream.errors
    assert all(d.verified for d in deliveries.values()), report(deliveries)
    issuers = Counter(d.issuer for d in deliveries.values())
    # Mail went to both chains, several messages each (the rollover was seen).
    assert set(issuers) == {issued_by(old), issued_by(new)}, issuers
    assert min(issuers.values()) >= 3, issuers
    # danesync's order: the new record, then (after the wait) the new chain, then
    # the old record retired.
    events = names(daemon.events())
    last = {name: len(events) - 1 - events[::-1].index(name) for name in set(events)}
    assert last["tlsa.published"] < last["chain.deployed"] < last["tlsa.retired"], events


def wait_until_delivered(
    sender: SendingPostfix, stream: MailStream, issuer: str, timeout: float = 60
) -> None:
    """Wait until a message of `stream` went over a verified session to a leaf of `issuer`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sender.deliveries()
        if any(
            found[q].verified and found[q].issuer == issuer for q in stream.queue_ids if q in found
        ):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"no verified delivery to {issuer} in {timeout} s:\n{sender.maillog[-3000:]}"
    )


def test_a_key_switched_before_its_record_is_deferred(
    postfix: DanePostfix, bind: BindServer, unbound: UnboundResolver, sender: SendingPostfix
) -> None:
    """The sender judges: a chain no cached TLSA record matches gets no mail.

    Postfix serves a new key by hand before any TLSA record names it (what
    danesync's wait prevents): the real sender defers with a DANE reason.
    Once the record is published and the old RRset has left the caches, the
    retry is delivered, so the deferral was DANE's and nothing else's.
    """
    assert RESOLVER_ADDRESS in sender.resolver_seen()
    old, new = hierarchy("Old"), hierarchy("New")
    serve_by_hand(postfix, old.issue([MX]), "old.pem")
    bind.add_record(NAME, "TLSA", ta(old), ttl=TTL)
    first = sender.send()
    delivered = sender.wait_for_attempts([first])[first]
    assert delivered.verified and delivered.issuer == issued_by(old), delivered.describe()

    serve_by_hand(postfix, new.issue([MX]), "new.pem")  # before any record names it
    second = sender.send()
    deferred = sender.wait_for_attempts([second])[second]
    assert deferred.status == "deferred", deferred.describe()
    assert deferred.dsn == "4.7.5" and "certificate not verified" in deferred.reason, (
        deferred.describe()
    )
    assert deferred.issuer == issued_by(new), deferred.describe()
    assert any("no matching DANE TLSA records" in note for note in deferred.notes), (
        deferred.describe()
    )

    bind.add_record(NAME, "TLSA", ta(new), ttl=TTL)
    end = time.monotonic() + 60
    while not any(d.verified for d in sender.attempts()[second]):
        assert time.monotonic() < end, sender.maillog[-3000:]
        sender.flush()
        time.sleep(1)
    last = sender.attempts()[second][-1]
    assert last.verified and last.issuer == issued_by(new), last.describe()
