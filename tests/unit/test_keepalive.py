"""The progress hook of a long pass (notify.Keepalive), on a fake clock.

At 10,000 lineages a first pass takes minutes (docs/benchmarks.md): systemd
kills a start that says nothing for TimeoutStartSec (90 s) and a daemon that
does not ping within WatchdogSec. The pass calls the hook after every
lineage; the hook speaks at most every second (or every half watchdog period).
"""

from __future__ import annotations

import itertools

from danesync.notify import Keepalive, Notifier


class Recorder(Notifier):
    """A notifier that keeps what it would send, stamped with the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(use_library=False)
        self.clock = clock
        self.sent: list[tuple[float, dict[str, str]]] = []

    def notify(self, **fields: str) -> bool:
        self.sent.append((self.clock(), fields))
        return True

    def times(self, key: str) -> list[float]:
        return [at for at, fields in self.sent if key in fields]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TICK = 1 / 64  # seconds per lineage: exact in binary, so the sums below are exact


def drive(keepalive: Keepalive, clock: FakeClock, total: int, cost: float = TICK) -> None:
    """A pass over `total` lineages, each taking `cost` seconds."""
    for done in range(1, total + 1):
        clock.now += cost
        keepalive("reading lineages", done, total)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


class TestKeepalive:
    def test_pings_every_half_watchdog_period_however_often_it_is_called(self) -> None:
        clock = FakeClock()
        notifier = Recorder(clock)
        keepalive = Keepalive(notifier, ping_every=0.5, clock=clock)
        drive(keepalive, clock, total=640)  # a 10 s pass, 640 calls
        pings = notifier.times("WATCHDOG")
        assert pings[0] == 1000 + TICK  # the first call speaks at once
        assert gaps(pings) == [0.5] * 19  # never later, and never more often

    def test_at_most_every_second_with_systemds_watchdog(self) -> None:
        """WatchdogSec=120s (ping every 60 s): still one report a second, not one a minute."""
        clock = FakeClock()
        notifier = Recorder(clock)
        keepalive = Keepalive(notifier, ping_every=60.0, clock=clock)
        drive(keepalive, clock, total=640)
        assert gaps(notifier.times("WATCHDOG")) == [1.0] * 9

    def test_a_slow_lineage_is_reported_as_soon_as_it_is_done(self) -> None:
        clock = FakeClock()
        notifier = Recorder(clock)
        keepalive = Keepalive(notifier, ping_every=0.5, clock=clock)
        drive(keepalive, clock, total=3, cost=0.25)
        clock.now += 5.0  # one lineage takes 5 s
        keepalive("writing chain files", 1, 2)
        keepalive("writing chain files", 2, 2)
        assert notifier.sent[-1] == (
            clock.now,
            {
                "WATCHDOG": "1",
                "EXTEND_TIMEOUT_USEC": "60000000",
                "STATUS": "first pass: writing chain files 1/2",
            },
        )

    def test_starting_extends_the_start_timeout_and_says_how_far(self) -> None:
        clock = FakeClock()
        notifier = Recorder(clock)
        keepalive = Keepalive(notifier, ping_every=60.0, clock=clock)  # WatchdogSec=120s
        drive(keepalive, clock, total=192)
        extensions = [fields for _, fields in notifier.sent if "EXTEND_TIMEOUT_USEC" in fields]
        assert len(extensions) == 3
        # As long as a running daemon may go without a ping: WatchdogSec.
        assert {f["EXTEND_TIMEOUT_USEC"] for f in extensions} == {"120000000"}
        assert [f["STATUS"] for f in extensions] == [
            "first pass: reading lineages 1/192",
            "first pass: reading lineages 65/192",
            "first pass: reading lineages 129/192",
        ]

    def test_after_ready_only_watchdog_pings(self) -> None:
        clock = FakeClock()
        notifier = Recorder(clock)
        keepalive = Keepalive(notifier, ping_every=0.5, clock=clock)
        keepalive.started()
        drive(keepalive, clock, total=192)
        assert len(notifier.sent) == 6
        assert all(fields == {"WATCHDOG": "1"} for _, fields in notifier.sent)

    def test_without_a_watchdog_a_start_is_still_extended(self) -> None:
        clock = FakeClock()
        notifier = Recorder(clock)
        keepalive = Keepalive(notifier, ping_every=None, clock=clock)
        drive(keepalive, clock, total=192)
        assert notifier.times("EXTEND_TIMEOUT_USEC") == [1000 + TICK, 1001 + TICK, 1002 + TICK]
        assert not notifier.times("WATCHDOG")
        assert notifier.sent[0][1]["EXTEND_TIMEOUT_USEC"] == "60000000"
        keepalive.started()
        drive(keepalive, clock, total=192)
        assert len(notifier.sent) == 3  # nothing to say once started without a watchdog
