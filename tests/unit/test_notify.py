"""systemd notifications, received on a real unix datagram socket as systemd would."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from danesync.notify import (
    Notifier,
    build_notify_message,
    build_watchdog_interval,
    socket_address,
)

BACKENDS = [True, False]
BACKEND_IDS = ["systemd-python", "raw-socket"]


def _has_systemd_python() -> bool:
    try:
        import systemd.daemon  # noqa: F401
    except ImportError:
        return False
    return True


class Receiver:
    """The systemd end: a bound datagram socket that also reports the sender's pid."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(2)

    def receive(self) -> tuple[dict[str, str], int | None]:
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        return fields, pid

    def assert_empty(self) -> None:
        self.sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            self.sock.recv(4096)


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ds-notify-") as directory:
        path = Path(directory) / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            yield Receiver(sock)


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    name = f"danesync-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        yield Receiver(sock)


def make_notifier(use_library: bool) -> Notifier:
    if use_library and not _has_systemd_python():
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-python is not installed (make deps / make venv install it)")
        pytest.skip("systemd-python is not installed")
    notifier = Notifier(use_library=use_library)
    assert notifier.backend == ("systemd-python" if use_library else "socket")
    return notifier


class TestBuildNotifyMessage:
    """The datagram text."""

    def test_fields_one_per_line(self) -> None:
        assert build_notify_message({"READY": "1", "STATUS": "ok"}) == "READY=1\nSTATUS=ok"

    def test_newlines_in_a_value_cannot_inject_fields(self) -> None:
        message = build_notify_message({"STATUS": "two\nREADY=1\r"})
        assert message.split("\n") == ["STATUS=two READY=1 "]


class TestWatchdogInterval:
    """Half of $WATCHDOG_USEC, for this process only."""

    def test_half_the_interval(self) -> None:
        assert build_watchdog_interval({"WATCHDOG_USEC": "20000000"}, 42) == 10.0

    def test_for_this_pid(self) -> None:
        env = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}
        assert build_watchdog_interval(env, 42) == 1.5

    def test_for_another_pid(self) -> None:
        env = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "41"}
        assert build_watchdog_interval(env, 42) is None

    @pytest.mark.parametrize("value", ["", "0", "abc", "-5"])
    def test_off(self, value: str) -> None:
        assert build_watchdog_interval({"WATCHDOG_USEC": value}, 42) is None

    def test_unset(self) -> None:
        assert build_watchdog_interval({}, 42) is None


class TestSocketAddress:
    """$NOTIFY_SOCKET forms."""

    def test_abstract(self) -> None:
        assert socket_address("@systemd/notify") == b"\0systemd/notify"

    def test_path(self) -> None:
        assert socket_address("/run/systemd/notify") == "/run/systemd/notify"

    def test_unsupported(self) -> None:
        assert socket_address("vsock:2:1234") is None


@pytest.mark.parametrize("use_library", BACKENDS, ids=BACKEND_IDS)
class TestNotifier:
    """Every message arrives, from our own pid, through both backends."""

    def test_ready_with_status(self, use_library: bool, path_socket: Receiver) -> None:
        assert make_notifier(use_library).ready("1 lineage, 0 pending")
        fields, pid = path_socket.receive()
        assert fields == {"READY": "1", "STATUS": "1 lineage, 0 pending"}
        assert pid == os.getpid()

    def test_status(self, use_library: bool, path_socket: Receiver) -> None:
        assert make_notifier(use_library).status("waiting for TLSA")
        assert path_socket.receive()[0] == {"STATUS": "waiting for TLSA"}

    def test_watchdog(self, use_library: bool, path_socket: Receiver) -> None:
        assert make_notifier(use_library).watchdog()
        assert path_socket.receive()[0] == {"WATCHDOG": "1"}

    def test_reloading_carries_monotonic_time(
        self, use_library: bool, path_socket: Receiver
    ) -> None:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert make_notifier(use_library).reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields, _ = path_socket.receive()
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= after

    def test_reload_sequence(self, use_library: bool, path_socket: Receiver) -> None:
        notifier = make_notifier(use_library)
        notifier.reloading("reloading configuration")
        notifier.ready("reloaded")
        first, _ = path_socket.receive()
        second, _ = path_socket.receive()
        assert first["RELOADING"] == "1"
        assert first["STATUS"] == "reloading configuration"
        assert second == {"READY": "1", "STATUS": "reloaded"}

    def test_stopping(self, use_library: bool, path_socket: Receiver) -> None:
        assert make_notifier(use_library).stopping("SIGTERM")
        assert path_socket.receive()[0] == {"STOPPING": "1", "STATUS": "SIGTERM"}

    def test_extend_timeout(self, use_library: bool, path_socket: Receiver) -> None:
        assert make_notifier(use_library).extend_timeout(1.5)
        assert path_socket.receive()[0] == {"EXTEND_TIMEOUT_USEC": "1500000"}

    def test_abstract_socket(self, use_library: bool, abstract_socket: Receiver) -> None:
        assert make_notifier(use_library).ready()
        fields, pid = abstract_socket.receive()
        assert fields == {"READY": "1"}
        assert pid == os.getpid()

    def test_no_socket_is_a_no_op(self, use_library: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        notifier = make_notifier(use_library)
        assert not notifier.enabled
        assert notifier.ready("x") is False
        assert notifier.watchdog() is False

    def test_unreachable_socket_is_logged_not_raised(
        self, use_library: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
        with capture_logs() as logs:
            assert make_notifier(use_library).ready("x") is False
        assert [entry["event"] for entry in logs] == ["notify.failed"]
        assert logs[0]["log_level"] == "warning"

    def test_nothing_else_is_sent(self, use_library: bool, path_socket: Receiver) -> None:
        make_notifier(use_library).watchdog()
        path_socket.receive()
        path_socket.assert_empty()
