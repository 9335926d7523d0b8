"""The read cache is written once a pass, at its end (issue 15, coldread): a
cold start wrote every shard after the reading and again after the deploy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from danesync.config import CertificateConfig
from danesync.errors import StateError
from danesync.plan import Problem
from danesync.ports import Offer, ProbeRequest, ProbeResult
from danesync.state import State
from tests.sim.machine import LINEAGES, DanesyncWorld
from tests.sim.world import SimLineages, SimPostfix


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


class RecordingLineages(SimLineages):
    def __init__(self, inner: SimLineages, recorder: Recorder) -> None:
        super().__init__()
        self.current, self.known = inner.current, inner.known
        self.recorder = recorder

    def read_candidate(self, certificate: CertificateConfig, now: dt.datetime) -> Offer | Problem:
        self.recorder.events.append("read")
        return super().read_candidate(certificate, now)

    def flush(self) -> None:
        self.recorder.events.append("flush")


class RecordingPostfix(SimPostfix):
    recorder: Recorder

    def confirm_served(
        self, requests: Sequence[ProbeRequest], on_result: ProbeResult | None = None
    ) -> dict[str, bool]:
        self.recorder.events.append("probe")
        return super().confirm_served(requests, on_result)


def _world() -> tuple[DanesyncWorld, Recorder]:
    world = DanesyncWorld()
    recorder = Recorder()
    world.lineages = RecordingLineages(world.lineages, recorder)
    postfix = RecordingPostfix(world.snakeoil)
    postfix.recorder = recorder
    world.postfix = postfix
    return world, recorder


def test_a_first_pass_flushes_the_read_cache_once_after_its_deploy() -> None:
    world, recorder = _world()
    service = world.build_service()
    service.reconcile()
    assert {n for n, s in service.state.lineages.items() if s.deployed} == set(LINEAGES)
    assert recorder.events.count("flush") == 1
    assert recorder.events[-1] == "flush"  # after the reading and after every probe
    assert "probe" in recorder.events and recorder.events.count("read") == len(LINEAGES)


def test_a_pass_that_fails_still_flushes_what_it_validated() -> None:
    world, recorder = _world()
    service = world.build_service()

    saves = world.store.save

    def failing_save(state: State) -> None:
        if "probe" in recorder.events:  # the deploy's last save fails
            raise StateError("disk full")
        saves(state)

    world.store.save = failing_save  # type: ignore[method-assign]
    result = service.reconcile()
    assert result.failed
    assert recorder.events.count("read") == len(LINEAGES)
    assert recorder.events[-1] == "flush" and recorder.events.count("flush") == 1
