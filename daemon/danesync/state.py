"""What danesync remembers between passes and restarts.

The state is a directory of small JSON files, so one lineage's change does
not rewrite everything:

- `state.json`: schema version, the last wall-clock time seen, last failures;
- `lineages/<lineage>.json`: the deployed chain, the pending candidate, a
  deploy in flight, a failed candidate;
- `tlsa/<owner name>.json`: the RRset versions seen at that name and the
  records danesync's own updates added there (history.py).

Each file is replaced atomically (temporary file, fsync, rename, fsync of the
directory) and only when its content changed. No file holds key material.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import operator
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danesync.chaininfo import (
    ChainInfo,
    optional_time_from_json,
    share_chain_info,
    time_from_json,
    time_to_json,
)
from danesync.errors import StateError
from danesync.history import NameHistory
from danesync.tlsa import TlsaRecord

__all__ = ["ChainInfo", "LineageState", "Loaded", "State", "StateStore", "share_chain_info"]

SCHEMA_VERSION = 2
FILENAME = "state.json"
LINEAGES = "lineages"
NAMES = "tlsa"


@dataclass
class LineageState:
    deployed: ChainInfo | None = None
    # The candidate being rolled in, and since when it waits.
    pending: ChainInfo | None = None
    pending_since: dt.datetime | None = None
    proceed_at: dt.datetime | None = None  # the earliest it can be deployed, as last planned
    # A deploy in flight: set before its chain file is written, cleared when
    # Postfix confirmed it or it was rolled back. A restart finishes it only if
    # the file on disk is this chain.
    inflight: ChainInfo | None = None
    # A candidate whose deploy failed (reload or probe): not retried until it changes.
    failed_fingerprint: str | None = None
    failed_reason: str | None = None

    def key(self) -> tuple[object, ...]:
        """Every field, as an immutable value: equal keys, equal documents."""
        return (
            self.deployed,
            self.pending,
            self.pending_since,
            self.proceed_at,
            self.inflight,
            self.failed_fingerprint,
            self.failed_reason,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "deployed": self.deployed.to_json() if self.deployed else None,
            "pending": self.pending.to_json() if self.pending else None,
            "pending_since": time_to_json(self.pending_since),
            "proceed_at": time_to_json(self.proceed_at),
            "inflight": self.inflight.to_json() if self.inflight else None,
            "failed_fingerprint": self.failed_fingerprint,
            "failed_reason": self.failed_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineageState:
        def info(key: str) -> ChainInfo | None:
            return ChainInfo.from_json(data[key]) if data.get(key) else None

        return cls(
            deployed=info("deployed"),
            pending=info("pending"),
            pending_since=optional_time_from_json(data.get("pending_since")),
            proceed_at=optional_time_from_json(data.get("proceed_at")),
            inflight=info("inflight"),
            failed_fingerprint=data.get("failed_fingerprint"),
            failed_reason=data.get("failed_reason"),
        )


@dataclass(frozen=True)
class Failure:
    """A step that failed, for `status`: what, where, why, since when."""

    step: str
    target: str  # the path or server
    reason: str
    since: dt.datetime
    attempts: int = 1
    lineage: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "target": self.target,
            "reason": self.reason,
            "since": time_to_json(self.since),
            "attempts": self.attempts,
            "lineage": self.lineage,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failure:
        return cls(
            str(data["step"]),
            str(data["target"]),
            str(data["reason"]),
            time_from_json(data["since"]),
            int(data.get("attempts", 1)),
            data.get("lineage"),
        )


@dataclass
class State:
    lineages: dict[str, LineageState] = field(default_factory=dict)
    names: dict[str, NameHistory] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    # The clocks at the last save: within one boot, monotonic time tells a
    # wall-clock jump from downtime, even across a restart.
    last_wall: dt.datetime | None = None
    last_monotonic: float | None = None
    boot: str | None = None

    def lineage(self, name: str) -> LineageState:
        return self.lineages.setdefault(name, LineageState())

    def name(self, owner: str) -> NameHistory:
        return self.names.get(owner) or NameHistory(owner)

    @property
    def reload_pending(self) -> bool:
        """A deploy is in flight (its reload and probe not confirmed)."""
        return any(s.inflight is not None for s in self.lineages.values())

    @property
    def owned(self) -> frozenset[TlsaRecord]:
        return frozenset(r for h in self.names.values() for r in h.owned)

    def global_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "reload_pending": self.reload_pending,
            "last_wall": time_to_json(self.last_wall),
            "last_monotonic": self.last_monotonic,
            "boot": self.boot,
            "failures": {k: f.to_json() for k, f in sorted(self.failures.items())},
        }

    def entries(self) -> Iterator[tuple[str, tuple[object, ...], Callable[[], Any]]]:
        """Every file but `state.json`: its path relative to the state directory,
        the values it is made of (immutable: the same objects, the same file),
        and how to make its JSON value."""
        for name, ls in self.lineages.items():
            yield f"{LINEAGES}/{name}.json", ls.key(), ls.to_json
        for owner, history in self.names.items():
            # owner ends with "."
            yield f"{NAMES}/{owner}json", (history,), history.to_json

    def documents(self) -> dict[str, bytes]:
        """Every file of the state, by path relative to the state directory."""
        docs = {FILENAME: _dump(self.global_json())}
        docs.update((path, _dump(make())) for path, _, make in self.entries())
        return docs


def _dump(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Loaded:
    """A state as read, and what happened on the way (for a log line)."""

    state: State
    note: str | None = None  # "migrated ..." or "rebuilt ..."
    legacy: dict[str, Any] | None = None  # a v1 document, for the service to migrate
    digests: dict[str, bytes] = field(default_factory=dict)  # of each file as read


def read_state(directory: Path) -> Loaded:
    """Read the state directory. Never raises for content: a file that is not
    understood is moved aside and the state rebuilt from what is observed."""
    path = directory / FILENAME
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
        version = data.get("version") if isinstance(data, dict) else None
    except FileNotFoundError:
        return Loaded(State())
    except (OSError, ValueError) as error:
        return _rebuilt(path, f"cannot read it: {error}")
    if version == 1:
        return Loaded(State(), f"{path}: schema version 1, migrated to {SCHEMA_VERSION}", data)
    if version != SCHEMA_VERSION:
        return _rebuilt(path, f"schema version {version!r}, expected {SCHEMA_VERSION}")
    digests = {FILENAME: build_digest(raw)}
    try:
        state = _parse(directory, data, digests)
    except (OSError, KeyError, TypeError, ValueError) as error:
        return _rebuilt(path, f"not understood: {error}")
    return Loaded(state, digests=digests)


def build_digest(data: bytes) -> bytes:
    """What the store keeps of a file it wrote or read: 16 bytes, not the file."""
    return hashlib.blake2b(data, digest_size=16).digest()


def _parse(directory: Path, data: dict[str, Any], digests: dict[str, bytes] | None = None) -> State:
    # One file at a time, parsed and built before the next is read: all 10,000
    # parsed documents at once left the heap fragmented (tens of MB of VmRSS).
    state = _build_global(data)
    for sub in (LINEAGES, NAMES):
        try:
            names = sorted(n for n in os.listdir(directory / sub) if n.endswith(".json"))
        except FileNotFoundError:
            continue
        for name in names:
            relative = f"{sub}/{name}"
            raw = (directory / sub / name).read_bytes()
            _add_document(state, relative, json.loads(raw))
            if digests is not None:
                digests[relative] = build_digest(raw)
    return state


def build_state_from_documents(documents: dict[str, Any]) -> State:
    """The state from its parsed files (relative path -> JSON value)."""
    state = _build_global(documents[FILENAME])
    for path, value in sorted(documents.items()):
        _add_document(state, path, value)
    return state


def _build_global(data: dict[str, Any]) -> State:
    state = State(
        last_wall=optional_time_from_json(data.get("last_wall")),
        last_monotonic=data.get("last_monotonic"),
        boot=data.get("boot"),
    )
    state.failures = {k: Failure.from_json(v) for k, v in data.get("failures", {}).items()}
    return state


def _add_document(state: State, path: str, value: Any) -> None:
    if path.startswith(f"{LINEAGES}/"):
        name = path.removeprefix(f"{LINEAGES}/").removesuffix(".json")
        state.lineages[name] = LineageState.from_json(value)
    elif path.startswith(f"{NAMES}/"):
        owner = path.removeprefix(f"{NAMES}/").removesuffix("json")
        state.names[owner] = NameHistory.from_json(owner, value)


def _rebuilt(path: Path, reason: str) -> Loaded:
    aside = path.with_name(path.name + ".bad")
    try:
        path.replace(aside)
        where = f"; kept as {aside}"
    except OSError:
        where = ""
    return Loaded(State(), f"{path}: {reason}{where}; rebuilding the state from what is observed")


def load_state(directory: Path) -> State:
    """The state for readers (`status`): never moves anything aside."""
    path = directory / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as error:
        raise StateError(f"{path}: cannot read the state: {error}") from error
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
        raise StateError(f"{path}: schema version {data.get('version')!r}; run the daemon")
    try:
        state = _parse(directory, data)
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise StateError(f"{directory}: the state is not understood: {error}") from error
    return state


class StateStore:
    """Writes the state's files that changed since the last save."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Per file as last written (or read): the values it was made of, compared
        # by identity (unchanged objects: not even serialised), and the digest of
        # its bytes (new values that serialise the same: not rewritten). Not the
        # bytes themselves: 1.7 KB a lineage, 16.5 MiB at 10,000.
        self._written: dict[str, tuple[tuple[object, ...], bytes]] = {}

    def load(self) -> Loaded:
        loaded = read_state(self.directory)
        if loaded.note is None:
            digests = loaded.digests
            self._written = {
                relative: (key, digests[relative])
                for relative, key, _ in loaded.state.entries()
                if relative in digests
            }
            if FILENAME in digests:
                self._written[FILENAME] = ((), digests[FILENAME])
        return loaded

    def save(self, state: State) -> None:
        from danesync.actions.files import write_atomic, write_atomic_many

        changed: dict[str, bytes] = {}
        written: dict[str, tuple[tuple[object, ...], bytes]] = {}
        for relative, key, make in state.entries():
            old = self._written.get(relative)
            if old is not None and _same(old[0], key):
                written[relative] = old
                continue
            data = _dump(make())
            digest = build_digest(data)
            if old is None or old[1] != digest:
                changed[relative] = data
            written[relative] = (key, digest)
        try:
            for sub in (LINEAGES, NAMES):
                (self.directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            # Per-lineage and per-name files first (in one batch: one flush for
            # all, not two fsyncs each), the global file last.
            write_atomic_many({self.directory / r: d for r, d in changed.items()}, mode=0o600)
            gone = set(self._written) - set(written) - {FILENAME}
            self._written.update(written)
            data = _dump(state.global_json())
            digest = build_digest(data)
            if self._written.get(FILENAME, ((), b""))[1] != digest:
                write_atomic(self.directory / FILENAME, data, mode=0o600)
                self._written[FILENAME] = ((), digest)
            for relative in gone:
                (self.directory / relative).unlink(missing_ok=True)
                del self._written[relative]
        except OSError as error:
            where = error.filename or self.directory
            raise StateError(
                f"{where}: cannot write the state: {error.strerror or error}"
            ) from error


def _same(old: tuple[object, ...], new: tuple[object, ...]) -> bool:
    # Identity, not equality: an equal check would cost what serialising does.
    # map(operator.is_) loops in C: a save at 10,000 lineages walks every file.
    return len(old) == len(new) and all(map(operator.is_, old, new))
