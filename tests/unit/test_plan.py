"""The rollover rules, decided by the pure planner from real chains and RRset histories."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from danesync.chain import LineageFiles, validate_chain
from danesync.config import Config, build_config
from danesync.history import SENDER_SLACK, NameHistory, RRset, record_served
from danesync.plan import (
    FORCE_MARGIN,
    ClearInflight,
    Deploy,
    DeployKind,
    Observations,
    Problem,
    Publish,
    Retire,
    Verb,
    plan_pass,
    plan_recovery,
)
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, Usage
from tests.harness.certs import NOW, Hierarchy, Leaf

NAME = "_25._tcp.mx.example.test."
PRIMARY = "127.0.0.1:5353"
SECONDARY = "127.0.0.2:53"
MX = "mx.example.test"
S = dt.timedelta(seconds=1)


def make_config(mode: str = "rfc2136", ttl: int = 100, **dns: Any) -> Config:
    return make_multi_config([{"lineage": MX}], mode, ttl, **dns)


def make_multi_config(
    certificates: list[dict[str, Any]], mode: str = "rfc2136", ttl: int = 100, **dns: Any
) -> Config:
    document: dict[str, Any] = {
        "dns": {
            "mode": mode,
            "server": PRIMARY,
            "zone": "example.test",
            "tsig_key_file": "/etc/danesync/tsig.key",
            "ttl": ttl,
            **dns,
        },
        "certificate": certificates,
    }
    if mode != "rfc2136":
        del document["dns"]["tsig_key_file"]
    return build_config(document, Path("/test.toml"))


def make_chain(
    leaf: Leaf, usages: tuple[Usage, ...] = (Usage.DANE_TA,), lineage: str = MX
) -> ChainInfo:
    files = LineageFiles(
        lineage, 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem
    )
    return ChainInfo.from_chain(validate_chain(files, (MX,), (NAME,), usages, NOW))


def served(
    state: State,
    at: dt.datetime,
    *records: TlsaRecord,
    ttl: int = 100,
    name: str = NAME,
    servers: tuple[str, ...] = (PRIMARY, SECONDARY),
) -> None:
    history = state.names.get(name) or NameHistory(name)
    for server in servers:
        history = record_served(history, server, RRset.of(records, ttl), at)
    state.names[name] = history


def deployed_state(chain: ChainInfo, *records: TlsaRecord, owned: bool = True) -> State:
    state = State()
    state.lineage(MX).deployed = chain
    served(state, NOW - dt.timedelta(days=30), *records)
    served(state, NOW, *records)
    if owned:
        state.names[NAME] = NameHistory(
            NAME, state.names[NAME].seen, state.names[NAME].servers, frozenset(records)
        )
    return state


def observe(candidates: dict[str, Any], **kwargs: Any) -> Observations:
    return Observations(candidates, frozenset({NAME}), **kwargs)


def steps_of(plan: Any, kind: type) -> list[Any]:
    return [s for s in plan.steps if isinstance(s, kind)]


@pytest.fixture(scope="module")
def old() -> Hierarchy:
    return Hierarchy("Old")


@pytest.fixture(scope="module")
def new() -> Hierarchy:
    return Hierarchy("New")


class TestDeployGate:
    """A chain goes into service only when every RRset a cache may hold accepts it."""

    def test_dns_off_deploys_at_once(self, new: Hierarchy) -> None:
        chain = make_chain(new.issue())
        plan = plan_pass(make_config("off"), State(), Observations({MX: chain}), NOW)
        assert [d.verb for d in plan.decisions] == [Verb.DEPLOY]
        assert steps_of(plan, Publish) == steps_of(plan, Retire) == []

    def test_new_issuer_is_held_and_published(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW)
        (decision,) = plan.decisions
        assert decision.verb is Verb.PUBLISH
        (publish,) = steps_of(plan, Publish)
        assert publish.add == candidate.tlsa
        assert not steps_of(plan, Deploy) and not steps_of(plan, Retire)

    def test_a_lagging_secondary_holds(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        served(state, NOW, *current.tlsa, *candidate.tlsa, servers=(PRIMARY,))
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.WAIT_VISIBLE
        assert not steps_of(plan, Publish)

    def test_waits_ttl_floor_after_the_old_rrset_was_last_served(
        self, old: Hierarchy, new: Hierarchy
    ) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        served(state, NOW, *current.tlsa, *candidate.tlsa)
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW + 10 * S)
        (decision,) = plan.decisions
        assert decision.verb is Verb.WAIT_AGE
        assert decision.proceed_at == NOW + 200 * S  # rollover_wait, the floor
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW + 200 * S)
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_same_issuer_renewal_needs_no_wait(self, old: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_dane_ee_waits_for_the_new_key(self, old: Hierarchy) -> None:
        usages = (Usage.DANE_EE,)
        current, candidate = make_chain(old.issue(), usages), make_chain(old.issue(), usages)
        state = deployed_state(current, *current.tlsa)
        config = make_multi_config([{"lineage": MX, "usages": ["3 1 1"]}])
        plan = plan_pass(config, state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.PUBLISH
        (publish,) = steps_of(plan, Publish)
        assert [r.usage for r in publish.add] == [3]

    def test_dns_unreachable_holds(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(make_config(), state, Observations({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.DNS_UNKNOWN
        assert plan.steps == ()

    def test_check_mode_reports_and_never_publishes(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa, owned=False)
        plan = plan_pass(make_config("check"), state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.MISSING
        assert plan.decisions[0].missing == candidate.tlsa
        assert plan.missing == candidate.tlsa
        assert plan.steps == ()


class TestFinding1RealTtl:
    """The TTL an RRset was actually served with, not dns.ttl, bounds what caches hold."""

    def test_wait_covers_the_served_ttl(self, old: Hierarchy, new: Hierarchy) -> None:
        config = make_config(ttl=2)  # rollover_wait 4
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = State()
        state.lineage(MX).deployed = current
        served(state, NOW - 100 * S, *current.tlsa, ttl=15)  # published by hand, TTL 15
        served(state, NOW, *current.tlsa, *candidate.tlsa, ttl=2)
        plan = plan_pass(config, state, observe({MX: candidate}), NOW + 4 * S)
        assert plan.decisions[0].verb is Verb.WAIT_AGE
        assert plan.decisions[0].proceed_at == NOW + 15 * S + SENDER_SLACK
        plan = plan_pass(config, state, observe({MX: candidate}), NOW + 15 * S)
        assert plan.decisions[0].verb is Verb.WAIT_AGE  # a sender's lookup may be that old
        plan = plan_pass(config, state, observe({MX: candidate}), NOW + 15 * S + SENDER_SLACK)
        assert plan.decisions[0].verb is Verb.DEPLOY

    def test_an_update_that_changes_the_ttl_says_so(self, old: Hierarchy, new: Hierarchy) -> None:
        config = make_config(ttl=2)
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = State()
        state.lineage(MX).deployed = current
        served(state, NOW, *current.tlsa, ttl=15)
        (publish,) = steps_of(plan_pass(config, state, observe({MX: candidate}), NOW), Publish)
        assert (publish.ttl, publish.previous_ttl) == (2, 15)

    def test_unobserved_time_counts_as_served(self, old: Hierarchy, new: Hierarchy) -> None:
        """Last looked at T-1000 (old RRset); at T the new one: the old counts as served until T."""
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = State()
        state.lineage(MX).deployed = current
        served(state, NOW - 1000 * S, *current.tlsa, ttl=300)
        served(state, NOW, *current.tlsa, *candidate.tlsa, ttl=300)
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW + 1 * S)
        assert plan.decisions[0].proceed_at == NOW + 300 * S + SENDER_SLACK


class TestFinding2DeployFirst:
    """First start, a chain matching nothing served, no records: deploy, then publish."""

    def test_deploys_before_publishing(self, new: Hierarchy) -> None:
        candidate = make_chain(new.issue())
        state = State()
        served(state, NOW)  # NODATA everywhere
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.DEPLOY
        assert not steps_of(plan, Publish)  # snakeoil is served: a record would break it
        (deploy,) = steps_of(plan, Deploy)
        assert deploy.items[0].chain == candidate
        state.lineage(MX).deployed = candidate
        (publish,) = steps_of(
            plan_pass(make_config(), state, observe({MX: candidate}), NOW), Publish
        )
        assert publish.add == candidate.tlsa

    def test_existing_records_must_match(self, old: Hierarchy, new: Hierarchy) -> None:
        candidate, other = make_chain(new.issue()), make_chain(old.issue())
        state = State()
        served(state, NOW, *other.tlsa)  # the operator's record for what is served now
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.PUBLISH  # adding keeps the served chain matching
        assert steps_of(plan, Publish)

    def test_adoption_of_what_postfix_serves_needs_no_wait(self, new: Hierarchy) -> None:
        candidate = make_chain(new.issue())
        state = State()
        served(state, NOW, TlsaRecord(NAME, 2, 1, 1, "00" * 32))
        plan = plan_pass(
            make_config(), state, observe({MX: candidate}, served={MX: candidate.fingerprint}), NOW
        )
        assert plan.decisions[0].verb is Verb.DEPLOY


class TestFinding3Recovery:
    """What a restart finds on disk is an observation; only a deploy in flight is finished."""

    def test_inflight_with_its_file_is_finished(self, new: Hierarchy) -> None:
        chain = make_chain(new.issue())
        state = State()
        state.lineage(MX).inflight = chain
        (deploy,) = plan_recovery(make_config(), state, {MX: chain.fingerprint})
        assert isinstance(deploy, Deploy) and deploy.items[0].kind is DeployKind.RESUMED

    def test_inflight_without_its_file_is_forgotten(self, old: Hierarchy, new: Hierarchy) -> None:
        chain = make_chain(new.issue())
        state = State()
        state.lineage(MX).inflight = chain
        assert plan_recovery(make_config(), state, {MX: None}) == (ClearInflight(MX),)

    def test_rolled_back_first_deploy_is_not_adopted(self, new: Hierarchy) -> None:
        """The rollback cleared `inflight`: a leftover file is not what Postfix serves."""
        chain = make_chain(new.issue())
        state = State()
        state.lineage(MX).failed_fingerprint = chain.fingerprint
        assert plan_recovery(make_config(), state, {MX: chain.fingerprint}) == ()
        assert not state.reload_pending


class TestFinding5OneDefinitionOfNeeded:
    """Partial and full passes agree on what is needed, from today's config."""

    def test_partial_and_full_passes_agree(self, old: Hierarchy, new: Hierarchy) -> None:
        config = make_multi_config(
            [
                {"lineage": "a", "hostnames": [MX], "tlsa": [NAME], "usages": ["3 1 1"]},
                {"lineage": "b", "hostnames": [MX], "tlsa": [NAME], "sni": True},
            ]
        )
        a = make_chain(old.issue(), (Usage.DANE_TA,), "a")  # deployed under another usage
        b = make_chain(new.issue(), (Usage.DANE_TA,), "b")
        state = State()
        state.lineage("a").deployed = a
        state.lineage("b").deployed = b
        served(state, NOW, *a.tlsa, *b.tlsa)
        history = state.names[NAME]
        state.names[NAME] = NameHistory(
            NAME, history.seen, history.servers, frozenset(a.tlsa + b.tlsa)
        )
        partial = plan_pass(config, state, observe({"a": a}), NOW)
        full = plan_pass(config, state, observe({"a": a, "b": b}), NOW)
        assert partial.steps == full.steps
        (publish,) = steps_of(full, Publish)
        assert [r.usage for r in publish.add] == [3]  # a's 3 1 1, today's usage
        assert not steps_of(full, Retire)  # a still matches only through 2 1 1 until then


