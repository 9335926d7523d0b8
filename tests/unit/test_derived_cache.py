"""What is remembered per lineage (needed records, the SNI table) follows every
change of what it is built from: a config reloaded by SIGHUP (`usages`,
`tlsa`, `hostnames` of one certificate) or a new chain changes the result at
once, as if nothing had been remembered. A stale result would publish records
for the wrong chain or serve a name from the wrong file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from danesync.chain import LineageFiles, validate_chain
from danesync.config import Config, build_config
from danesync.deploy import build_sni_entries, build_wanted_parameters
from danesync.needs import (
    build_chain_records,
    build_config_index,
    build_holding_records,
    build_holdings,
    build_needed_records,
)
from danesync.plan import Observations, Publish, plan_pass
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, absolute_name
from tests.harness.certs import NOW, Hierarchy, Leaf

A, B = "a.example.test", "b.example.test"
NAME_A, NAME_B = absolute_name(f"_25._tcp.{A}"), absolute_name(f"_25._tcp.{B}")
DEPLOY = Path("/etc/postfix/danesync")


class _Paths:
    """The PostfixPort methods that build_sni_entries and build_wanted_parameters ask."""

    def chain_path(self, lineage: str) -> str:
        return str(DEPLOY / f"{lineage}.pem")

    def sni_maps_value(self) -> str:
        return f"hash:{DEPLOY}/sni"


PATHS = _Paths()  # one adapter for the daemon's life, as in the daemon


def config_of(a: dict[str, Any], b: dict[str, Any] | None = None, mode: str = "off") -> Config:
    dns: dict[str, Any] = {"mode": mode}
    if mode == "rfc2136":
        dns |= {"server": "127.0.0.1:5353", "zone": "example.test"}
        dns["tsig_key_file"] = "/etc/danesync/tsig.key"
    certificates = [{"lineage": A, **a}, {"lineage": B, **(b or {})}]
    return build_config({"dns": dns, "certificate": certificates}, Path("/test.toml"))


def reference(config: Config, state: State) -> dict[str, frozenset[TlsaRecord]]:
    """The needed records computed afresh, without anything remembered."""
    needed: dict[str, set[TlsaRecord]] = {}
    for holding in build_holdings(config, state, {}):
        for chain in holding.chains:
            assert holding.certificate is not None
            for record in build_chain_records(holding.certificate, chain):
                needed.setdefault(record.name, set()).add(record)
    return {name: frozenset(records) for name, records in needed.items()}


def make_chain(leaf: Leaf, lineage: str) -> ChainInfo:
    files = LineageFiles(
        lineage, 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem
    )
    name = absolute_name(f"_25._tcp.{lineage}")
    return ChainInfo.from_chain(validate_chain(files, (lineage,), (name,), (), NOW))


@pytest.fixture(scope="module")
def chains() -> dict[str, ChainInfo]:
    ca = Hierarchy("Derived cache")
    return {
        A: make_chain(ca.issue([A, f"www.{A}"]), lineage=A),
        B: make_chain(ca.issue([B]), lineage=B),
        "renewed": make_chain(ca.issue([A, f"www.{A}"]), lineage=A),
        "renamed": make_chain(ca.issue([A, f"mail.{A}"]), lineage=A),
    }


def deployed(chains: dict[str, ChainInfo], a: str = A) -> State:
    state = State()
    state.lineage(A).deployed = chains[a]
    state.lineage(B).deployed = chains[B]
    return state


def needed_of(config: Config, state: State) -> dict[str, frozenset[TlsaRecord]]:
    return build_needed_records(build_holdings(config, state, {}))


class TestNeededRecords:
    def test_a_usages_change_of_one_certificate(self, chains: dict[str, ChainInfo]) -> None:
        state = deployed(chains)
        before = config_of({})
        assert needed_of(before, state) == reference(before, state)
        after = config_of({"usages": ["3 1 1"]})  # SIGHUP: DANE-EE instead of DANE-TA
        needed = needed_of(after, state)
        assert needed == reference(after, state)
        assert {(r.usage, r.data) for r in needed[NAME_A]} == {(3, chains[A].leaf_spki)}
        assert {r.usage for r in needed[NAME_B]} == {2}

    def test_a_tlsa_names_change_of_one_certificate(self, chains: dict[str, ChainInfo]) -> None:
        state = deployed(chains)
        needed_of(config_of({}), state)
        other = absolute_name(f"_25._tcp.www.{A}")
        after = config_of({"tlsa": [other]})
        needed = needed_of(after, state)
        assert needed == reference(after, state)
        assert NAME_A not in needed and other in needed

    def test_a_renewed_chain(self, chains: dict[str, ChainInfo]) -> None:
        config = config_of({"usages": ["3 1 1"]})
        needed_of(config, deployed(chains))
        state = deployed(chains, a="renewed")
        needed = needed_of(config, state)
        assert needed == reference(config, state)
        assert {r.data for r in needed[NAME_A]} == {chains["renewed"].leaf_spki}

    def test_the_planner_publishes_for_the_reloaded_config(
        self, chains: dict[str, ChainInfo]
    ) -> None:
        """Through plan_pass: after the reload the new usage's record is published."""
        state = deployed(chains)
        observations = Observations({}, frozenset({NAME_A, NAME_B}))
        plan_pass(config_of({}, mode="rfc2136"), state, observations, NOW)
        plan = plan_pass(config_of({"usages": ["3 1 1"]}, mode="rfc2136"), state, observations, NOW)
        added = {r for step in plan.steps if isinstance(step, Publish) for r in step.add}
        assert TlsaRecord(NAME_A, 3, 1, 1, chains[A].leaf_spki) in added


