"""The rollover rules, decided by the pure planner from real chains."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from danesync.chain import Chain, LineageFiles, validate_chain
from danesync.config import Config, build_config
from danesync.plan import DnsView, Problem, Verb, plan_pass
from danesync.state import ChainInfo, RecordState, State
from danesync.tlsa import TlsaRecord, Usage
from tests.harness.certs import NOW, Hierarchy, Leaf

NAME = "_25._tcp.mx.example.test."
WAIT = dt.timedelta(seconds=200)


def make_config(mode: str = "rfc2136", **certificate: object) -> Config:
    document = {
        "dns": {
            "mode": mode,
            "server": "127.0.0.1:5353",
            "zone": "example.test",
            "tsig_key_file": "/etc/danesync/tsig.key",
            "ttl": 100,
        },
        "certificate": [{"lineage": "mx.example.test", **certificate}],
    }
    if mode != "rfc2136":
        del document["dns"]["tsig_key_file"]  # type: ignore[attr-defined]
    return build_config(document, Path("/test.toml"))


def make_chain(leaf: Leaf, usages: tuple[Usage, ...] = (Usage.DANE_TA,)) -> Chain:
    files = LineageFiles(
        "mx.example.test", 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem
    )
    return validate_chain(files, ("mx.example.test",), (NAME,), usages, NOW)


def view(*visible: TlsaRecord, on_primary: tuple[TlsaRecord, ...] | None = None) -> DnsView:
    return DnsView(
        frozenset({NAME}),
        frozenset(visible),
        frozenset(visible if on_primary is None else on_primary),
    )


@pytest.fixture(scope="module")
def old() -> Hierarchy:
    return Hierarchy("Old")


@pytest.fixture(scope="module")
def new() -> Hierarchy:
    return Hierarchy("New")


def deployed_state(chain: Chain, *visible: TlsaRecord, published: bool = True) -> State:
    state = State()
    state.lineage("mx.example.test").deployed = ChainInfo.from_chain(chain)
    for record in visible:
        state.records[record] = RecordState(published, NOW - dt.timedelta(days=30))
    return state


class TestDeployGate:
    """A new chain goes into service only once its records are visible and aged."""

    def test_dns_off_deploys_at_once(self, new: Hierarchy) -> None:
        chain = make_chain(new.issue())
        plan = plan_pass(make_config("off"), State(), {"mx.example.test": chain}, None, {}, NOW)
        assert [d.verb for d in plan.decisions] == [Verb.DEPLOY]
        assert plan.publish == plan.retire == ()

    def test_new_issuer_is_held_and_published(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(
            make_config(), state, {"mx.example.test": candidate}, view(*current.tlsa), {}, NOW
        )
        (decision,) = plan.decisions
        assert decision.verb is Verb.PUBLISH
        assert plan.publish == candidate.tlsa
        assert plan.retire == ()  # the deployed chain still needs its record

    def test_published_but_not_visible_waits(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        state.records[candidate.tlsa[0]] = RecordState(published=True)
        dns = view(*current.tlsa, on_primary=(*current.tlsa, *candidate.tlsa))
        plan = plan_pass(make_config(), state, {"mx.example.test": candidate}, dns, {}, NOW)
        assert plan.decisions[0].verb is Verb.WAIT_VISIBLE
        assert plan.publish == ()

    def test_newly_visible_record_starts_the_clock(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        dns = view(*current.tlsa, *candidate.tlsa)
        plan = plan_pass(make_config(), state, {"mx.example.test": candidate}, dns, {}, NOW)
        assert plan.mark_visible == candidate.tlsa
        (decision,) = plan.decisions
        assert decision.verb is Verb.WAIT_AGE
        assert decision.proceed_at == NOW + WAIT

    def test_aged_record_deploys(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        state.records[candidate.tlsa[0]] = RecordState(True, NOW - WAIT)
        dns = view(*current.tlsa, *candidate.tlsa)
        plan = plan_pass(make_config(), state, {"mx.example.test": candidate}, dns, {}, NOW)
        assert plan.decisions[0].verb is Verb.DEPLOY
        assert plan.retire == ()  # only after the deploy is recorded

    def test_one_second_short_still_waits(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        state.records[candidate.tlsa[0]] = RecordState(True, NOW - WAIT + dt.timedelta(seconds=1))
        dns = view(*current.tlsa, *candidate.tlsa)
        plan = plan_pass(make_config(), state, {"mx.example.test": candidate}, dns, {}, NOW)
        assert plan.decisions[0].verb is Verb.WAIT_AGE

    def test_record_that_vanished_restarts_the_clock(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        state.records[candidate.tlsa[0]] = RecordState(True, NOW - WAIT)
        plan = plan_pass(
            make_config(), state, {"mx.example.test": candidate}, view(*current.tlsa), {}, NOW
        )
        assert plan.mark_invisible == candidate.tlsa
        assert plan.decisions[0].verb is Verb.WAIT_VISIBLE
        assert plan.publish == candidate.tlsa  # self-healing: it is not on the primary

    def test_same_issuer_renewal_needs_no_wait(self, old: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(
            make_config(), state, {"mx.example.test": candidate}, view(*current.tlsa), {}, NOW
        )
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_dane_ee_waits_for_the_new_key(self, old: Hierarchy) -> None:
        usages = (Usage.DANE_TA, Usage.DANE_EE)
        current = make_chain(old.issue(), usages)
        candidate = make_chain(old.issue(), usages)
        state = deployed_state(current, *current.tlsa)
        config = make_config(usages=["2 1 1", "3 1 1"])
        plan = plan_pass(
            config, state, {"mx.example.test": candidate}, view(*current.tlsa), {}, NOW
        )
        (decision,) = plan.decisions
        assert decision.verb is Verb.PUBLISH
        assert [r.usage for r in plan.publish] == [3]

    def test_dns_unreachable_holds(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(make_config(), state, {"mx.example.test": candidate}, None, {}, NOW)
        assert plan.decisions[0].verb is Verb.DNS_UNKNOWN
        assert plan.publish == plan.retire == plan.mark_invisible == ()

    def test_check_mode_reports_and_never_publishes(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa, published=False)
        plan = plan_pass(
            make_config("check"),
            state,
            {"mx.example.test": candidate},
            view(*current.tlsa),
            {},
            NOW,
        )
        assert plan.decisions[0].verb is Verb.MISSING
        assert plan.decisions[0].missing == candidate.tlsa
        assert plan.missing == candidate.tlsa
        assert plan.publish == plan.retire == ()


class TestRetire:
    """Only records danesync published and nothing needs are removed."""

    def test_old_issuer_record_retired_after_deploy(self, old: Hierarchy, new: Hierarchy) -> None:
        before, after = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(after, *after.tlsa, *before.tlsa)
        plan = plan_pass(
            make_config(),
            state,
            {"mx.example.test": after},
            view(*after.tlsa, *before.tlsa),
            {},
            NOW,
        )
        assert plan.decisions[0].verb is Verb.UNCHANGED
        assert plan.retire == before.tlsa

    def test_record_added_by_hand_is_left_alone(self, old: Hierarchy, new: Hierarchy) -> None:
        before, after = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(after, *after.tlsa)
        state.records[before.tlsa[0]] = RecordState(published=False, visible_since=NOW)
        plan = plan_pass(
            make_config(),
            state,
            {"mx.example.test": after},
            view(*after.tlsa, *before.tlsa),
            {},
            NOW,
        )
        assert plan.retire == ()

    def test_deleted_record_of_deployed_chain_is_republished(self, old: Hierarchy) -> None:
        current = make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(make_config(), state, {"mx.example.test": current}, view(), {}, NOW)
        assert plan.publish == current.tlsa
        assert plan.mark_invisible == current.tlsa


class TestSafetyRules:
    def test_never_downgrade(self, old: Hierarchy) -> None:
        current = make_chain(old.issue(not_after=NOW + dt.timedelta(days=80)))
        older = make_chain(old.issue(not_after=NOW + dt.timedelta(days=30)))
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(
            make_config(), state, {"mx.example.test": older}, view(*current.tlsa), {}, NOW
        )
        assert plan.decisions[0].verb is Verb.DOWNGRADE
        assert "before the deployed chain" in plan.decisions[0].reason

    def test_expired_deployed_chain_forces(self, old: Hierarchy, new: Hierarchy) -> None:
        current = make_chain(old.issue())
        candidate = make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        later = current.not_after + dt.timedelta(seconds=1)
        info = ChainInfo.from_chain(current)
        assert later > info.not_after
        plan = plan_pass(
            make_config(), state, {"mx.example.test": candidate}, view(*current.tlsa), {}, later
        )
        assert plan.decisions[0].verb is Verb.FORCE
        assert "expired" in plan.decisions[0].reason

    def test_expiring_before_the_wait_ends_forces(self, old: Hierarchy, new: Hierarchy) -> None:
        current = make_chain(old.issue(not_after=NOW + dt.timedelta(seconds=100)))
        candidate = make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(
            make_config(), state, {"mx.example.test": candidate}, view(*current.tlsa), {}, NOW
        )
        assert plan.decisions[0].verb is Verb.FORCE
        assert "before the rollover could finish" in plan.decisions[0].reason

    def test_adoption_of_what_postfix_serves_needs_no_wait(self, new: Hierarchy) -> None:
        candidate = make_chain(new.issue())
        served = {"mx.example.test": candidate.fingerprint}
        plan = plan_pass(
            make_config(), State(), {"mx.example.test": candidate}, view(), served, NOW
        )
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_adoption_otherwise_follows_the_rules(self, new: Hierarchy) -> None:
        candidate = make_chain(new.issue())
        plan = plan_pass(make_config(), State(), {"mx.example.test": candidate}, view(), {}, NOW)
        assert plan.decisions[0].verb is Verb.PUBLISH

    def test_invalid_and_pending_change_nothing(self, old: Hierarchy) -> None:
        current = make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        for problem, verb in (
            (Problem("bad key"), Verb.INVALID),
            (Problem("mid", True), Verb.PENDING),
        ):
            plan = plan_pass(
                make_config(), state, {"mx.example.test": problem}, view(*current.tlsa), {}, NOW
            )
            assert [d.verb for d in plan.decisions] == [verb]
            assert plan.publish == plan.retire == ()

    def test_failed_candidate_is_not_retried(self, old: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        state.lineage("mx.example.test").failed_fingerprint = candidate.fingerprint
        plan = plan_pass(
            make_config(), state, {"mx.example.test": candidate}, view(*current.tlsa), {}, NOW
        )
        assert plan.decisions[0].verb is Verb.FAILED
