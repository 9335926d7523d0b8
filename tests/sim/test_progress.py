"""A pass reports its progress to the hook after every lineage of its long loops
(Runtime.progress): the daemon turns it into systemd's watchdog pings. And a
deploy writes its chain files in one batch."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from danesync.runtime import STOPPABLE, PassStopped
from tests.sim.machine import LINEAGES, DanesyncWorld
from tests.sim.world import SimPostfix


def test_a_first_pass_reports_every_lineage_read_written_and_probed() -> None:
    world = DanesyncWorld()
    calls: list[tuple[str, int, int]] = []
    service = world.build_service(
        progress=lambda phase, done, total: calls.append((phase, done, total)),
    )
    service.reconcile()
    total = len(LINEAGES)
    assert calls[:total] == [("reading lineages", i, total) for i in range(1, total + 1)]
    deployed = [name for name, s in service.state.lineages.items() if s.deployed]
    assert deployed  # the first pass deployed: its writes and probes were reported
    writes = [c for c in calls if c[0] == "writing chain files"]
    assert writes[-1][1] == writes[-1][2] and len(writes) >= len(deployed)
    assert ("confirming with the probe", len(writes), len(writes)) in calls
    assert any(phase == "running steps" for phase, _, _ in calls)
    # Every report counts up to its total, never past it.
    assert all(1 <= done <= total for _, done, total in calls)


class CountingPostfix(SimPostfix):
    """The simulation's Postfix, counting how chain files are written."""

    def __init__(self, snakeoil: str) -> None:
        super().__init__(snakeoil)
        self.batches: list[set[str]] = []
        self.singles: list[str] = []

    def install_chain_files(self, pems: Mapping[str, bytes]) -> None:
        self.batches.append(set(pems))
        for lineage, pem in pems.items():  # not counted as single writes
            SimPostfix.install_chain_file(self, lineage, pem)

    def install_chain_file(self, lineage: str, pem: bytes) -> None:
        self.singles.append(lineage)
        super().install_chain_file(lineage, pem)


def test_a_deploy_writes_its_chain_files_in_one_batch() -> None:
    world = DanesyncWorld()
    world.postfix = postfix = CountingPostfix(world.snakeoil)
    service = world.build_service()
    service.reconcile()
    deployed = {name for name, s in service.state.lineages.items() if s.deployed}
    assert deployed == set(LINEAGES)
    assert postfix.batches == [deployed] and not postfix.singles


def test_a_file_that_cannot_be_written_fails_its_lineage_alone() -> None:
    world = DanesyncWorld()
    world.postfix = postfix = CountingPostfix(world.snakeoil)
    postfix.fail_write.add("sni1")
    service = world.build_service()
    result = service.reconcile()
    assert result.failed
    deployed = {name for name, s in service.state.lineages.items() if s.deployed}
    assert deployed == set(LINEAGES) - {"sni1"}
    # The batch failed; one at a time said which file (and kept the others).
    # The pass's later rounds try the failed one again.
    assert postfix.batches[0] == set(LINEAGES)
    assert all(batch == {"sni1"} for batch in postfix.batches[1:])
    assert set(postfix.singles) == set(LINEAGES)
    assert "sni1" not in postfix.files
    assert [f.lineage for f in service.state.failures.values()] == ["sni1"]


def test_a_pass_stopped_while_it_reads_changes_nothing() -> None:
    """The daemon ends a reading pass on SIGTERM (loop.py): nothing is half done."""
    world = DanesyncWorld()
    service = world.build_service()
    service.reconcile()  # everything deployed and saved
    saved = json.dumps(world.store.documents, sort_keys=True)
    files = dict(world.postfix.files)
    world._issue("rsa")  # a renewal the next pass would deploy

    def stop(phase: str, done: int, total: int) -> None:
        if phase in STOPPABLE and done == 2:
            raise PassStopped(phase)

    stopping = world.build_service(
        progress=stop,
    )
    with pytest.raises(PassStopped):
        stopping.reconcile()
    assert json.dumps(world.store.documents, sort_keys=True) == saved
    assert world.postfix.files == files
    # Only reading phases may be stopped: a deploy runs to its end.
    assert "writing chain files" not in STOPPABLE