class TestRetire:
    """Only records danesync's updates added, and only while served chains still match."""

    def test_old_issuer_record_retired_after_deploy(self, old: Hierarchy, new: Hierarchy) -> None:
        before, after = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(after, *after.tlsa, *before.tlsa)
        plan = plan_pass(make_config(), state, observe({MX: after}), NOW)
        assert plan.decisions[0].verb is Verb.UNCHANGED
        (retire,) = steps_of(plan, Retire)
        assert retire.delete == before.tlsa

    def test_record_added_by_hand_is_left_alone(self, old: Hierarchy, new: Hierarchy) -> None:
        before, after = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(after, *after.tlsa, *before.tlsa, owned=False)
        assert not steps_of(plan_pass(make_config(), state, observe({MX: after}), NOW), Retire)

    def test_never_removes_what_a_served_chain_needs(self, old: Hierarchy) -> None:
        chain = make_chain(old.issue())
        state = deployed_state(chain, *chain.tlsa)
        config = make_config()
        plan = plan_pass(config, state, observe({MX: Problem("broken")}), NOW)
        assert not steps_of(plan, Retire)

    def test_deleted_record_of_deployed_chain_is_republished(self, old: Hierarchy) -> None:
        current = make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        served(state, NOW + S)  # deleted by hand
        (publish,) = steps_of(
            plan_pass(make_config(), state, observe({MX: current}), NOW + S), Publish
        )
        assert publish.add == current.tlsa


