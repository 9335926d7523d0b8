"""What danesync remembers between passes and restarts.

The state is a directory of JSON files, in shards, so one lineage's change
does not rewrite everything (statefiles.py names the files):

- `state.json`: schema version, the last wall-clock time seen, last failures;
- `lineages/NNN.json`: per lineage (256 shards by name), the deployed chain,
  the pending candidate, a deploy in flight, a failed candidate;
- `tlsa/NNN.json`: per owner name, the RRset versions seen there and the
  records danesync's own updates added there (history.py).

Each file is replaced atomically (temporary file, fsync, rename, fsync of the
directory) and only when its content changed; `state.json` last. Schema 2 (a
file per lineage and per name) is read and migrated by `StateStore.load`: the
shards, then `state.json` saying 3, then the per-name files deleted (a few a
save); until `state.json` says 3 the per-name files are what counts, after it
only the shards. No file holds key material.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import operator
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danesync.chaininfo import (
    ChainInfo,
    optional_time_from_json,
    time_to_json,
)
from danesync.errors import StateError
from danesync.history import NameHistory
from danesync.statefiles import (
    KINDS,
    LEFTOVERS_PER_SAVE,
    LINEAGES,
    NAMES,
    build_shard_document,
    build_state_shard,
    is_shard_file,
    list_state_files,
    parse_shard_document,
    read_v2_files,
    write_state_files,
)
from danesync.staterecords import Failure, LineageState
from danesync.tlsa import TlsaRecord

__all__ = [
    "ChainInfo",
    "Failure",
    "LineageState",
    "Loaded",
    "State",
    "StateStore",
]

SCHEMA_VERSION = 3  # 2: one file per lineage and per name (read, then replaced)
FILENAME = "state.json"


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

    def chains_of(self, lineage: str) -> tuple[ChainInfo, ...]:
        """The lineage's deployed, pending and in-flight chains (those set)."""
        held = self.lineages.get(lineage)
        if held is None:
            return ()
        return tuple(c for c in (held.deployed, held.pending, held.inflight) if c is not None)

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

    def documents(self) -> dict[str, bytes]:
        """Every file of the state, by path relative to the state directory."""
        shards: dict[str, dict[str, Any]] = {}
        for kind, values in self.kinds():
            for name, value in values.items():
                shards.setdefault(build_state_shard(kind, name), {})[name] = value.to_json()
        docs = {FILENAME: _dump(self.global_json())}
        docs.update((path, build_shard_document(entries)) for path, entries in shards.items())
        return docs

    def kinds(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return ((LINEAGES, self.lineages), (NAMES, self.names))


def _dump(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Loaded:
    """A state as read, and what happened on the way (for a log line)."""

    state: State
    note: str | None = None  # "migrated ..." or "rebuilt ..."
    legacy: dict[str, Any] | None = None  # a v1 document, for the service to migrate
    digests: dict[str, bytes] = field(default_factory=dict)  # of each file read as current
    # Shard files on disk that the next save rewrites or deletes, before
    # state.json (anything not read from them as schema 3), and the per-name
    # files of schema 2 it deletes after.
    stale: frozenset[str] = frozenset()
    leftovers: frozenset[str] = frozenset()


class _BadFile(ValueError):
    def __init__(self, relative: str, error: Exception) -> None:
        super().__init__(f"{relative}: {error}")
        self.relative = relative


def read_state(directory: Path) -> Loaded:
    """Read the state directory. Never raises for content: a file that is not
    understood is moved aside and the state rebuilt from what is observed."""
    path = directory / FILENAME
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
        version = data.get("version") if isinstance(data, dict) else None
    except FileNotFoundError:
        return Loaded(State(), None, None, {}, *list_state_files(directory))
    except (OSError, ValueError) as error:
        return _rebuilt(directory, f"cannot read it: {error}")
    if version == 1:
        note = f"{path}: schema version 1, migrated to {SCHEMA_VERSION}"
        return Loaded(State(), note, data, {}, *list_state_files(directory))
    if version not in (2, SCHEMA_VERSION):
        return _rebuilt(directory, f"schema version {version!r}, expected {SCHEMA_VERSION}")
    try:
        shards, others = list_state_files(directory)
        if version == 2:  # every shard file is stray until state.json says 3
            return Loaded(_parse_v2(directory, data), None, None, {}, shards, others)
        digests = {FILENAME: build_digest(raw)}
        state, stale = _parse_v3(directory, data, shards, digests)
    except _BadFile as error:
        return _rebuilt(directory, f"not understood: {error}", error.relative)
    except (OSError, KeyError, TypeError, ValueError) as error:
        return _rebuilt(directory, f"not understood: {error}")
    return Loaded(state, None, None, digests, stale, others)


def build_digest(data: bytes) -> bytes:
    """What the store keeps of a file it wrote or read: 16 bytes, not the file."""
    return hashlib.blake2b(data, digest_size=16).digest()


def _parse_v2(directory: Path, data: dict[str, Any]) -> State:
    state = _build_global(data)
    for kind in KINDS:
        for name, value in read_v2_files(directory, kind):
            _add_entry(state, kind, name, value)
    return _sorted(state)


def _parse_v3(
    directory: Path, data: dict[str, Any], shards: frozenset[str], digests: dict[str, bytes]
) -> tuple[State, frozenset[str]]:
    # One shard at a time, parsed and built before the next is read: all parsed
    # documents at once left the heap fragmented (tens of MB of VmRSS at 10,000).
    state = _build_global(data)
    stale: set[str] = set()
    misplaced: list[tuple[str, str, Any]] = []
    for relative in sorted(shards):
        kind = relative.partition("/")[0]
        try:
            raw = (directory / relative).read_bytes()
            for name, value in parse_shard_document(raw).items():
                home = build_state_shard(kind, name)
                if home != relative:  # edited by hand: read, and both rewritten by the next save
                    stale.update((home, relative))
                    misplaced.append((kind, name, value))
                else:
                    _add_entry(state, kind, name, value)
        except (KeyError, TypeError, ValueError) as error:
            raise _BadFile(relative, error) from error
        digests[relative] = build_digest(raw)
    for kind, name, value in misplaced:
        if name not in state.kinds()[KINDS.index(kind)][1]:  # its own shard's entry wins
            _add_entry(state, kind, name, value)
    for relative in stale:
        digests.pop(relative, None)
    return _sorted(state), frozenset(stale)


def build_state_from_documents(documents: dict[str, Any]) -> State:
    """The state from its parsed files (relative path -> JSON value), as `documents()` made them."""
    state = _build_global(documents[FILENAME])
    for path, entries in documents.items():
        kind, _, filename = path.partition("/")
        if kind in KINDS and is_shard_file(filename):
            for name, value in entries.items():
                _add_entry(state, kind, name, value)
    return _sorted(state)


def _build_global(data: dict[str, Any]) -> State:
    state = State(
        last_wall=optional_time_from_json(data.get("last_wall")),
        last_monotonic=data.get("last_monotonic"),
        boot=data.get("boot"),
    )
    state.failures = {k: Failure.from_json(v) for k, v in data.get("failures", {}).items()}
    return state


def _add_entry(state: State, kind: str, name: str, value: Any) -> None:
    name = sys.intern(name)  # the configuration's string, not a copy per lineage
    if kind == LINEAGES:
        state.lineages[name] = LineageState.from_json(value)
    else:
        state.names[name] = NameHistory.from_json(name, value)


def _sorted(state: State) -> State:
    # By name, as schema 2's sorted file names gave them: passes see one order.
    state.lineages = dict(sorted(state.lineages.items()))
    state.names = dict(sorted(state.names.items()))
    return state


def _rebuilt(directory: Path, reason: str, bad: str | None = None) -> Loaded:
    path = directory / FILENAME
    kept = []
    for aside in (path, *([directory / bad] if bad else [])):
        try:
            aside.replace(aside.with_name(aside.name + ".bad"))
            kept.append(f"{aside}.bad")
        except OSError:
            pass
    where = f"; kept as {' and '.join(kept)}" if kept else ""
    note = f"{path}: {reason}{where}; rebuilding the state from what is observed"
    # What remains of the old state is deleted by the first save: its shards
    # before state.json, per-name files (never read under schema 3) after.
    return Loaded(State(), note, None, {}, *list_state_files(directory))


def load_state(directory: Path) -> State:
    """The state for readers (`status`): never moves anything aside."""
    path = directory / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as error:
        raise StateError(f"{path}: cannot read the state: {error}") from error
    version = data.get("version") if isinstance(data, dict) else None
    if version not in (2, SCHEMA_VERSION):
        raise StateError(f"{path}: schema version {version!r}; run the daemon")
    try:
        if version == 2:
            return _parse_v2(directory, data)
        return _parse_v3(directory, data, list_state_files(directory)[0], {})[0]
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise StateError(f"{directory}: the state is not understood: {error}") from error


class StateStore:
    """Writes the state's files that changed since the last save."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Per entry as last written (or read): the values its document is made
        # of, compared by identity (unchanged objects: not even serialised); per
        # file, the digest of its bytes (a shard whose new values serialise the
        # same: not rewritten). Not the bytes: 1.7 KB a lineage.
        self._keys: dict[str, dict[str, tuple[object, ...]]] = {kind: {} for kind in KINDS}
        self._digests: dict[str, bytes] = {}
        self._homes: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}  # name -> shard
        self._stale: set[str] = set()
        self._leftovers: set[str] = set()

    def load(self) -> Loaded:
        loaded = read_state(self.directory)
        self._keys = {kind: {} for kind in KINDS}
        self._digests = dict(loaded.digests)
        self._stale, self._leftovers = set(loaded.stale), set(loaded.leftovers)
        if loaded.digests:  # schema 3, read as it is: each entry is in its shard's file
            for kind, values in loaded.state.kinds():
                self._keys[kind] = {name: _key(kind, value) for name, value in values.items()}
        elif loaded.note is None and (loaded.stale or loaded.leftovers):
            # Schema 2: migrated now, not at the first change (a renewal, maybe
            # weeks later, would pay it), so every later start reads shards. A
            # failure: the next save migrates, or says why it cannot.
            with contextlib.suppress(StateError):
                self.save(loaded.state)
        return loaded

    def save(self, state: State) -> None:
        dirty = set(self._stale)
        keys: dict[str, dict[str, tuple[object, ...]]] = {}
        removed: dict[str, set[str]] = {}
        is_ = operator.is_
        for kind, values in state.kinds():
            old, homes, new = self._keys[kind], self._homes[kind], {}
            lineages = kind == LINEAGES
            # The loop of a save that walks every entry: no Python call but key().
            # Identity, not equality (an equal check would cost what serialising
            # does); map(operator.is_) loops in C.
            for name, value in values.items():
                new[name] = key = value.key() if lineages else (value,)
                previous = old.get(name)
                if (
                    previous is None
                    or len(previous) != len(key)
                    or not all(map(is_, previous, key))
                ):
                    dirty.add(homes.get(name) or self._home(kind, name))
            removed[kind] = old.keys() - new
            dirty.update(homes.get(name) or self._home(kind, name) for name in removed[kind])
            keys[kind] = new
        changed: dict[str, bytes] = {}
        deleted: list[str] = []
        digests: dict[str, bytes] = {}
        for kind, values in state.kinds():
            members: dict[str, dict[str, Any]] = {p: {} for p in dirty if p.startswith(f"{kind}/")}
            if not members:
                continue
            homes = self._homes[kind]
            for name, value in values.items():
                group = members.get(homes.get(name) or self._home(kind, name))
                if group is not None:
                    group[name] = value
            for relative, group in members.items():
                if not group:
                    if relative in self._digests or relative in self._stale:
                        deleted.append(relative)
                    continue
                data = build_shard_document({n: v.to_json() for n, v in group.items()})
                digests[relative] = digest = build_digest(data)
                if self._digests.get(relative) != digest:
                    changed[relative] = data
        data = _dump(state.global_json())
        digest = build_digest(data)
        document = None if self._digests.get(FILENAME) == digest else data
        leftovers = sorted(self._leftovers)[:LEFTOVERS_PER_SAVE]
        try:
            write_state_files(self.directory, changed, deleted, document, leftovers)
        except OSError as error:
            where = error.filename or self.directory
            raise StateError(
                f"{where}: cannot write the state: {error.strerror or error}"
            ) from error
        for kind, names in removed.items():
            for name in names:
                self._homes[kind].pop(name, None)
        self._keys = keys
        self._digests.update(digests)
        self._digests[FILENAME] = digest
        for relative in deleted:
            self._digests.pop(relative, None)
        self._stale.clear()
        self._leftovers.difference_update(leftovers)

    def _home(self, kind: str, name: str) -> str:
        # Remembered: a crc32 per name per save is a few ms at 10,000.
        home = self._homes[kind][name] = build_state_shard(kind, name)
        return home


def _key(kind: str, value: Any) -> tuple[object, ...]:
    """The values an entry's document is made of: equal keys, equal documents."""
    return value.key() if kind == LINEAGES else (value,)
