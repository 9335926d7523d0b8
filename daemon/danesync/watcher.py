"""Watch certbot's ``live/`` directory and say which lineage changed.

certbot rewrites a lineage by adding ``previous_*.pem`` links, then unlinking
and re-linking cert, privkey, chain and fullchain one at a time, then removing
the ``previous_*`` links. For symlinks inotify reports IN_CREATE and IN_DELETE
on the directory (no IN_MODIFY, no IN_CLOSE_WRITE: a symlink is never
opened), so every step reaches the watcher as an event under
``live/<name>/``. The watcher only names the lineage, at once. The loop then
asks `read_certbot_done`: certbot is finished with a lineage when its four
links point at one archive version and no ``previous_*`` link remains, and
the lineage is read at once. Any other state waits until the lineage has
been quiet for ``settle`` seconds (`Debouncer`): the fallback for writers
that are not certbot.

Only the events certbot's updates make are asked of the kernel (created,
deleted, moved): not opens and closes, which our own reads of 10,000
lineages would turn into a flood that overflows the inotify queue.

``live/`` may not exist yet (certbot creates it with the first certificate)
or may be removed: the watcher then watches the nearest existing parent and
re-attaches when ``live/`` appears, reporting every lineage found in it.
When events may have been lost (inotify queue overflow, ``live/`` removed or
replaced) it calls ``on_overflow`` so the loop runs a full reconcile.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from danesync.debounce import Debouncer, read_certbot_done
from danesync.errors import WatchError
from danesync.log import get_logger
from danesync.watchhooks import (
    OverflowCallback,
    add_overflow_listener,
    install_overflow_hook,
    install_thread_death_hook,
    remove_overflow_listener,
)

log = get_logger()

__all__ = ["Debouncer", "LineageWatcher", "read_certbot_done"]

ChangeCallback = Callable[[str], None]

# Reads (ours included) must not look like changes: watchdog >= 5 reports opens.
_IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write"})
_STRUCTURAL_EVENT_TYPES = frozenset({"created", "deleted", "moved"})
# certbot writes live/README once; it is not a lineage.
_NOT_LINEAGES = frozenset({"README"})

# What certbot's link updates (and live/ appearing or being replaced) make.
# watchdog >= 4 passes this on to inotify_add_watch; older ones never ask
# for opens.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    DirCreatedEvent,
    FileCreatedEvent,
    DirDeletedEvent,
    FileDeletedEvent,
    DirMovedEvent,
    FileMovedEvent,
]


def _fspath(path: bytes | str) -> str:
    return os.fsdecode(path)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: LineageWatcher) -> None:
        super().__init__()
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher._handle(event)
        except Exception as error:
            # Raising here would end watchdog's dispatch thread and all watching.
            log.error("watcher.failed", reason=repr(error))
            self._watcher._overflowed()


class LineageWatcher:
    """Calls ``on_change(name)`` for every change under ``live_dir/<name>/``.

    ``on_overflow()`` means "events may have been lost, reconcile everything":
    an inotify queue overflow, ``live/`` removed or replaced, or a failure
    inside watchdog (then `alive()` may be False: `stop()` and `start()`).

    Callbacks run on watchdog's threads: they must be quick and thread-safe
    (put the name on a queue) and must not call `stop()`. Start the watcher
    before the first full reconcile so that nothing falls between the two.
    A symlink in the path of ``live_dir`` is resolved when the watches are
    set up.
    """

    def __init__(
        self,
        live_dir: Path,
        on_change: ChangeCallback,
        on_overflow: OverflowCallback | None = None,
    ) -> None:
        self.live_dir = Path(os.path.abspath(live_dir))
        self._on_change = on_change
        self._on_overflow = on_overflow
        self._lock = threading.RLock()
        self._handler = _Handler(self)
        self._observer: BaseObserver | None = None
        # (path, recursive) -> the watch and the directory's identity when it was made
        self._watches: dict[tuple[str, bool], tuple[ObservedWatch, tuple[int, int] | None]] = {}
        self._root = self.live_dir
        self._stopping = False
        self._overflow_hook = False
        self._filtered = False

    @property
    def watching_live(self) -> bool:
        """True while ``live/`` itself is watched (not waiting for it to appear)."""
        with self._lock:
            return (str(self._root), True) in self._watches

    @property
    def reports_overflow(self) -> bool:
        """False when this watchdog gives no way to see an inotify queue overflow."""
        return self._overflow_hook

    def start(self) -> None:
        """Start watching; raises `WatchError` if inotify refuses (limits, permissions)."""
        with self._lock:
            if self._observer is not None:
                raise RuntimeError("watcher already started")
            self._stopping = False
            self._overflow_hook = install_overflow_hook()
            install_thread_death_hook()
            if not self._overflow_hook:
                log.warning(
                    "watcher.overflow_unreported",
                    reason="this watchdog hides inotify queue overflows; "
                    "the periodic reconcile catches what is lost",
                )
            observer = Observer()
            self._observer = observer
            self._filtered = "event_filter" in inspect.signature(observer.schedule).parameters
            try:
                self._arm(report=False)
                observer.start()
            except OSError as error:
                self._observer = None
                self._watches.clear()
                raise WatchError(str(self.live_dir), str(error)) from error
        add_overflow_listener(id(self), self._overflowed)

    def stop(self) -> None:
        """Stop watching and wait for watchdog's threads to end."""
        remove_overflow_listener(id(self))
        with self._lock:
            observer = self._observer
            self._stopping = True
            self._observer = None
            self._watches.clear()
        if observer is not None:
            # Not under self._lock: the observer thread may be waiting for it.
            observer.stop()
            observer.join()

    def alive(self) -> bool:
        """False if watchdog's threads died; the loop may `stop` and `start` again."""
        with self._lock:
            observer = self._observer
            if observer is None or not observer.is_alive():
                return False
            return all(emitter.is_alive() for emitter in observer.emitters)

    def __enter__(self) -> LineageWatcher:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # Internals: run in start() and then on watchdog's thread.

    def _desired_watches(self, root: Path) -> set[tuple[str, bool]]:
        if root.is_dir():
            # The parent sees live/ itself removed, renamed or replaced.
            return {(str(root.parent), False), (str(root), True)}
        anchor = root.parent
        while not anchor.is_dir() and anchor != anchor.parent:
            anchor = anchor.parent
        return {(str(anchor), False)}

    def _arm(self, report: bool) -> None:
        """Bring the watches in line with the directories that exist now.

        A watch follows an inode: one whose directory was replaced is dropped
        and made again. Directories can appear while a watch is being added,
        unseen by it, so the check repeats until nothing changes.
        """
        observer = self._observer
        if observer is None:
            return
        had_live = self.watching_live
        live_dropped = False
        for _ in range(64):  # far more than the levels of any real path
            old_live_key = (str(self._root), True)
            root = Path(os.path.realpath(self.live_dir))
            desired = self._desired_watches(root)
            stale = [
                key
                for key, (_, identity) in self._watches.items()
                if key not in desired or _identity(key[0]) != identity
            ]
            missing = sorted(desired - self._watches.keys())
            if not stale and not missing:
                break
            for key in stale:
                watch, _ = self._watches.pop(key)
                observer.unschedule(watch)
                live_dropped = live_dropped or key == old_live_key
            self._root = root
            for key in missing:
                path, recursive = key
                identity = _identity(path)
                self._watches[key] = (self._schedule(observer, path, recursive), identity)
        if not report:
            return
        has_live = self.watching_live
        if live_dropped:
            log.warning("watcher.live_replaced", path=str(self.live_dir))
            self._overflowed()
        if has_live and (live_dropped or not had_live):
            # Lineages made before this watch existed were not seen: report them all.
            for name in self._lineage_names():
                self._changed(name)

    def _schedule(self, observer: BaseObserver, path: str, recursive: bool) -> ObservedWatch:
        if self._filtered:
            return observer.schedule(
                self._handler, path, recursive=recursive, event_filter=_EVENT_FILTER
            )
        return observer.schedule(self._handler, path, recursive=recursive)

    def _lineage_names(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self._root))
        except OSError:
            return []
        return [name for name in entries if name not in _NOT_LINEAGES]

    def _handle(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENT_TYPES:
            return
        paths = [_fspath(event.src_path)]
        dest = getattr(event, "dest_path", None)
        if dest:
            paths.append(_fspath(dest))
        with self._lock:
            if self._stopping or self._observer is None:
                return
            if event.event_type in _STRUCTURAL_EVENT_TYPES and any(
                self._is_on_the_way(path) for path in paths
            ):
                try:
                    self._arm(report=True)
                except OSError as error:
                    log.error("watcher.failed", path=str(self.live_dir), reason=str(error))
                    self._overflowed()
            names = [self._lineage_of(path, event.is_directory) for path in paths]
        for name in names:
            if name is not None:
                self._changed(name)

    def _is_on_the_way(self, path: str) -> bool:
        """`path` is live/ or one of its parents."""
        live = str(self._root)
        return live == path or live.startswith(path.rstrip(os.sep) + os.sep)

    def _lineage_of(self, path: str, is_directory: bool) -> str | None:
        prefix = str(self._root) + os.sep
        if not path.startswith(prefix):
            return None
        parts = path[len(prefix) :].split(os.sep)
        name = parts[0]
        if not name or (len(parts) == 1 and not is_directory and name in _NOT_LINEAGES):
            return None
        return name

    def _changed(self, name: str) -> None:
        try:
            self._on_change(name)
        except Exception as error:
            # Raising here would end watchdog's thread and all watching with it.
            log.error("watcher.failed", lineage=name, reason=repr(error))

    def _overflowed(self) -> None:
        if self._on_overflow is None:
            return
        try:
            self._on_overflow()
        except Exception as error:
            log.error("watcher.failed", reason=repr(error))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
