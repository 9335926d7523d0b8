"""LineageWatcher on real inotify, fed with certbot's exact link sequence."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from danesync.certbot import read_lineage
from danesync.errors import ChainError, LineagePending
from danesync.watcher import Debouncer, LineageWatcher, read_certbot_done
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.lineage import make_lineage, renew, update_links, write_version

pytestmark = pytest.mark.integration

NAME = "mx.example.test"
# How long a report may take. watchdog delivers in milliseconds; the margin is
# for a loaded CI machine, not for the watcher.
PROMPT = 1.0


class Recorder:
    """Collects what the watcher reports, with the time it arrived."""

    def __init__(self) -> None:
        self.changes: list[tuple[float, str]] = []
        self.overflows: list[float] = []
        self._cond = threading.Condition()

    def on_change(self, name: str) -> None:
        with self._cond:
            self.changes.append((time.monotonic(), name))
            self._cond.notify_all()

    def on_overflow(self) -> None:
        with self._cond:
            self.overflows.append(time.monotonic())
            self._cond.notify_all()

    def names(self, since: int = 0) -> set[str]:
        with self._cond:
            return {name for _, name in self.changes[since:]}

    def count(self) -> int:
        with self._cond:
            return len(self.changes)

    def wait_change(self, name: str, since: int, timeout: float = PROMPT) -> float:
        """Time at which `name` was reported after index `since`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for when, seen in self.changes[since:]:
                    if seen == name:
                        return when
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reported = sorted({n for _, n in self.changes[since:]})
                    pytest.fail(f"{name} not reported within {timeout}s (saw {reported})")
                self._cond.wait(remaining)

    def wait_change_after(self, name: str, after: float, timeout: float = PROMPT) -> float:
        """Time of the first report of `name` that arrived after monotonic time `after`."""
        deadline = after + timeout
        with self._cond:
            while True:
                for when, seen in self.changes:
                    if seen == name and when > after:
                        return when
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{name} not reported within {timeout}s")
                self._cond.wait(remaining)

    def wait_overflow(self, since: int, timeout: float = PROMPT) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.overflows) <= since:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"on_overflow not called within {timeout}s")
                self._cond.wait(remaining)

    def quiet(self, seconds: float) -> list[str]:
        """Everything reported during the next `seconds`."""
        start = self.count()
        time.sleep(seconds)
        with self._cond:
            return [name for _, name in self.changes[start:]]


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy()


@pytest.fixture(scope="module")
def leaf(hierarchy: Hierarchy) -> Leaf:
    return hierarchy.issue([NAME])


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "letsencrypt"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watch(config_dir: Path, recorder: Recorder) -> Iterator[LineageWatcher]:
    """A watcher on config_dir/live; create what should exist before using it."""
    watcher = LineageWatcher(config_dir / "live", recorder.on_change, recorder.on_overflow)
    yield watcher
    watcher.stop()


