"""Issuer families against a real BIND and a real Postfix.

The test's own CA makes a family of three ECDSA-issuing intermediates (E3 a
backup) and two RSA-issuing ones. With `issuers` set, danesync publishes the
`2 1 1` of every member of the key type; a renewal from another member then
deploys at once, with no hold, and at no sampled moment does Postfix serve a
chain the published RRset does not match. An intermediate outside the family
takes the normal hold path; the per-name cap and the retirement of records no
certificate needs any more are checked with `dig`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from danesync.tlsa import spki_sha256
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy, make_key
from tests.harness.danesync import json_events, run_danesync, start_danesync, write_config
from tests.harness.families import CaFamily, CaMember, family_toml, make_test_family
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
bind = bind_fixture(scope="function")

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}"
TTL, WAIT = 2, 3
Event = dict[str, Any]


class Host:
    """A danesync config for one BIND, one Postfix and the test's families file."""

    def __init__(
        self,
        root: Path,
        postfix: PostfixInstance,
        bind: BindServer,
        families: tuple[CaFamily, ...],
        certificates: list[dict[str, Any]],
    ) -> None:
        self.root = root
        self.letsencrypt = root / "letsencrypt"
        self.postfix = postfix
        self.families_file = root / "families.toml"
        self.families_file.write_text(family_toml(*families))
        self.sections: dict[str, dict[str, Any]] = {
            "certbot": {"config_dir": self.letsencrypt},
            "postfix": {
                "config_dir": postfix.config_dir,
                "deploy_dir": root / "deploy",
                "probe": f"127.0.0.1:{postfix.port}",
            },
            "dns": {
                "mode": "rfc2136",
                "server": bind.address,
                "zone": "example.test",
                "tsig_key_file": bind.key_path,
                "ttl": TTL,
                "rollover_wait": WAIT,
            },
            "state": {"dir": root / "state"},
            "daemon": {"settle": 0.1},
            "families": {"file": self.families_file},
        }
        self.config = root / "danesync.toml"
        self.configure(certificates)

    def configure(self, certificates: list[dict[str, Any]]) -> None:
        write_config(self.config, self.sections, certificates)

    def run(self, *arguments: str) -> tuple[int, str]:
        result = run_danesync(*arguments, "-c", str(self.config))
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, result.stdout

    def sync(self) -> list[Event]:
        code, stdout = self.run("sync")
        assert code == 0, stdout
        return json_events(stdout)

    def sync_until(self, event: str, limit: float = 20) -> list[Event]:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            events = self.sync()
            if any(e["event"] == event for e in events):
                return events
            time.sleep(0.5)
        raise AssertionError(f"no {event} within {limit}s")

    def sync_until_published(self, bind: BindServer, count: int, limit: float = 20) -> set[str]:
        """Passes until BIND serves `count` records at NAME (after the first deploy,
        the family's records follow in the same or the next pass)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            published = bind.dig_tlsa(NAME)
            if len(published) >= count:
                return published
            self.sync()
            time.sleep(0.2)
        raise AssertionError(f"not {count} records within {limit}s: {bind.dig_tlsa(NAME)}")

    def status(self) -> dict[str, Any]:
        code, stdout = self.run("status", "--json")
        assert code in (0, 1, 2), stdout  # monitoring-plugin verdict: no daemon runs here
        return json.loads(stdout)  # type: ignore[no-any-return]

    def served_issuer_or_none(self) -> str | None:
        try:
            return self.postfix.served_certificate().issuer.rfc4514_string()
        except AssertionError:
            return None


def issuer_of(member: CaMember | Hierarchy) -> str:
    hierarchy = member.hierarchy if isinstance(member, CaMember) else member
    return hierarchy.intermediate.subject.rfc4514_string()


def ta(member: CaMember | Hierarchy) -> str:
    hierarchy = member.hierarchy if isinstance(member, CaMember) else member
    return f"2 1 1 {spki_sha256(hierarchy.intermediate)}"


def holds(events: list[Event], serial: str) -> list[Event]:
    """Events that say a chain was held or waited for DNS."""
    return [
        e
        for e in events
        if e["event"] in ("chain.held", "rollover.waiting") and e.get("serial") == serial
    ]


def serial_of(leaf_serial: int) -> str:
    text = f"{leaf_serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


@pytest.fixture
def family() -> CaFamily:
    return make_test_family()


class TestRenewalsBetweenMembers:
    """`danesync run` while a sampler compares what Postfix serves with what BIND serves."""

    def test_switching_members_never_holds_and_never_breaks_dane(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, family: CaFamily
    ) -> None:
        host = Host(tmp_path, postfix, bind, (family,), [{"lineage": MX, "issuers": "testca"}])
        e1, e2, e3 = family.of_type("ecdsa")
        make_lineage(host.letsencrypt, MX, e1.issue([MX]))
        records = {ta(m) for m in family.of_type("ecdsa")}
        by_issuer = {issuer_of(m): ta(m) for m in family.members}
        samples: list[tuple[set[str], str | None, set[str]]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                before = bind.dig_tlsa(NAME)
                issuer = host.served_issuer_or_none()
                samples.append((before, issuer, bind.dig_tlsa(NAME)))
                time.sleep(0.1)

        log = tmp_path / "daemon.log"
        daemon = start_danesync("run", "-c", str(host.config), "--log-format", "json", log=log)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        renewals: list[str] = []
        try:
            wait_for(lambda: host.served_issuer_or_none() == issuer_of(e1), 30, log)
            # E1, E2 and the backup E3, no R*: published after the first deploy,
            # then aged like any record before the renewals start.
            wait_for(lambda: bind.dig_tlsa(NAME) == records, 15, log)
            time.sleep(WAIT)
            for member in (e2, e3, e1, e2):
                leaf = member.issue([MX])
                renewals.append(serial_of(leaf.cert.serial_number))
                renew(host.letsencrypt, MX, leaf)
                wait_for(lambda m=member: host.served_issuer_or_none() == issuer_of(m), 30, log)
                wait_for(lambda m=member: any(s[1] == issuer_of(m) for s in samples), 15, log)
        finally:
            stop.set()
            sampler.join()
            daemon.terminate()
            assert daemon.wait(15) == 0
        events = json_events(log.read_text())
        for serial in renewals:
            assert any(e["event"] == "chain.deployed" and e.get("serial") == serial for e in events)
            assert holds(events, serial) == [], holds(events, serial)
        assert not [e for e in events if e["event"] == "tlsa.retired"]
        assert bind.dig_tlsa(NAME) == records

        served = [s for s in samples if s[1] in by_issuer]
        assert len(served) > 5
        # An empty RRset asks nothing of the served chain (the first deploy precedes
        # its records); a non-empty one must hold the served chain's record.
        violations = [
            (before, issuer, after)
            for before, issuer, after in served
            if (before and by_issuer[issuer] not in before)
            or (after and by_issuer[issuer] not in after)
        ]
        assert violations == []


class TestWithSync:
    """One pass at a time."""

    def test_rsa_members_and_an_unknown_intermediate(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, family: CaFamily
    ) -> None:
        """RSA: R1 -> R2 deploys in the pass that sees it; a stranger is held."""
        host = Host(tmp_path, postfix, bind, (family,), [{"lineage": MX, "issuers": "testca"}])
        r1, r2 = family.of_type("rsa")
        make_lineage(host.letsencrypt, MX, r1.issue([MX], slot=1))
        host.sync_until("chain.deployed")
        assert host.sync_until_published(bind, 2) == {ta(r1), ta(r2)}
        time.sleep(WAIT)  # R2's record ages like any other

        renew(host.letsencrypt, MX, r2.issue([MX], slot=2))
        events = host.sync()
        assert [e["event"] for e in events if e["event"].startswith("chain.")] == ["chain.deployed"]
        assert host.served_issuer_or_none() == issuer_of(r2)

        stranger = Hierarchy("Stranger")
        renew(host.letsencrypt, MX, stranger.issue([MX], key=make_key("rsa", 3)))
        _, check = host.run("check")
        assert "the family data is out of date" in check
        events = host.sync()
        names = [e["event"] for e in events]
        assert "chain.held" in names and "chain.deployed" not in names
        assert bind.dig_tlsa(NAME) == {ta(r1), ta(r2), ta(stranger)}
        assert host.served_issuer_or_none() == issuer_of(r2)

        events = host.sync_until("chain.deployed")
        assert host.served_issuer_or_none() == issuer_of(stranger)
        # R1 and R2 stay: the family keeps them although no chain uses them now.
        assert bind.dig_tlsa(NAME) == {ta(r1), ta(r2), ta(stranger)}
        ok, output = postfix.dane_verify(MX, ta(stranger))
        assert ok, output

    def test_cap_leaves_out_backups(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer
    ) -> None:
        """13 members + 3 1 1 exceed 12 records: two backups are left out, with a warning."""
        actives = tuple(f"A{i:02}" for i in range(8))
        backups = tuple(f"B{i:02}" for i in range(5))
        big = make_test_family("big", ecdsa=actives + backups, rsa=(), backups=backups)
        certificate = {"lineage": MX, "issuers": "big", "usages": ["2 1 1", "3 1 1"]}
        host = Host(tmp_path, postfix, bind, (big,), [certificate])
        make_lineage(host.letsencrypt, MX, big.member("A00").issue([MX]))
        code, check = host.run("check")
        assert code == 0
        assert "at most 12 TLSA records per name; left out B03 (ecdsa, backup)" in check
        assert "every renewal" in check and "--reuse-key" in check  # the 3 1 1 advice
        host.sync_until("chain.deployed")
        published = host.sync_until_published(bind, 12)
        assert len(published) == 12
        assert {ta(big.member(n)) for n in actives + backups[:3]} <= published
        assert not {ta(big.member(n)) for n in backups[3:]} & published
        (warning,) = host.status()["family_warnings"]
        assert "left out B03 (ecdsa, backup), B04 (ecdsa, backup)" in warning

    def test_unused_family_records_are_retired(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, family: CaFamily
    ) -> None:
        host = Host(tmp_path, postfix, bind, (family,), [{"lineage": MX, "issuers": "testca"}])
        e1, e2, e3 = family.of_type("ecdsa")
        bind.add_record(NAME, "TLSA", "3 1 1 " + "ab" * 32)  # by hand: never touched
        make_lineage(host.letsencrypt, MX, e2.issue([MX]))
        host.sync_until("chain.deployed")
        assert host.sync_until_published(bind, 4) == {ta(e1), ta(e2), ta(e3), "3 1 1 " + "ab" * 32}
        names = host.status()["names"][f"{NAME}."]
        assert names["current"] == [ta(e2)]
        assert sorted(f["tlsa"] for f in names["family"]) == sorted([ta(e1), ta(e3)])

        host.configure([{"lineage": MX}])  # the operator drops `issuers`
        names = host.status()["names"][f"{NAME}."]
        assert sorted(names["retiring"]) == sorted([ta(e1), ta(e3)])
        _, status_text = host.run("status")
        assert "retiring" in status_text
        events = host.sync()
        retired = sorted(
            e["tlsa"].split(" TLSA ")[1] for e in events if e["event"] == "tlsa.retired"
        )
        assert retired == sorted([ta(e1), ta(e3)])
        assert bind.dig_tlsa(NAME) == {ta(e2), "3 1 1 " + "ab" * 32}
        ok, output = postfix.dane_verify(MX, ta(e2))
        assert ok, output


def wait_for(condition: Any, limit: float, log: Path) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out; daemon log:\n{log.read_text()[-4000:]}")
