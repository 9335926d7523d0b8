"""The planner with issuer families: renewals between members need no hold."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from danesync.chain import LineageFiles, validate_chain
from danesync.config import Config, build_config
from danesync.families import build_families, read_shipped_families
from danesync.history import NameHistory, RRset, record_served
from danesync.plan import Deploy, Observations, Publish, Retire, Verb, plan_pass
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, Usage, spki_sha256
from tests.harness.certs import NOW, Hierarchy
from tests.harness.families import CaFamily, CaMember, family_toml, make_test_family

MX = "mx.example.test"
NAME = "_25._tcp.mx.example.test."
PRIMARY = "127.0.0.1:5353"
LONG_AGO = NOW - dt.timedelta(days=30)


@pytest.fixture(scope="module")
def family() -> CaFamily:
    return make_test_family()


def make_config(family: CaFamily, issuers: str | None = "testca", mode: str = "rfc2136") -> Config:
    certificate: dict[str, object] = {"lineage": MX}
    if issuers is not None:
        certificate["issuers"] = issuers
    dns: dict[str, Any] = {"mode": mode, "server": PRIMARY, "zone": "example.test", "ttl": 100}
    if mode == "rfc2136":
        dns["tsig_key_file"] = "/etc/danesync/tsig.key"
    families = {
        **read_shipped_families(),
        **build_families(tomllib.loads(family_toml(family)), "/t/families.toml"),
    }
    return build_config({"dns": dns, "certificate": [certificate]}, Path("/t.toml"), families)


def make_chain(member: CaMember | Hierarchy) -> ChainInfo:
    hierarchy = member.hierarchy if isinstance(member, CaMember) else member
    leaf = hierarchy.issue([MX])
    files = LineageFiles(MX, 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem)
    return ChainInfo.from_chain(validate_chain(files, (MX,), (NAME,), (Usage.DANE_TA,), NOW))


def ta(member: CaMember | Hierarchy) -> TlsaRecord:
    hierarchy = member.hierarchy if isinstance(member, CaMember) else member
    return TlsaRecord(NAME, 2, 1, 1, spki_sha256(hierarchy.intermediate))


def serving(chain: ChainInfo | None, *records: TlsaRecord, owned: bool = True) -> State:
    """Postfix serves `chain`; the primary has served `records` for a month."""
    state = State()
    if chain is not None:
        state.lineage(MX).deployed = chain
    history = NameHistory(NAME)
    for moment in (LONG_AGO, NOW):
        history = record_served(history, PRIMARY, RRset.of(records, 100), moment)
    state.names[NAME] = replace(history, owned=frozenset(records) if owned else frozenset())
    return state


def observe(candidates: dict[str, Any]) -> Observations:
    return Observations(candidates, frozenset({NAME}))


def steps(plan: Any, kind: type) -> list[Any]:
    return [s for s in plan.steps if isinstance(s, kind)]


def ecdsa_records(family: CaFamily) -> list[TlsaRecord]:
    return [ta(m) for m in family.of_type("ecdsa")]


class TestFamilyInThePlanner:
    """Family records are needed like the chain's own: published, kept, retired."""

    def test_published_once_the_first_chain_is_served(self, family: CaFamily) -> None:
        chain = make_chain(family.member("E1"))
        plan = plan_pass(make_config(family), serving(chain), observe({MX: chain}), NOW)
        (publish,) = steps(plan, Publish)
        assert set(publish.add) == set(ecdsa_records(family))  # E1, E2, E3 (backup); no R*

    def test_renewal_from_another_member_deploys_at_once(self, family: CaFamily) -> None:
        served, renewal = make_chain(family.member("E1")), make_chain(family.member("E2"))
        state = serving(served, *ecdsa_records(family))
        plan = plan_pass(make_config(family), state, observe({MX: renewal}), NOW)
        (decision,) = plan.decisions
        assert decision.verb is Verb.DEPLOY
        assert steps(plan, Deploy) and not steps(plan, Publish)

    def test_switch_to_the_backup_deploys_at_once(self, family: CaFamily) -> None:
        served, renewal = make_chain(family.member("E2")), make_chain(family.member("E3"))
        state = serving(served, *ecdsa_records(family))
        plan = plan_pass(make_config(family), state, observe({MX: renewal}), NOW)
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_without_the_family_the_same_renewal_is_held(self, family: CaFamily) -> None:
        e1, e2 = family.member("E1"), family.member("E2")
        served, renewal = make_chain(e1), make_chain(e2)
        state = serving(served, ta(e1))
        plan = plan_pass(make_config(family, issuers=None), state, observe({MX: renewal}), NOW)
        assert plan.decisions[0].verb is Verb.PUBLISH
        (publish,) = steps(plan, Publish)
        assert publish.add == (ta(e2),)

    def test_an_unknown_intermediate_is_held(self, family: CaFamily) -> None:
        stranger = Hierarchy("Stranger")
        served, renewal = make_chain(family.member("E1")), make_chain(stranger)
        state = serving(served, *ecdsa_records(family))
        plan = plan_pass(make_config(family), state, observe({MX: renewal}), NOW)
        assert plan.decisions[0].verb is Verb.PUBLISH
        (publish,) = steps(plan, Publish)
        assert publish.add == (ta(stranger),)

    def test_check_mode_lists_the_family_as_missing(self, family: CaFamily) -> None:
        chain = make_chain(family.member("E1"))
        state = serving(chain, ta(family.member("E1")), owned=False)
        plan = plan_pass(make_config(family, mode="check"), state, observe({MX: chain}), NOW)
        assert set(plan.missing) == set(ecdsa_records(family)) - {ta(family.member("E1"))}

    def test_auto_recognises_the_family(self, family: CaFamily) -> None:
        chain = make_chain(family.member("E2"))
        plan = plan_pass(make_config(family, "auto"), serving(chain), observe({MX: chain}), NOW)
        (publish,) = steps(plan, Publish)
        assert set(publish.add) == set(ecdsa_records(family))

    def test_records_no_certificate_needs_are_retired(self, family: CaFamily) -> None:
        """Dropping `issuers` retires the other members' records, not the served one's."""
        e1 = family.member("E1")
        served = make_chain(e1)
        state = serving(served, *ecdsa_records(family))
        plan = plan_pass(make_config(family, issuers=None), state, observe({MX: served}), NOW)
        (retire,) = steps(plan, Retire)
        assert set(retire.delete) == set(ecdsa_records(family)) - {ta(e1)}

    def test_an_expired_member_is_retired(self, family: CaFamily) -> None:
        served = make_chain(family.member("E1"))
        config = make_config(family)
        testca = config.families["testca"]
        members = tuple(replace(m, not_after=NOW) if m.name == "E2" else m for m in testca.members)
        config = replace(
            config, families={**config.families, "testca": replace(testca, members=members)}
        )
        state = serving(served, *ecdsa_records(family))
        (retire,) = steps(plan_pass(config, state, observe({MX: served}), NOW), Retire)
        assert retire.delete == (ta(family.member("E2")),)

    def test_a_partial_pass_keeps_the_family_records(self, family: CaFamily) -> None:
        served = make_chain(family.member("E1"))
        state = serving(served, *ecdsa_records(family))
        plan = plan_pass(make_config(family), state, observe({}), NOW)
        assert not steps(plan, Retire)