class TestCertbotRenewal:
    """Every step of certbot's link update is reported for the right lineage, promptly."""

    STEP_DELAY = 0.05

    def test_each_step_reported_before_the_next(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        make_lineage(config_dir, "other.example.test", leaf)
        watch.start()
        assert watch.watching_live
        write_version(config_dir, NAME, leaf, 2)
        latencies: dict[str, float] = {}
        # No step of the update can have happened before `not_before`.
        not_before = time.monotonic()

        def between(step: str) -> None:
            nonlocal not_before
            latencies[step] = recorder.wait_change_after(NAME, not_before) - not_before
            # update_links sleeps STEP_DELAY after this returns, then does the next step.
            not_before = time.monotonic() + self.STEP_DELAY

        update_links(config_dir, NAME, 2, delay=self.STEP_DELAY, between=between)
        # 4 previous_ links, 4 unlinks, 4 links, 4 removals: each seen on its own.
        assert len(latencies) == 16
        assert max(latencies.values()) < PROMPT
        assert recorder.names() == {NAME}
        print(f"report latency per step: max {max(latencies.values()) * 1000:.1f} ms")

    def test_last_report_sees_the_finished_lineage(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder
    ) -> None:
        """However fast certbot is, a report follows its last step: a lineage read
        `settle` seconds after the last report is the finished one."""
        live = make_lineage(config_dir, NAME, leaf)
        seen: list[list[str]] = []

        def on_change(name: str) -> None:
            entries = sorted(os.listdir(live))
            seen.append([f"{e}->{os.readlink(live / e)}" for e in entries if e != "README"])
            recorder.on_change(name)

        with LineageWatcher(config_dir / "live", on_change):
            renew(config_dir, NAME, leaf)
            recorder.wait_change(NAME, 0)
            recorder.quiet(0.3)
        assert seen[-1] == [
            f"{kind}.pem->../../archive/{NAME}/{kind}2.pem"
            for kind in ("cert", "chain", "fullchain", "privkey")
        ]


class TestCertbotDone:
    """`read_certbot_done` at every intermediate step of certbot's link sequence:
    never True while the links disagree, and True exactly when certbot is done."""

    def _replay(self, config_dir: Path, leaf: Leaf, version: int) -> list[tuple[str, bool]]:
        live = config_dir / "live"
        seen: list[tuple[str, bool]] = []

        def between(step: str) -> None:
            done = read_certbot_done(live, NAME)
            try:
                files = read_lineage(config_dir, NAME)
            except (LineagePending, ChainError):
                files = None
            if done:
                # What the loop reads when it acts at once: one version, all four.
                assert files is not None, step
                assert files.version == version, step
                assert files.cert == leaf.cert_pem
                assert files.fullchain.startswith(files.cert)
            seen.append((step, done))

        write_version(config_dir, NAME, leaf, version)
        update_links(config_dir, NAME, version, between=between)
        return seen

    def test_new_lineage(self, config_dir: Path, leaf: Leaf) -> None:
        seen = self._replay(config_dir, leaf, 1)
        # link cert, privkey, chain, fullchain: done only after the fourth.
        assert [done for _, done in seen] == [False, False, False, True]

    def test_renewal(self, config_dir: Path, hierarchy: Hierarchy, leaf: Leaf) -> None:
        make_lineage(config_dir, NAME, leaf)
        assert read_certbot_done(config_dir / "live", NAME)
        renewed = hierarchy.issue([NAME])
        seen = self._replay(config_dir, renewed, 2)
        assert len(seen) == 16
        assert [step for step, done in seen if done] == ["remove previous_fullchain.pem"]

    def test_second_renewal_back_to_back(self, config_dir: Path, hierarchy: Hierarchy) -> None:
        first, second = hierarchy.issue([NAME]), hierarchy.issue([NAME])
        make_lineage(config_dir, NAME, first)
        assert [s for s, done in self._replay(config_dir, second, 2) if done] == [
            "remove previous_fullchain.pem"
        ]
        assert [s for s, done in self._replay(config_dir, first, 3) if done] == [
            "remove previous_fullchain.pem"
        ]

    def test_not_a_lineage(self, config_dir: Path) -> None:
        assert not read_certbot_done(config_dir / "live", "missing.example.test")

    def test_the_loop_reads_only_the_finished_lineage(
        self, config_dir: Path, hierarchy: Hierarchy, leaf: Leaf
    ) -> None:
        """What loop.py does with each report: touch the debouncer with
        `read_certbot_done`. With a settle far longer than the replay, the
        lineage falls due exactly once, after certbot's last step."""
        make_lineage(config_dir, NAME, leaf)
        renewed = hierarchy.issue([NAME])
        write_version(config_dir, NAME, renewed, 2)
        debouncer = Debouncer(3600.0)
        now = [0.0]
        due_at: list[str] = []

        def between(step: str) -> None:
            now[0] += 0.001
            debouncer.touch(NAME, now[0], done=read_certbot_done(config_dir / "live", NAME))
            if debouncer.due(now[0]):
                due_at.append(step)
                files = read_lineage(config_dir, NAME)
                assert files.version == 2
                assert files.cert == renewed.cert_pem

        update_links(config_dir, NAME, 2, between=between)
        assert due_at == ["remove previous_fullchain.pem"]


class TestNewLineages:
    """Directories that appear later are watched too."""

    def test_new_lineage_directory(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        watch.start()
        make_lineage(config_dir, "new.example.test", leaf)
        recorder.wait_change("new.example.test", 0)
        since = recorder.count()
        renew(config_dir, "new.example.test", leaf)
        recorder.wait_change("new.example.test", since)
        assert recorder.names() == {"new.example.test"}

    def test_live_created_after_start(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        config_dir.mkdir()
        watch.start()
        assert not watch.watching_live
        make_lineage(config_dir, NAME, leaf)
        recorder.wait_change(NAME, 0)
        assert watch.watching_live
        since = recorder.count()
        renew(config_dir, NAME, leaf)
        recorder.wait_change(NAME, since)

    def test_config_dir_created_after_start(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        watch.start()
        make_lineage(config_dir, NAME, leaf)
        recorder.wait_change(NAME, 0)
        assert watch.watching_live

    def test_lineages_made_before_live_was_watched_are_reported(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        # live/ with lineages appears in one rename: no per-lineage event ever happens.
        staging = config_dir / "staging"
        make_lineage(staging, "a.example.test", leaf)
        make_lineage(staging, "b.example.test", leaf)
        watch.start()
        (staging / "live").rename(config_dir / "live")
        recorder.wait_change("a.example.test", 0)
        recorder.wait_change("b.example.test", 0)

    def test_symlinked_config_dir(self, tmp_path: Path, leaf: Leaf, recorder: Recorder) -> None:
        real = tmp_path / "srv-letsencrypt"
        make_lineage(real, NAME, leaf)
        link = tmp_path / "etc-letsencrypt"
        link.symlink_to(real)
        with LineageWatcher(link / "live", recorder.on_change, recorder.on_overflow):
            renew(real, NAME, leaf)
            recorder.wait_change(NAME, 0)


class TestLiveReplaced:
    """When live/ goes away or is swapped, the loop is told to reconcile everything."""

    def test_removed_and_recreated(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        watch.start()
        shutil.rmtree(config_dir / "live")
        recorder.wait_overflow(0)
        assert not watch.watching_live
        since = recorder.count()
        make_lineage(config_dir, NAME, leaf)
        recorder.wait_change(NAME, since)
        assert watch.watching_live
        since = recorder.count()
        renew(config_dir, NAME, leaf)
        recorder.wait_change(NAME, since)

    def test_swapped_by_rename(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        staging = config_dir.parent / "restore"
        make_lineage(staging, "restored.example.test", leaf)
        watch.start()
        (config_dir / "live").rename(config_dir / "live.old")
        (staging / "live").rename(config_dir / "live")
        recorder.wait_overflow(0)
        recorder.wait_change("restored.example.test", 0)
        # The old directory is no longer ours; the new one is.
        since = recorder.count()
        update_links(config_dir, "restored.example.test", 1)
        recorder.wait_change("restored.example.test", since)
        recorder.quiet(0.2)
        (config_dir / "live.old" / NAME / "README").write_text("old")
        assert recorder.quiet(0.3) == []


class TestNotAChange:
    """Reads, and certbot's live/README, are not changes of a lineage."""

    def test_reading_a_lineage(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        live = make_lineage(config_dir, NAME, leaf)
        watch.start()
        for _ in range(3):
            for kind in ("cert", "privkey", "chain", "fullchain"):
                (live / f"{kind}.pem").read_bytes()
                os.readlink(live / f"{kind}.pem")
            os.listdir(live)
            os.listdir(live.parent)
        assert recorder.quiet(0.3) == []

    def test_live_readme(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        live = make_lineage(config_dir, NAME, leaf)
        watch.start()
        (live.parent / "README").write_text("certbot's note")
        assert recorder.quiet(0.3) == []
        (live / "README").write_text("per-lineage note")
        recorder.wait_change(NAME, 0)

    def test_other_certbot_directories(
        self, config_dir: Path, leaf: Leaf, recorder: Recorder, watch: LineageWatcher
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        watch.start()
        write_version(config_dir, NAME, leaf, 7)
        (config_dir / "renewal" / f"{NAME}.conf").write_text("changed\n")
        (config_dir / ".certbot.lock").write_text("")
        assert recorder.quiet(0.3) == []


class TestRobustness:
    """The watcher survives its callbacks and reports what it cannot see."""

    def test_callback_exception_is_logged_and_watching_continues(
        self, config_dir: Path, leaf: Leaf
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        recorder = Recorder()
        calls = []

        def flaky(name: str) -> None:
            calls.append(name)
            if len(calls) == 1:
                raise RuntimeError("bug in the loop")
            recorder.on_change(name)

        with capture_logs() as logs, LineageWatcher(config_dir / "live", flaky) as watcher:
            renew(config_dir, NAME, leaf)
            recorder.wait_change(NAME, 0)
            assert watcher.alive()
        failures = [e for e in logs if e["event"] == "watcher.failed"]
        assert failures
        assert failures[0]["lineage"] == NAME
        assert "bug in the loop" in failures[0]["reason"]

    def test_error_in_the_watcher_is_logged_and_reported(
        self,
        config_dir: Path,
        leaf: Leaf,
        recorder: Recorder,
        watch: LineageWatcher,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        watch.start()
        original = watch._lineage_of
        failed = []

        def buggy(path: str, is_directory: bool) -> str | None:
            if not failed:
                failed.append(path)
                raise KeyError("a bug")
            return original(path, is_directory)

        monkeypatch.setattr(watch, "_lineage_of", buggy)
        with capture_logs() as logs:
            renew(config_dir, NAME, leaf)
            recorder.wait_overflow(0)
            recorder.wait_change(NAME, 0)
        assert watch.alive()
        assert any(e["event"] == "watcher.failed" and "a bug" in e["reason"] for e in logs)

    @pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
    def test_dead_watchdog_thread_is_reported_and_a_restart_recovers(
        self,
        config_dir: Path,
        leaf: Leaf,
        recorder: Recorder,
        watch: LineageWatcher,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        make_lineage(config_dir, NAME, leaf)
        watch.start()

        class Fatal(BaseException):
            """Not an Exception: nothing in the watcher catches it."""

        def fatal(path: str, is_directory: bool) -> str | None:
            raise Fatal("watchdog thread killed")

        monkeypatch.setattr(watch, "_lineage_of", fatal)
        with capture_logs() as logs:
            renew(config_dir, NAME, leaf)
            recorder.wait_overflow(0)
        assert any("died" in e.get("reason", "") for e in logs if e["event"] == "watcher.failed")
        deadline = time.monotonic() + PROMPT
        while watch.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not watch.alive()
        # What the loop does after a reported failure: a fresh watcher.
        monkeypatch.undo()
        watch.stop()
        watch.start()
        renew(config_dir, NAME, leaf)
        recorder.wait_change(NAME, 0)

    def test_stop(self, config_dir: Path, leaf: Leaf, recorder: Recorder) -> None:
        make_lineage(config_dir, NAME, leaf)
        watcher = LineageWatcher(config_dir / "live", recorder.on_change)
        watcher.start()
        assert watcher.alive()
        with pytest.raises(RuntimeError, match="already started"):
            watcher.start()
        watcher.stop()
        assert not watcher.alive()
        renew(config_dir, NAME, leaf)
        assert recorder.quiet(0.3) == []
        watcher.stop()  # twice is fine
        # and it can start again
        watcher.start()
        renew(config_dir, NAME, leaf)
        recorder.wait_change(NAME, 0)
        watcher.stop()

    @pytest.mark.slow
    def test_inotify_queue_overflow(self, leaf: Leaf, recorder: Recorder) -> None:
        """A real IN_Q_OVERFLOW: the kernel queue (16384 events by default) fills
        while watchdog's reader thread cannot run, because this thread holds the GIL."""
        max_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        if max_events > 100_000:
            pytest.skip(f"fs.inotify.max_queued_events is {max_events}: too many to fill")
        # On tmpfs the flood takes a fraction of a second; on a busy ext4 the
        # journal can stall it for seconds, past the time the GIL is held.
        shm = Path("/dev/shm")
        base = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
        try:
            lineage_dir = make_lineage(base / "letsencrypt", NAME, leaf)
            with LineageWatcher(
                base / "letsencrypt" / "live", recorder.on_change, recorder.on_overflow
            ) as watcher:
                assert watcher.reports_overflow
                for attempt in range(3):
                    _flood(lineage_dir, rounds=max_events + 1000)
                    if recorder.overflows or attempt == 2:
                        break
                # The overflow is reported after watchdog has read the 16,384
                # queued events before it: seconds on a loaded machine (CI at load 9).
                recorder.wait_overflow(0, timeout=20)
                # Watching goes on after the overflow.
                since = recorder.count()
                renew(base / "letsencrypt", NAME, leaf)
                recorder.wait_change(NAME, since)
        finally:
            shutil.rmtree(base)


@pytest.mark.slow
class TestManyLineages:
    """Reading every lineage of a big live/ (what a full pass does) makes no event
    at all: with opens and closes in the inotify mask, 10,000 lineages overflowed
    the kernel queue (16,384 events) at every pass, and every overflow asked for
    another full pass."""

    LINEAGES = 10_000

    def test_reading_all_lineages_makes_no_event(self, recorder: Recorder) -> None:
        shm = Path("/dev/shm")
        base = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() else None))
        try:
            live = base / "letsencrypt" / "live"
            live.mkdir(parents=True)
            names = [f"mx{i}.example.test" for i in range(self.LINEAGES)]
            for name in names:
                (live / name).mkdir()
                for kind in ("cert", "privkey", "chain", "fullchain"):
                    os.symlink(f"../../archive/{name}/{kind}1.pem", live / name / f"{kind}.pem")
            with LineageWatcher(live, recorder.on_change, recorder.on_overflow) as watcher:
                assert watcher.reports_overflow
                for _ in range(2):
                    for name in names:
                        os.listdir(live / name)
                        assert read_certbot_done(live, name)
                        with contextlib.suppress(OSError):
                            (live / name / "cert.pem").read_bytes()  # dangling: opens nothing
                    os.listdir(live)
                time.sleep(0.5)
                assert recorder.overflows == []
                assert recorder.changes == []
                # and it still sees certbot
                os.symlink("x", live / names[-1] / "previous_cert.pem")
                recorder.wait_change(names[-1], 0, timeout=5)
        finally:
            shutil.rmtree(base)


def _flood(directory: Path, rounds: int) -> None:
    """2 * `rounds` inotify events from another process while this one holds the GIL."""
    code = (
        "import os, sys\n"
        "link = os.path.join(sys.argv[1], 'flood')\n"
        "sys.stdin.read(1)\n"
        f"for _ in range({rounds}):\n"
        "    os.symlink('x', link)\n"
        "    os.unlink(link)\n"
        "print('done', flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    start = time.perf_counter()
    sum(range(1_000_000))
    per_million = time.perf_counter() - start
    process.stdin.write(b"x")
    process.stdin.flush()
    # sum() over a range is one C call: no other thread can take the GIL meanwhile.
    sum(range(int(1_000_000 * 1.5 / per_million)))
    assert process.stdout.readline() == b"done\n"
    assert process.wait() == 0
    time.sleep(0.5)  # let the reader drain the queue and meet the overflow record
