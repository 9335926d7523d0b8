"""Process-wide hooks into watchdog that danesync.watcher's watchers listen to.

watchdog hides two ways of losing events: the kernel's inotify queue
overflow and a watchdog thread dying of an exception. Both are caught here,
once per process, and reported to every running `LineageWatcher` (its
``on_overflow``: reconcile everything).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from watchdog.utils import BaseThread

from danesync.log import get_logger

log = get_logger()

OverflowCallback = Callable[[], None]

_IN_Q_OVERFLOW = 0x4000

# watchdog drops the kernel's IN_Q_OVERFLOW record (wd -1) without telling
# its users (up to 6.x; 7.x only logs it). The only place to see it is the
# static method that parses the raw buffer, so it is wrapped once per process
# and reports to every running watcher. A dying watchdog thread is reported
# the same way.
_overflow_lock = threading.Lock()
_overflow_listeners: dict[int, OverflowCallback] = {}
_overflow_hook: bool | None = None


def _notify_overflow() -> None:
    with _overflow_lock:
        listeners = list(_overflow_listeners.values())
    for listener in listeners:
        listener()


def install_overflow_hook() -> bool:
    """Make watchdog's inotify parser report overflow; False if this watchdog has none."""
    global _overflow_hook  # noqa: PLW0603 - one hook per process
    with _overflow_lock:
        if _overflow_hook is not None:
            return _overflow_hook
        _overflow_hook = False
        try:
            from watchdog.observers import inotify_c  # Linux only
        except ImportError:
            return False
        # InotifyFD in watchdog >= 7, Inotify before.
        owner = getattr(inotify_c, "InotifyFD", None) or getattr(inotify_c, "Inotify", None)
        parse = getattr(owner, "_parse_event_buffer", None)
        if owner is None or parse is None:
            return False

        def parse_reporting_overflow(event_buffer: bytes) -> Iterator[Any]:
            for record in parse(event_buffer):
                if record[0] == -1 and record[1] & _IN_Q_OVERFLOW:
                    _notify_overflow()
                yield record

        setattr(owner, "_parse_event_buffer", staticmethod(parse_reporting_overflow))  # noqa: B010
        _overflow_hook = True
        return True


_last_death: list[BaseException | None] = [None]


def install_thread_death_hook() -> None:
    """Report a watchdog thread that dies of an exception as lost events.

    watchdog's reader and dispatch threads end silently on an unexpected
    error, and with them all watching; `threading.excepthook` is the one
    place that sees it. Installed again if something replaced it since.
    """
    with _overflow_lock:
        previous = threading.excepthook
        if getattr(previous, "_danesync_watcher", False):
            return

        def hook(args: threading.ExceptHookArgs) -> None:
            # A chain of hooks may hold this one twice: report each death once.
            if (
                isinstance(args.thread, BaseThread)
                and _overflow_listeners
                and args.exc_value is not _last_death[0]
            ):
                _last_death[0] = args.exc_value
                name = args.thread.name if args.thread is not None else "?"
                log.error(
                    "watcher.failed", reason=f"watchdog thread {name} died: {args.exc_value!r}"
                )
                _notify_overflow()
            previous(args)

        hook._danesync_watcher = True  # type: ignore[attr-defined]
        threading.excepthook = hook


def add_overflow_listener(key: int, listener: OverflowCallback) -> None:
    """Report lost events to `listener` (one per running watcher, by `key`)."""
    with _overflow_lock:
        _overflow_listeners[key] = listener


def remove_overflow_listener(key: int) -> None:
    with _overflow_lock:
        _overflow_listeners.pop(key, None)