class TestSniEntries:
    def test_a_hostnames_change_of_one_certificate(self, chains: dict[str, ChainInfo]) -> None:
        deployed_chains = {A: chains[A], B: chains[B]}
        before = config_of({"sni": True}, {"sni": True})
        entries = build_sni_entries(before, deployed_chains, PATHS)  # type: ignore[arg-type]
        assert sorted(entries) == [A, B, f"www.{A}"]
        after = config_of({"sni": True, "hostnames": [f"www.{A}"]}, {"sni": True})
        entries = build_sni_entries(after, deployed_chains, PATHS)  # type: ignore[arg-type]
        assert sorted(entries) == [B, f"www.{A}"]

    def test_a_renewed_chain_with_other_names(self, chains: dict[str, ChainInfo]) -> None:
        config = config_of({"sni": True}, {"sni": True})
        build_sni_entries(config, {A: chains[A], B: chains[B]}, PATHS)  # type: ignore[arg-type]
        renewed = {A: chains["renamed"], B: chains[B]}
        entries = build_sni_entries(config, renewed, PATHS)  # type: ignore[arg-type]
        assert sorted(entries) == [A, B, f"mail.{A}"]

    def test_the_sni_parameter_follows_the_last_sni_certificate(
        self, chains: dict[str, ChainInfo]
    ) -> None:
        deployed_chains = {A: chains[A], B: chains[B]}
        both = config_of({"sni": True}, {"sni": True})
        wanted = build_wanted_parameters(both, deployed_chains, PATHS)  # type: ignore[arg-type]
        assert "tls_server_sni_maps" in wanted
        none = config_of({}, {"sni": False, "hostnames": [B]})
        # Two default chains of one algorithm are refused by the planner; here only
        # the parameters are asked: no SNI certificate left, no SNI table named.
        wanted = build_wanted_parameters(none, deployed_chains, PATHS)  # type: ignore[arg-type]
        assert "tls_server_sni_maps" not in wanted


class TestSharedRecords:
    """Between renewals the needed records of a lineage are the state's own
    objects (issue 15, mem2: a copy per lineage was ~4 MiB at 10,000), and
    still exactly the records the configuration asks for."""

    def test_the_records_a_chain_was_read_with_are_shared(
        self, chains: dict[str, ChainInfo]
    ) -> None:
        config = config_of({})
        certificate = config.certificates[0]
        # as the daemon reads a chain: with the records it needs (then state-loaded objects)
        read = {
            **chains,
            A: dataclasses.replace(
                chains[A],
                tlsa=tuple(
                    TlsaRecord.from_key(r.key) for r in build_chain_records(certificate, chains[A])
                ),
            ),
        }
        state = deployed(read)
        needed = needed_of(config, state)
        assert needed == reference(config, state)
        captured = read[A].tlsa
        assert captured and set(captured) == needed[NAME_A]
        assert all(any(r is c for c in captured) for r in needed[NAME_A])

    def test_other_usages_are_not_the_captured_records(self, chains: dict[str, ChainInfo]) -> None:
        config, state = config_of({"usages": ["3 1 1"]}), deployed(chains)
        needed = needed_of(config, state)
        assert needed == reference(config, state)
        assert needed[NAME_A] != set(chains[A].tlsa)
        assert {r.usage for r in needed[NAME_A]} == {3}

    def test_kept_between_passes_as_the_chains_own_tuple(
        self, chains: dict[str, ChainInfo]
    ) -> None:
        """One chain, one owner name: its records are remembered as the chain
        holds them (no frozenset and no pair of one's own per lineage, 3 MiB at
        10,000), and a pass with a candidate beside it groups both chains'."""
        config = config_of({})
        certificate = config.certificates[0]
        own = tuple(build_chain_records(certificate, chains[A]))
        read = {**chains, A: dataclasses.replace(chains[A], tlsa=own)}
        state = deployed(read)
        for _ in range(2):  # built, then remembered
            holding = next(h for h in build_holdings(config, state, {}) if h.lineage == A)
            ((name, records),) = build_holding_records(holding)
            assert name == NAME_A and records is own
            assert needed_of(config, state) == reference(config, state)
        state.lineage(A).pending = chains["renewed"]
        needed = needed_of(config, state)
        assert needed == reference(config, state)
        renewed = set(build_chain_records(certificate, chains["renewed"]))
        assert needed[NAME_A] == set(own) | renewed
        state.lineage(A).pending = None
        assert needed_of(config, state) == reference(config, state)
        holding = next(h for h in build_holdings(config, state, {}) if h.lineage == A)
        assert build_holding_records(holding)[0][1] is own


class TestConfigIndex:
    """The index's lineages and SNI lookup answer as the configuration says
    (issue 15, trim: no frozenset of their own)."""

    def test_lineages_and_sni(self) -> None:
        config = config_of({"sni": True}, {"sni": False})
        index = build_config_index(config)
        assert set(index.lineages) == {A, B}
        assert {"gone", A} - index.lineages == {"gone"}
        assert index.any_sni([A]) and index.any_sni(["gone", B, A])
        assert not index.any_sni([B]) and not index.any_sni(["gone"]) and not index.any_sni([])
