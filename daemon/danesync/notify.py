"""Tell systemd how the daemon is doing (``Type=notify``, sd_notify(3)).

A notification is one datagram of ``KEY=value`` lines sent to the unix socket
named by ``$NOTIFY_SOCKET``. systemd-python's `systemd.daemon.notify` sends it
when installed; otherwise this module sends the datagram itself. Without
``$NOTIFY_SOCKET`` (not started by systemd) every call does nothing. A failed
send is logged and otherwise ignored: the mail server matters more than the
status line.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from danesync.log import get_logger

log = get_logger()

NotifyFunction = Callable[[str], bool]


def build_notify_message(fields: Mapping[str, str]) -> str:
    """The datagram text: one ``KEY=value`` per line; values kept to one line."""
    lines = []
    for key, value in fields.items():
        one_line = " ".join(str(value).split("\n")).replace("\r", " ")
        lines.append(f"{key}={one_line}")
    return "\n".join(lines)


def build_watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None.

    None when the watchdog is off or meant for another process (``$WATCHDOG_PID``).
    """
    watchdog_pid = environ.get("WATCHDOG_PID", "").strip()
    if watchdog_pid and watchdog_pid != str(pid):
        return None
    usec = environ.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) == 0:
        return None
    return int(usec) / 1_000_000 / 2


def watchdog_interval() -> float | None:
    """`build_watchdog_interval` for this process."""
    return build_watchdog_interval(os.environ, os.getpid())


def socket_address(notify_socket: str) -> str | bytes | None:
    """The `connect` address for ``$NOTIFY_SOCKET``: ``@name`` is an abstract socket."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    if notify_socket.startswith("/"):
        return notify_socket
    return None  # vsock: and others need libsystemd


def send_raw(message: str) -> bool:
    """Send `message` to ``$NOTIFY_SOCKET`` without libsystemd; False if it is unset."""
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if not notify_socket:
        return False
    address = socket_address(notify_socket)
    if address is None:
        raise OSError(f"NOTIFY_SOCKET={notify_socket!r}: unsupported address")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def _library_notify() -> NotifyFunction | None:
    try:
        import systemd.daemon
    except ImportError:
        return None

    def send(message: str) -> bool:
        return bool(systemd.daemon.notify(message))

    return send


class Notifier:
    """The daemon's side of ``Type=notify``.

    `use_library`: None picks systemd-python when importable, True requires it,
    False always speaks the socket protocol directly.
    """

    def __init__(self, use_library: bool | None = None) -> None:
        library = _library_notify() if use_library is not False else None
        if use_library and library is None:
            raise ImportError("systemd-python is not installed")
        self._send: NotifyFunction = library or send_raw
        self.backend = "systemd-python" if library else "socket"

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket."""
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def notify(self, **fields: str) -> bool:
        """Send `fields`; True if a datagram went out."""
        if not self.enabled:
            return False
        message = build_notify_message(fields)
        try:
            return self._send(message)
        except OSError as error:
            log.warning("notify.failed", reason=str(error), message=message)
            return False

    def ready(self, status: str | None = None) -> bool:
        """Startup or reload is finished."""
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        """The one-line summary `systemctl status` shows."""
        return self.notify(STATUS=text)

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload begins; follow with `ready`.

        systemd >= 253 wants the CLOCK_MONOTONIC time with it; older ones ignore it.
        """
        fields = {
            "RELOADING": "1",
            "MONOTONIC_USEC": str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000),
        }
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown begins."""
        fields = {"STOPPING": "1"}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def watchdog(self) -> bool:
        """Keep-alive ping; send every `watchdog_interval()` seconds."""
        return self.notify(WATCHDOG="1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before systemd gives up on start or stop."""
        return self.notify(EXTEND_TIMEOUT_USEC=str(int(seconds * 1_000_000)))


START_EXTENSION = 60.0  # seconds a starting daemon may go without progress (at least)
PROGRESS_EVERY = 1.0  # seconds between two reports from inside a pass (at most this often)


class Keepalive:
    """A pass's progress hook (`Runtime.progress`) that keeps systemd waiting.

    Called after every lineage of a pass's long loops; acts at most every
    `PROGRESS_EVERY` seconds (or every `ping_every`, if shorter): a
    ``WATCHDOG=1`` ping when the watchdog is on, and while the daemon is still
    starting (before ``READY=1``) ``EXTEND_TIMEOUT_USEC`` and a ``STATUS`` with
    how far the first pass is. A pass that stops making progress (a hung
    query, a wedged subprocess) stops the pings: the watchdog still catches it.
    `clock`: seconds, monotonic (injected for the tests).
    """

    def __init__(
        self,
        notifier: Notifier,
        ping_every: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.ping_every = ping_every
        self.clock = clock
        self.starting = True
        self.every = min(PROGRESS_EVERY, ping_every) if ping_every else PROGRESS_EVERY
        # A start may stall as long as a running daemon may go between pings
        # (WatchdogSec), and never less than a minute: one step (a DNS batch,
        # a reload) is bounded well below that.
        self.extension = max(START_EXTENSION, 2 * ping_every if ping_every else 0.0)
        self._next: float | None = None

    def started(self) -> None:
        """READY=1 is out: from now on only watchdog pings."""
        self.starting = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if self._next is not None and now < self._next:
            return
        self._next = now + self.every
        fields: dict[str, str] = {}
        if self.ping_every:
            fields["WATCHDOG"] = "1"
        if self.starting:
            fields["EXTEND_TIMEOUT_USEC"] = str(int(self.extension * 1_000_000))
            fields["STATUS"] = f"first pass: {phase} {done}/{total}"
        if fields:  # one datagram
            self.notifier.notify(**fields)