class TestSafetyRules:
    def test_never_downgrade(self, old: Hierarchy) -> None:
        current = make_chain(old.issue(not_after=NOW + dt.timedelta(days=80)))
        older = make_chain(old.issue(not_after=NOW + dt.timedelta(days=30)))
        state = deployed_state(current, *current.tlsa)
        plan = plan_pass(make_config(), state, observe({MX: older}), NOW)
        assert plan.decisions[0].verb is Verb.DOWNGRADE
        assert "before the deployed chain" in plan.decisions[0].reason

    def test_expired_deployed_chain_forces(self, old: Hierarchy, new: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(new.issue())
        state = deployed_state(current, *current.tlsa)
        later = current.not_after + S
        plan = plan_pass(make_config(), state, observe({MX: candidate}), later)
        assert plan.decisions[0].verb is Verb.FORCE
        assert "expired" in plan.decisions[0].reason

    def test_invalid_and_pending_change_nothing(self, old: Hierarchy) -> None:
        current = make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        for problem, verb in (
            (Problem("bad key"), Verb.INVALID),
            (Problem("mid", True), Verb.PENDING),
        ):
            plan = plan_pass(make_config(), state, observe({MX: problem}), NOW)
            assert [d.verb for d in plan.decisions] == [verb]
            assert plan.steps == ()

    def test_failed_candidate_is_not_retried(self, old: Hierarchy) -> None:
        current, candidate = make_chain(old.issue()), make_chain(old.issue())
        state = deployed_state(current, *current.tlsa)
        state.lineage(MX).failed_fingerprint = candidate.fingerprint
        plan = plan_pass(make_config(), state, observe({MX: candidate}), NOW)
        assert plan.decisions[0].verb is Verb.FAILED


class TestFinding10LastSafeMoment:
    """A deployed chain expiring before the new one is safe: deploy at the last safe moment."""

    def test_held_until_just_before_expiry(self, old: Hierarchy, new: Hierarchy) -> None:
        day = dt.timedelta(days=1)
        config = make_config(ttl=86400)
        current = make_chain(old.issue(not_after=NOW + 1.5 * day))
        candidate = make_chain(new.issue(not_after=NOW + 6 * day))
        state = deployed_state(current, *current.tlsa)
        served(state, NOW, *current.tlsa, *candidate.tlsa, ttl=86400)
        (decision,) = plan_pass(config, state, observe({MX: candidate}), NOW + S).decisions
        assert decision.verb is Verb.WAIT_AGE  # not at once
        assert decision.forced_at == current.not_after - FORCE_MARGIN
        assert decision.proceed_at == decision.forced_at
        (decision,) = plan_pass(
            config, state, observe({MX: candidate}), decision.forced_at
        ).decisions
        assert decision.verb is Verb.FORCE

    def test_no_forced_rollover_while_its_record_is_being_published(
        self, old: Hierarchy, new: Hierarchy
    ) -> None:
        """Found by the clock-step test: every hold whose end was not known yet was
        announced as `rollover.forced` at the old chain's last safe moment, months away."""
        current = make_chain(old.issue(not_after=NOW + dt.timedelta(days=80)))
        candidate = make_chain(new.issue(not_after=NOW + dt.timedelta(days=90)))
        state = deployed_state(current, *current.tlsa)
        (decision,) = plan_pass(make_config(), state, observe({MX: candidate}), NOW).decisions
        assert decision.verb.holds and decision.proceed_at is None
        assert decision.forced_at is None

    def test_forced_when_even_the_shortest_wait_ends_too_late(
        self, old: Hierarchy, new: Hierarchy
    ) -> None:
        hour = dt.timedelta(hours=1)
        config = make_config(ttl=86400)
        current = make_chain(old.issue(not_after=NOW + 3 * hour))
        candidate = make_chain(new.issue(not_after=NOW + 90 * 24 * hour))
        state = deployed_state(current, *current.tlsa)
        (decision,) = plan_pass(config, state, observe({MX: candidate}), NOW).decisions
        assert decision.forced_at == current.not_after - FORCE_MARGIN


class TestExtraRecords:
    """Records a lineage pre-publishes (issue 12) are needed like its own."""

    def test_extra_records_are_published_and_kept(self, old: Hierarchy) -> None:
        chain = make_chain(old.issue())
        state = deployed_state(chain, *chain.tlsa)
        extra = TlsaRecord(NAME, 2, 1, 1, "ee" * 32)
        obs = Observations({MX: chain}, frozenset({NAME}), extra_records={MX: (extra,)})
        (publish,) = steps_of(plan_pass(make_config(), state, obs, NOW), Publish)
        assert publish.add == (extra,)
        served(state, NOW, *chain.tlsa, extra)
        history = state.names[NAME]
        state.names[NAME] = NameHistory(
            NAME, history.seen, history.servers, history.owned | {extra}
        )
        assert not plan_pass(make_config(), state, obs, NOW).steps
