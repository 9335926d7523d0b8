"""The simulation: danesync's real Service (planner, executor, state) in the
in-memory world, driven by Hypothesis, the invariant checked after every event.

The invariant (DESIGN.md): every chain Postfix may present matches every TLSA
RRset a cache holds, or a server serves, for that chain's TLSA names.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from danesync.config import Config, build_config
from danesync.matching import rrset_accepts
from danesync.ports import Offer
from danesync.service import Service
from danesync.state import ChainInfo
from danesync.tlsa import TlsaRecord
from tests.sim.world import (
    PRIMARY,
    Cache,
    Crash,
    MemoryStore,
    SimClock,
    SimDns,
    SimLineages,
    SimPostfix,
    _hex,
    pem_of,
)

MX = "_25._tcp.mx.example.test."
A = "_25._tcp.a.example.test."
EXTRA = "_25._tcp.extra.example.test."
NAMES = (MX, A, EXTRA)
LINEAGES = ("rsa", "ecdsa", "sni1", "sni2")
ALGORITHM = {"rsa": "rsa", "ecdsa": "ecdsa", "sni1": "ecdsa", "sni2": "rsa"}
CRASH_POINTS = ("before-files", "after-file", "after-postconf", "after-reload", "save")
DAY = dt.timedelta(days=1)
FAULTS = (
    "server down",
    "updates fail",
    "answer lost",
    "crash after update",
    "reload fails",
    "postmap fails",
    "probe fails",
    "disk full",
    "state disk full",
    *(f"crash at {point}" for point in CRASH_POINTS),
)


def build_sim_config(ttl: int, usages: tuple[str, ...], extra: bool, wait: int | None) -> Config:
    certificates: list[dict[str, Any]] = [
        {"lineage": "rsa", "hostnames": ["mx.example.test"], "tlsa": [MX], "usages": list(usages)},
        {
            "lineage": "ecdsa",
            "hostnames": ["mx.example.test"],
            "tlsa": [MX, EXTRA] if extra else [MX],
            "usages": list(usages),
        },
        {"lineage": "sni1", "hostnames": ["a.example.test"], "tlsa": [MX, A], "sni": True},
        {"lineage": "sni2", "hostnames": ["b.example.test"], "tlsa": [A], "sni": True},
    ]
    dns: dict[str, Any] = {
        "mode": "rfc2136",
        "server": PRIMARY,
        "zone": "example.test",
        "tsig_key_file": "/sim/tsig.key",
        "ttl": ttl,
        "verify_servers": ["10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53"],
    }
    if wait is not None:
        dns["rollover_wait"] = wait
    document = {
        "postfix": {"deploy_dir": "/sim/deploy", "probe": "127.0.0.1:25"},
        "state": {"dir": "/sim/state"},
        "dns": dns,
        "certificate": certificates,
    }
    return build_config(document, Path("/sim/danesync.toml"))


class DanesyncWorld(RuleBasedStateMachine):
    """One host: four lineages sharing TLSA names, a primary and two secondaries, three caches."""

    # Set by the regression tests to break the code on purpose.
    def __init__(self) -> None:
        super().__init__()
        self.clock = SimClock()
        self.dns = SimDns(self.clock, secondaries=2)
        self.snakeoil = _hex("snakeoil")
        self.postfix = SimPostfix(self.snakeoil)
        self.lineages = SimLineages()
        self.store = MemoryStore()
        self.caches = [Cache() for _ in range(3)]
        self.serial = 0
        self.keys: dict[str, int] = {}
        self.issuers: dict[str, int] = {}
        self.history: dict[str, list[Offer]] = {name: [] for name in LINEAGES}
        self.armed: tuple[str, int] | None = None
        self.ttl, self.usages, self.extra, self.wait = 60, ("2 1 1",), False, None
        self.config = build_sim_config(self.ttl, self.usages, self.extra, self.wait)
        # Cache entries fetched before a name joined a lineage's config are the
        # operator's change, not danesync's: they are not held against it.
        self.name_since: dict[tuple[str, str], dt.datetime] = {}
        for certificate in self.config.certificates:
            for name in certificate.tlsa:
                self.name_since[(certificate.lineage, name)] = self.clock.true
        for lineage in LINEAGES:
            self.keys[lineage] = 0
            self.issuers[lineage] = 0
            self._issue(lineage)
        self.service = self._start()

    # --- plumbing ---------------------------------------------------------------

    def _crash(self, point: str) -> None:
        # Every crash point is also a moment to check: the invariant must hold
        # in the middle of a pass too (new smtpd processes read new files at once).
        self.every_presented_chain_matches_every_possible_rrset()
        if self.armed is None or self.armed[0] != point:
            return
        if self.armed[1] > 1:
            self.armed = (point, self.armed[1] - 1)
            return
        self.armed = None
        raise Crash(point)

    def _start(self) -> Service:
        return self.build_service(crash=self._crash)

    def build_service(self, **hooks: Any) -> Service:
        """A Service on this world's ports (`hooks`: crash, progress)."""
        return Service(
            self.config,
            postfix=self.postfix,
            dns=self.dns,
            lineages=self.lineages,
            store=self.store,
            clock=self.clock,
            **hooks,
        )

    def _issue(self, lineage: str, not_after: dt.datetime | None = None) -> Offer:
        self.serial += 1
        key = f"{lineage} key {self.keys[lineage]}"
        issuer = f"{ALGORITHM[lineage]} ca {self.issuers[lineage]}"
        leaf_spki, issuer_spki = _hex(key), _hex(issuer)
        fingerprint = _hex(f"leaf {self.serial}")
        info = ChainInfo(
            fingerprint=fingerprint,
            serial=f"{self.serial:04X}",
            not_before=self.clock.true - DAY,
            not_after=not_after or self.clock.true + 90 * DAY,
            issuer=issuer,
            key_algorithm=ALGORITHM[lineage],
            version=self.serial,
            names=(),
            leaf_spki=leaf_spki,
            issuer_spki=issuer_spki,
            matches=frozenset({f"3 1 1 {leaf_spki}", f"2 1 1 {issuer_spki}"}),
        )
        offer = Offer(info, pem_of(fingerprint))
        self.lineages.issue(lineage, offer)
        self.history[lineage].append(offer)
        return offer

    def _run(self, action: Any) -> None:
        try:
            action()
        except Crash:
            self.service = self._start()  # systemd restarts it; the state is what was saved
        finally:
            self._heal()

    def _heal(self) -> None:
        """Faults last one pass: the environment recovers, so rollovers make progress
        (and reach the moments where a wrong wait would show)."""
        self.dns.down.clear()
        self.dns.fail_update = self.dns.lose_answer = self.dns.crash_after_update = False
        self.postfix.fail_reload = self.postfix.fail_postmap = False
        self.postfix.fail_probe.clear()
        self.postfix.fail_write.clear()
        self.store.fail = False
        self.armed = None

    # --- time and DNS ------------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 10, 30, 61, 120, 600]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from([-3600, -120, 120, 3600, 86400]))
    def clock_step(self, seconds: int) -> None:
        self.clock.step(seconds)

    @rule(which=st.sampled_from([1, 2, 0]))
    def transfer(self, which: int) -> None:
        """A secondary (or, 0, both) copies the primary: they lag until then."""
        for index in (1, 2) if which == 0 else (which,):
            self.dns.transfer(self.dns.servers[index])

    @rule(cache=st.integers(0, 2), server=st.integers(0, 2))
    def fetch(self, cache: int, server: int) -> None:
        """A cache looks every name up at one server (a sender about to deliver)."""
        for name in NAMES:
            rrset = self.dns.rrset(self.dns.servers[server], name)
            self.caches[cache].fetch(name, rrset, self.clock.true)

    @rule(name=st.sampled_from(NAMES), ttl=st.sampled_from([15, 300, 3600]))
    def operator_adds_a_record(self, name: str, ttl: int) -> None:
        """An unrelated record added by hand; its TTL becomes the RRset's."""
        if not self.dns.rrset(PRIMARY, name).records:
            return  # a first record by hand would break whatever is served: the operator's doing
        self.serial += 1
        self.dns.operator_add(name, TlsaRecord(name, 2, 1, 1, _hex(f"hand {self.serial}")), ttl)

    @rule(
        kind=st.sampled_from(FAULTS),
        on=st.booleans(),
        index=st.integers(0, 3),
        nth=st.integers(1, 4),
    )
    def fault(self, kind: str, on: bool, index: int, nth: int) -> None:
        """Something in the environment breaks (or recovers)."""
        lineage = LINEAGES[index]
        if kind == "server down":
            server = self.dns.servers[index % 3]
            (self.dns.down.add if on else self.dns.down.discard)(server)
        elif kind == "updates fail":
            self.dns.fail_update = on
        elif kind == "answer lost":
            self.dns.lose_answer = on
        elif kind == "crash after update":
            self.dns.crash_after_update = on
        elif kind == "reload fails":
            self.postfix.fail_reload = on
        elif kind == "postmap fails":
            self.postfix.fail_postmap = on
        elif kind == "probe fails":
            (self.postfix.fail_probe.add if on else self.postfix.fail_probe.discard)(lineage)
        elif kind == "disk full":
            (self.postfix.fail_write.add if on else self.postfix.fail_write.discard)(lineage)
        elif kind == "state disk full":
            self.store.fail = on
        else:
            self.armed = (kind.removeprefix("crash at "), nth) if on else None

    # --- certbot ------------------------------------------------------------------------

    @rule(
        lineage=st.sampled_from(LINEAGES), kind=st.sampled_from(["key", "issuer", "same", "older"])
    )
    def renew(self, lineage: str, kind: str) -> None:
        if kind == "older":
            older = [o for o in self.history[lineage][:-1]]
            if older:
                self.lineages.current[lineage] = older[-1]
            return
        if kind == "key":
            self.keys[lineage] += 1
        elif kind == "issuer":
            self.issuers[lineage] = (self.issuers[lineage] + 1) % 3  # YE1, YE2, YE3
        self._issue(lineage)

    # --- Postfix faults ---------------------------------------------------------------------

    @rule(fail=st.booleans())
    def reload_fails(self, fail: bool) -> None:
        self.postfix.fail_reload = fail

    @rule(fail=st.booleans())
    def postmap_fails(self, fail: bool) -> None:
        self.postfix.fail_postmap = fail

    @rule(lineage=st.sampled_from(LINEAGES), fail=st.booleans())
    def probe_fails(self, lineage: str, fail: bool) -> None:
        (self.postfix.fail_probe.add if fail else self.postfix.fail_probe.discard)(lineage)

    @rule(lineage=st.sampled_from(LINEAGES), fail=st.booleans())
    def disk_full(self, lineage: str, fail: bool) -> None:
        (self.postfix.fail_write.add if fail else self.postfix.fail_write.discard)(lineage)

    # --- danesync ------------------------------------------------------------------------------

    @rule()
    def full_pass(self) -> None:
        self._run(lambda: self.service.reconcile(monitor=False))

    @rule(lineage=st.sampled_from(LINEAGES))
    def partial_pass(self, lineage: str) -> None:
        self._run(lambda: self.service.reconcile([lineage], monitor=False))

    @rule()
    def light_check(self) -> None:
        self._run(self.service.light_check)

    @rule()
    def restart(self) -> None:
        self.service = self._start()

    @rule(
        ttl=st.sampled_from([15, 60, 600]),
        usages=st.sampled_from([("2 1 1",), ("3 1 1",), ("2 1 1", "3 1 1")]),
        extra=st.booleans(),
        wait=st.sampled_from([None, 0, 30]),
    )
    def change_config(
        self, ttl: int, usages: tuple[str, ...], extra: bool, wait: int | None
    ) -> None:
        """SIGHUP with a new config mid-rollover: ttl, usages, tlsa names, rollover_wait.

        A name that joins a lineage while DNS serves there an RRset its chain
        does not match breaks DANE by the operator's hand at that instant:
        such a change is not made (danesync could not have prevented it).
        """
        before = (self.config, dict(self.name_since))
        self.config = build_sim_config(ttl, usages, extra, wait)
        for certificate in self.config.certificates:
            for name in certificate.tlsa:
                self.name_since.setdefault((certificate.lineage, name), self.clock.true)
        for key in list(self.name_since):
            certificate = self.config.certificate(key[0])
            if certificate is None or key[1] not in certificate.tlsa:
                del self.name_since[key]
        try:
            self.every_presented_chain_matches_every_possible_rrset()
        except AssertionError:
            self.config, self.name_since = before[0], before[1]
            return
        self.ttl, self.usages, self.extra, self.wait = ttl, usages, extra, wait
        self.service = self._start()

    # --- the invariant -------------------------------------------------------------------------

    def _matches(self, fingerprint: str) -> frozenset[str]:
        if fingerprint == self.snakeoil:
            return frozenset()
        return self.lineages.known[fingerprint].info.matches

    def presented(self, lineage: str) -> set[str]:
        certificate = self.config.certificate(lineage)
        assert certificate is not None
        shown = self.postfix.presented(lineage, certificate.sni, certificate.hostnames)
        if shown:
            return shown
        # Not served under its own configuration: clients get the default chains.
        defaults: set[str] = set()
        for name in self.postfix.default_lineages():
            defaults |= self.postfix.presented(name, False, ())
        return defaults or {self.snakeoil}

    @invariant()
    def every_presented_chain_matches_every_possible_rrset(self) -> None:
        now = self.clock.true
        for certificate in self.config.certificates:
            chains = self.presented(certificate.lineage)
            for name in certificate.tlsa:
                since = self.name_since[(certificate.lineage, name)]
                rrsets = [(self.dns.rrset(s, name), f"served by {s}") for s in self.dns.servers]
                for index, cache in enumerate(self.caches):
                    held = cache.held(name, now)
                    if held is not None and held[1] >= since:
                        rrsets.append((held[0], f"held by cache {index} since {held[1]}"))
                for fingerprint in chains:
                    matches = self._matches(fingerprint)
                    for rrset, where in rrsets:
                        assert rrset_accepts(rrset.records, matches), (
                            f"{certificate.lineage} presents {fingerprint[:8]} which does not "
                            f"match {name} {sorted(r.rdata[:14] for r in rrset.records)} "
                            f"ttl {rrset.ttl} {where} at {now}"
                        )
