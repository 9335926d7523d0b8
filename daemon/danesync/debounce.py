"""When a changed lineage may be read: at once when certbot is done, else after `settle`.

certbot updates a lineage by adding ``previous_*.pem`` links, re-linking
cert, privkey, chain and fullchain one at a time, then removing the
``previous_*`` links (DESIGN.md). Until the last removal some link is
missing, the four disagree, or a ``previous_*`` link is there; after it, the
four name one archive version and no ``previous_*`` remains: the lineage is
complete and can be read at once. Every other state (and any writer that is
not certbot) waits until the lineage has been quiet for ``settle`` seconds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LINK_KINDS = ("cert", "privkey", "chain", "fullchain")
_VERSIONED = re.compile(r"(cert|privkey|chain|fullchain)(\d+)\.pem")


def plan_links_done(targets: dict[str, str | None], previous: bool) -> bool:
    """certbot is done with a lineage: the four links name one version, no previous_*.

    `targets` maps each of the four kinds to its link's target (None when
    the link is missing or not a link); `previous` is True while any
    ``previous_*.pem`` link exists. Pure.
    """
    if previous:
        return False
    versions = set()
    directories = set()
    for kind in LINK_KINDS:
        target = targets.get(kind)
        if target is None:
            return False
        directory, base = os.path.split(target)
        match = _VERSIONED.fullmatch(base)
        if match is None or match.group(1) != kind:
            return False
        versions.add(match.group(2))
        directories.add(directory)
    return len(versions) == 1 and len(directories) == 1


def read_certbot_done(live_dir: Path, name: str) -> bool:
    """`plan_links_done` for live_dir/<name>, read with lstat and readlink only.

    Neither opens anything, so this check makes no inotify event itself.
    """
    lineage = os.path.join(live_dir, name)
    previous = any(
        os.path.lexists(os.path.join(lineage, f"previous_{kind}.pem")) for kind in LINK_KINDS
    )
    if previous:
        return False
    targets: dict[str, str | None] = {}
    for kind in LINK_KINDS:
        try:
            targets[kind] = os.readlink(os.path.join(lineage, f"{kind}.pem"))
        except OSError:
            targets[kind] = None
    return plan_links_done(targets, previous=False)


class Debouncer:
    """Which names are due: finished by their writer, or quiet for `settle` seconds.

    Pure: every method takes `now` from the caller (a monotonic clock).
    """

    def __init__(self, settle: float) -> None:
        if settle < 0:
            raise ValueError(f"settle must not be negative, not {settle}")
        self.settle = settle
        self._deadlines: dict[str, float] = {}
        self._early: set[str] = set()  # pending names the writer said were done
        self._taken_early: set[str] = set()  # of those, what the last `due` returned

    def touch(self, name: str, now: float, done: bool = False) -> None:
        """`name` changed at `now`; due `settle` seconds later unless touched again.

        `done`: its writer says it is finished (certbot: `read_certbot_done`),
        so it is due at once; the last touch decides.
        """
        self._deadlines[name] = now if done else now + self.settle
        if done:
            self._early.add(name)
        else:
            self._early.discard(name)

    def due(self, now: float) -> list[str]:
        """Names due at `now`, oldest deadline first; they are forgotten."""
        ready = sorted(
            (deadline, name) for name, deadline in self._deadlines.items() if deadline <= now
        )
        self._taken_early = set()
        for _, name in ready:
            del self._deadlines[name]
            if name in self._early:
                self._early.discard(name)
                self._taken_early.add(name)
        return [name for _, name in ready]

    def retry(self, names: set[str] | frozenset[str], now: float) -> set[str]:
        """The pass over `names` from the last `due` failed: those taken early
        (before `settle`) are read once more after `settle`, in case the writer
        was not certbot and had not finished. Returns those names."""
        again = self._taken_early & set(names)
        self._taken_early = set()
        for name in again:
            if name not in self._deadlines:
                self._deadlines[name] = now + self.settle
        return again

    def next_deadline(self) -> float | None:
        """When the next name falls due, or None if none is pending."""
        return min(self._deadlines.values(), default=None)

    def discard(self, name: str) -> None:
        """Forget `name` (a full reconcile handled it)."""
        self._deadlines.pop(name, None)
        self._early.discard(name)

    def clear(self) -> None:
        self._deadlines.clear()
        self._early.clear()
        self._taken_early.clear()

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._deadlines)

    def __len__(self) -> int:
        return len(self._deadlines)
