"""The invariant as a DANE sender sees it: through a validating cache.

BIND signs example.test with `dnssec-policy` (danesync's updates are signed as
they arrive), Unbound validates with the zone's DNSKEY and honours TTLs as
served, and Postfix's own DANE client (``posttls-finger -c -l dane
example.test``) connects to the receiving Postfix on 127.53.10.2:25 again and
again for the whole rollover. A handshake that fails while the cache holds
TLSA records is a deferred mail: zero failures is the only pass
(issue 10, findings 1 and 2).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from danesync.tlsa import spki_sha256
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy
from tests.harness.invariant_host import MX, NAME, Host, names
from tests.harness.lineage import make_lineage, renew
from tests.harness.unbound import (
    MX_ADDRESS,
    DanePostfix,
    DaneSampler,
    UnboundResolver,
    address_lock,
    require_dane_tools,
    unbound_fixture,
)
from tests.harness.worst_sender import WorstCacheSender

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

# The MX and its address live long, as on real hosts; the TLSA RRset's TTL is the test's.
bind = bind_fixture(scope="function", dnssec=True, mx_address=MX_ADDRESS, mx_ttl=300)
unbound = unbound_fixture()

HAND_TTL = 15  # the TTL the operator's RRset was served with


@pytest.fixture(autouse=True)
def _fixed_addresses() -> Iterator[None]:
    # The resolver and the MX use fixed addresses: one test run at a time.
    with address_lock():
        yield


@pytest.fixture
def postfix() -> Iterator[DanePostfix]:
    require_dane_tools()
    with DanePostfix() as instance:
        yield instance


def ta(hierarchy: Hierarchy) -> str:
    return f"2 1 1 {spki_sha256(hierarchy.intermediate)}"


def hierarchy(label: str) -> Hierarchy:
    return Hierarchy(f"{label} {uuid.uuid4().hex[:8]}")


def issued_by(h: Hierarchy) -> str:
    """How posttls-finger names the leaf's issuer in its output."""
    return f"issuer_CN={h.name} Intermediate"


@pytest.mark.parametrize("origin", ["by-hand", "ttl-lowered"])
def test_the_ttl_the_cache_holds_is_waited_for(
    tmp_path: Path,
    postfix: DanePostfix,
    bind: BindServer,
    unbound: UnboundResolver,
    origin: str,
) -> None:
    """Finding 1: the RRset was served with TTL 15 and `dns.ttl` is 2.

    The TTL-15 RRset was published by the operator (by-hand), or by danesync
    itself before `dns.ttl` was lowered to 2 (ttl-lowered). danesync adds the
    new record (which rewrites the RRset's TTL to 2) and must then wait for the
    TTL-15 version to leave every cache before it deploys the new chain,
    however short its own `ttl` and `rollover_wait`.
    """
    old, new = hierarchy("Old"), hierarchy("New")
    make_lineage(tmp_path / "letsencrypt", MX, old.issue([MX]))
    if origin == "by-hand":
        host = Host(tmp_path, postfix, bind, ttl=2, rollover_wait=2)
        bind.add_record(NAME, "TLSA", ta(old), ttl=HAND_TTL)  # by the operator, long TTL
    else:
        host = Host(tmp_path, postfix, bind, ttl=HAND_TTL, rollover_wait=2)
        first = host.start(name="daemon-ttl15")
        first.wait_for("chain.deployed")
        first.wait_until(lambda: bind.dig_tlsa(NAME) == {ta(old)}, "the TTL-15 record")
        assert first.stop() == 0
        host.dns["ttl"] = 2  # the operator lowers the TTL
        host.write()
    daemon = host.start()
    try:
        if origin == "by-hand":
            daemon.wait_for("chain.deployed")
        with DaneSampler(unbound) as sampler, WorstCacheSender(bind, postfix, NAME, gap=3) as slow:
            sampler.wait_for(
                lambda c: c.verified and issued_by(old) in c.output, "verifying the old chain"
            )
            held, _ = unbound.tlsa(NAME + ".")
            assert held == {ta(old)}, held
            served = bind.dig(NAME, "TLSA", "+noall", "+answer").split()
            assert served[1] == str(HAND_TTL), served  # the TTL caches hold it for
            renew(host.letsencrypt, MX, new.issue([MX]))
            sampler.wait_for(
                lambda c: c.verified and issued_by(new) in c.output,
                "verifying the new chain",
                timeout=90,
            )
            # Keep the client going a little after the switch: a cache that still
            # held the old version would fail now.
            time.sleep(3)
        assert sampler.failures == [], sampler.report()
        # Nor a sender behind a cache that holds every version for its whole
        # TTL, whose handshake comes 3 s after its lookup (a banner held back).
        assert slow.failures == [], slow.report()
        assert len(sampler.checks) > 10
        events = names(daemon.events())
        assert "tlsa.published" in events and "chain.deployed" in events, events
        # The add rewrote the TTL of the RRset (15 -> 2): that is logged.
        assert any(
            "ttl" in str(e.get("event")) or "TTL" in str(e.get("reason", ""))
            for e in daemon.events()
        ), events
        last_deploy = len(events) - 1 - events[::-1].index("chain.deployed")
        assert events.index("tlsa.published") < last_deploy, events
    finally:
        host.close()


def test_first_start_deploys_before_it_publishes(
    tmp_path: Path,
    postfix: DanePostfix,
    bind: BindServer,
    unbound: UnboundResolver,
) -> None:
    """Finding 2: Postfix serves a bootstrap chain that matches nothing, no TLSA exists.

    With no TLSA record senders do no DANE, so deploying the first chain is
    safe at once; publishing its record first would make every DANE sender
    fail until the hold ends. danesync must deploy, then publish.
    """
    snakeoil = hierarchy("Snakeoil").issue([MX])
    bootstrap = postfix.root / "bootstrap.pem"
    bootstrap.write_bytes(snakeoil.key_pem + snakeoil.fullchain_pem)
    bootstrap.chmod(0o600)
    postfix.set_parameters({"smtpd_tls_chain_files": str(bootstrap)})
    time.sleep(2.2)  # main.cf "cool down" before postfix reload
    postfix.reload()
    first = hierarchy("First")
    host = Host(tmp_path, postfix, bind, ttl=2, rollover_wait=8)
    make_lineage(host.letsencrypt, MX, first.issue([MX]))
    with DaneSampler(unbound) as sampler:
        sampler.wait_for(lambda c: "TLS connection established" in c.output, "a handshake")
        assert sampler.checks[-1].tlsa == frozenset()
        daemon = host.start()
        try:
            sampler.wait_for(
                lambda c: c.verified and issued_by(first) in c.output,
                "verifying the first chain",
                timeout=90,
            )
            time.sleep(2)
        finally:
            host.close()
    assert sampler.failures == [], sampler.report()
    events = names(daemon.events())
    assert "chain.deployed" in events and "tlsa.published" in events, events
    assert events.index("chain.deployed") < events.index("tlsa.published"), events
