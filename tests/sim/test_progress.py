"""A pass reports its progress to the hook after every lineage of its long loops
(Runtime.progress): the daemon turns it into systemd's watchdog pings."""

from __future__ import annotations

from danesync.service import Service
from tests.sim.machine import LINEAGES, DanesyncWorld


def test_a_first_pass_reports_every_lineage_read_written_and_probed() -> None:
    world = DanesyncWorld()
    calls: list[tuple[str, int, int]] = []
    service = Service(
        world.config,
        postfix=world.postfix,
        dns=world.dns,
        lineages=world.lineages,
        store=world.store,
        clock=world.clock,
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
