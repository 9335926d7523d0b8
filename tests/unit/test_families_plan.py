"""The planner with issuer families: renewals between members need no hold."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from danesync.chain import Chain, LineageFiles, validate_chain
from danesync.config import Config, build_config
from danesync.families import build_families, read_shipped_families
from danesync.plan import DnsView, Verb, plan_pass
from danesync.state import ChainInfo, RecordState, State
from danesync.tlsa import TlsaRecord, Usage, spki_sha256
from tests.harness.certs import NOW, Hierarchy, Leaf
from tests.harness.families import CaFamily, family_toml, make_test_family

MX = "mx.example.test"
NAME = "_25._tcp.mx.example.test."
WAIT = dt.timedelta(seconds=200)
AGED = NOW - dt.timedelta(days=30)


@pytest.fixture(scope="module")
def family() -> CaFamily:
    return make_test_family()


def make_config(family: CaFamily, issuers: str | None = "testca") -> Config:
    certificate: dict[str, object] = {"lineage": MX}
    if issuers is not None:
        certificate["issuers"] = issuers
    document = {
        "dns": {
            "mode": "rfc2136",
            "server": "127.0.0.1:5353",
            "zone": "example.test",
            "tsig_key_file": "/etc/danesync/tsig.key",
            "ttl": 100,
        },
        "certificate": [certificate],
    }
    families = {
        **read_shipped_families(),
        **build_families(tomllib.loads(family_toml(family)), "/t/families.toml"),
    }
    return build_config(document, Path("/test.toml"), families)


def make_chain(leaf: Leaf) -> Chain:
    files = LineageFiles(MX, 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem)
    return validate_chain(files, (MX,), (NAME,), (Usage.DANE_TA,), NOW)


def ta(hierarchy: Hierarchy) -> TlsaRecord:
    return TlsaRecord(NAME, 2, 1, 1, spki_sha256(hierarchy.intermediate))


def deployed(chain: Chain, *aged: TlsaRecord) -> State:
    state = State()
    state.lineage(MX).deployed = ChainInfo.from_chain(chain)
    for record in aged:
        state.records[record] = RecordState(True, AGED)
    return state


def view(*visible: TlsaRecord) -> DnsView:
    return DnsView(frozenset({NAME}), frozenset(visible), frozenset(visible))


class TestFamilyInThePlanner:
    """Family records are needed like the chain's own: published, kept, retired."""

    def test_family_records_are_published_with_the_first_chain(self, family: CaFamily) -> None:
        chain = make_chain(family.member("E1").issue([MX]))
        plan = plan_pass(make_config(family), State(), {MX: chain}, view(), {}, NOW)
        expected = {ta(m.hierarchy) for m in family.of_type("ecdsa")}
        assert set(plan.publish) == expected  # E1 (its own), E2, E3 (backup); no R*
        assert plan.decisions[0].verb is Verb.PUBLISH

    def test_renewal_from_another_member_deploys_at_once(self, family: CaFamily) -> None:
        e1, e2 = family.member("E1"), family.member("E2")
        served, renewal = make_chain(e1.issue([MX])), make_chain(e2.issue([MX]))
        records = [ta(m.hierarchy) for m in family.of_type("ecdsa")]
        state = deployed(served, *records)
        plan = plan_pass(make_config(family), state, {MX: renewal}, view(*records), {}, NOW)
        (decision,) = plan.decisions
        assert decision.verb is Verb.DEPLOY
        assert plan.publish == plan.retire == ()

    def test_switch_to_the_backup_deploys_at_once(self, family: CaFamily) -> None:
        served = make_chain(family.member("E2").issue([MX]))
        renewal = make_chain(family.member("E3").issue([MX]))
        records = [ta(m.hierarchy) for m in family.of_type("ecdsa")]
        plan = plan_pass(
            make_config(family), deployed(served, *records), {MX: renewal}, view(*records), {}, NOW
        )
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_without_the_family_the_same_renewal_is_held(self, family: CaFamily) -> None:
        e1, e2 = family.member("E1"), family.member("E2")
        served, renewal = make_chain(e1.issue([MX])), make_chain(e2.issue([MX]))
        state = deployed(served, ta(e1.hierarchy))
        config = make_config(family, issuers=None)
        plan = plan_pass(config, state, {MX: renewal}, view(ta(e1.hierarchy)), {}, NOW)
        assert plan.decisions[0].verb is Verb.PUBLISH
        assert plan.publish == (ta(e2.hierarchy),)

    def test_an_unknown_intermediate_is_held(self, family: CaFamily) -> None:
        served = make_chain(family.member("E1").issue([MX]))
        stranger = Hierarchy("Stranger")
        renewal = make_chain(stranger.issue([MX]))
        records = [ta(m.hierarchy) for m in family.of_type("ecdsa")]
        plan = plan_pass(
            make_config(family), deployed(served, *records), {MX: renewal}, view(*records), {}, NOW
        )
        assert plan.decisions[0].verb is Verb.PUBLISH
        assert plan.publish == (ta(stranger),)
        assert plan.retire == ()  # the family's records stay

    def test_auto_recognises_the_family(self, family: CaFamily) -> None:
        chain = make_chain(family.member("E2").issue([MX]))
        plan = plan_pass(make_config(family, "auto"), State(), {MX: chain}, view(), {}, NOW)
        assert set(plan.publish) == {ta(m.hierarchy) for m in family.of_type("ecdsa")}

    def test_records_no_certificate_needs_are_retired(self, family: CaFamily) -> None:
        """Dropping `issuers` retires the other members' records, not the served one's."""
        e1 = family.member("E1")
        served = make_chain(e1.issue([MX]))
        records = [ta(m.hierarchy) for m in family.of_type("ecdsa")]
        state = deployed(served, *records)
        plan = plan_pass(
            make_config(family, issuers=None), state, {MX: served}, view(*records), {}, NOW
        )
        assert set(plan.retire) == set(records) - {ta(e1.hierarchy)}

    def test_an_expired_member_is_retired(self, family: CaFamily) -> None:
        e1, e2 = family.member("E1"), family.member("E2")
        served = make_chain(e1.issue([MX]))
        records = [ta(m.hierarchy) for m in family.of_type("ecdsa")]
        config = make_config(family)
        testca = config.families["testca"]
        members = tuple(replace(m, not_after=NOW) if m.name == "E2" else m for m in testca.members)
        families = {**config.families, "testca": replace(testca, members=members)}
        config = replace(config, families=families)
        plan = plan_pass(config, deployed(served, *records), {MX: served}, view(*records), {}, NOW)
        assert plan.retire == (ta(e2.hierarchy),)

    def test_a_partial_pass_keeps_other_lineages_family_records(self, family: CaFamily) -> None:
        served = make_chain(family.member("E1").issue([MX]))
        records = [ta(m.hierarchy) for m in family.of_type("ecdsa")]
        plan = plan_pass(
            make_config(family), deployed(served, *records), {}, view(*records), {}, NOW
        )
        assert plan.retire == ()
