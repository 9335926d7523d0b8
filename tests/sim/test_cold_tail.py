"""The tail of a first pass (issue 15, coldtail): what runs after the last
probe and before READY=1.

The round after a deploy retires or publishes what the deploy changed; with
DNS off there is neither, and the round only walked every lineage again."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from danesync import service as service_module
from danesync.config import DnsMode
from tests.sim.machine import LINEAGES, DanesyncWorld


def _rounds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the planner's rounds (one `plan_pass` a round)."""
    rounds: list[int] = []
    plan_pass = service_module.plan_pass

    def counted(*args: Any, **kwargs: Any) -> Any:
        rounds.append(1)
        return plan_pass(*args, **kwargs)

    monkeypatch.setattr(service_module, "plan_pass", counted)
    return rounds


def _world(mode: DnsMode) -> DanesyncWorld:
    world = DanesyncWorld()
    world.config = replace(world.config, dns=replace(world.config.dns, mode=mode))
    return world


def test_with_dns_off_a_first_pass_deploys_in_one_round(monkeypatch: pytest.MonkeyPatch) -> None:
    world = _world(DnsMode.OFF)
    service = world.build_service()
    rounds = _rounds(monkeypatch)
    result = service.reconcile()
    assert not result.failed
    assert {n for n, s in service.state.lineages.items() if s.deployed} == set(LINEAGES)
    assert all(s.inflight is None for s in service.state.lineages.values())
    assert len(rounds) == 1
    # The next pass finds everything in place and deploys nothing.
    rounds.clear()
    service.reconcile()
    assert len(rounds) == 1
    assert {n for n, s in service.state.lineages.items() if s.deployed} == set(LINEAGES)


def test_with_dns_off_a_deployed_file_changed_later_is_still_repaired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = _world(DnsMode.OFF)
    service = world.build_service()
    service.reconcile()
    lineage = LINEAGES[0]
    written = world.postfix.files[lineage]
    world.postfix.files[lineage] = b"someone else's"
    rounds = _rounds(monkeypatch)
    service.reconcile()
    assert world.postfix.files[lineage] == written
    assert len(rounds) == 1


def test_with_rfc2136_the_deploy_is_followed_by_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    world = _world(DnsMode.RFC2136)
    service = world.build_service()
    rounds = _rounds(monkeypatch)
    service.reconcile()
    assert len(rounds) >= 2  # deploy first, publish after (docs/design.md)
