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
import json
import sys
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danesync.chain import Chain
from danesync.errors import StateError
from danesync.history import NameHistory
from danesync.matching import build_match_set
from danesync.tlsa import TlsaRecord, spki_sha256

SCHEMA_VERSION = 2
FILENAME = "state.json"
LINEAGES = "lineages"
NAMES = "tlsa"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ChainInfo:
    """What the state keeps of a chain: enough to know what Postfix serves,
    which TLSA records match it, and when it expires."""

    fingerprint: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str
    key_algorithm: str
    version: int
    names: tuple[str, ...]  # the leaf's DNS names (SAN)
    leaf_spki: str  # SHA-256 of the leaf's SPKI: the data of its 3 1 1
    issuer_spki: str | None  # SHA-256 of the issuer's SPKI: the data of its 2 1 1
    matches: frozenset[str]  # rdata of every usable TLSA record that matches it
    tlsa: tuple[TlsaRecord, ...] = ()  # records it needed when read (for display)

    @classmethod
    def from_chain(cls, chain: Chain) -> ChainInfo:
        from cryptography import x509

        from danesync.chain import _not_before

        try:
            san = chain.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return share_chain_info(
            cls(
                fingerprint=chain.fingerprint,
                serial=chain.serial,
                not_before=_not_before(chain.leaf),
                not_after=chain.not_after,
                issuer=sys.intern(chain.issuer),
                key_algorithm=sys.intern(chain.key_algorithm),
                version=chain.version,
                names=names,
                leaf_spki=spki_sha256(chain.leaf),
                issuer_spki=_intern(chain.issuer_spki),
                matches=frozenset(
                    sys.intern(m) for m in build_match_set(chain.leaf, chain.intermediates)
                ),
                tlsa=chain.tlsa,
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "serial": self.serial,
            "not_before": _time_to_json(self.not_before),
            "not_after": _time_to_json(self.not_after),
            "issuer": self.issuer,
            "key_algorithm": self.key_algorithm,
            "version": self.version,
            "names": list(self.names),
            "leaf_spki": self.leaf_spki,
            "issuer_spki": self.issuer_spki,
            "matches": sorted(self.matches),
            "tlsa": [record.key for record in self.tlsa],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChainInfo:
        return share_chain_info(
            cls(
                fingerprint=str(data["fingerprint"]),
                serial=str(data["serial"]),
                not_before=_time_from_json(data["not_before"]),
                not_after=_time_from_json(data["not_after"]),
                issuer=sys.intern(str(data["issuer"])),
                key_algorithm=sys.intern(str(data["key_algorithm"])),
                version=int(data["version"]),
                names=tuple(str(n) for n in data["names"]),
                leaf_spki=str(data["leaf_spki"]),
                issuer_spki=_intern(data.get("issuer_spki")),
                matches=frozenset(sys.intern(str(m)) for m in data["matches"]),
                tlsa=tuple(TlsaRecord.from_key(key) for key in data.get("tlsa", [])),
            )
        )


# One object per distinct chain: the state's deployed (pending, in flight)
# ChainInfo and the read cache's entry for the same leaf are the same object,
# not two copies of some twenty objects each (10,000 lineages: memory).
_SHARED: weakref.WeakValueDictionary[str, ChainInfo] = weakref.WeakValueDictionary()


def share_chain_info(info: ChainInfo) -> ChainInfo:
    """An equal ChainInfo already in memory, else `info` (then kept for the next)."""
    existing = _SHARED.get(info.fingerprint)
    if existing is not None and existing == info:
        return existing
    _SHARED[info.fingerprint] = info
    return info


def _intern(text: object) -> str | None:
    # The issuer's values repeat across thousands of lineages: one string each.
    return None if text is None else sys.intern(str(text))


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
            "pending_since": _time_to_json(self.pending_since),
            "proceed_at": _time_to_json(self.proceed_at),
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
            pending_since=_optional_time_from_json(data.get("pending_since")),
            proceed_at=_optional_time_from_json(data.get("proceed_at")),
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
            "since": _time_to_json(self.since),
            "attempts": self.attempts,
            "lineage": self.lineage,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Failure:
        return cls(
            str(data["step"]),
            str(data["target"]),
            str(data["reason"]),
            _time_from_json(data["since"]),
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
            "last_wall": _time_to_json(self.last_wall),
            "last_monotonic": self.last_monotonic,
            "boot": self.boot,
            "failures": {k: f.to_json() for k, f in sorted(self.failures.items())},
        }

    def documents(
        self, cache: dict[str, tuple[tuple[Any, ...], bytes]] | None = None
    ) -> dict[str, bytes]:
        """Every file of the state, by path relative to the state directory.

        With `cache`, a file whose values are the very same objects as at the
        last call is not serialised again (10,000 lineages, one changed).
        """
        cache = {} if cache is None else cache

        def dump(path: str, key: tuple[Any, ...], make: Any) -> bytes:
            cached = cache.get(path)
            if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
                return cached[1]
            data = _dump(make())
            cache[path] = (key, data)
            return data

        docs = {FILENAME: _dump(self.global_json())}
        for name, ls in self.lineages.items():
            docs[f"{LINEAGES}/{name}.json"] = dump(f"{LINEAGES}/{name}", ls.key(), ls.to_json)
        for owner, history in self.names.items():
            # owner ends with "."
            docs[f"{NAMES}/{owner}json"] = dump(owner, (history,), history.to_json)
        return docs


def _dump(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"


def _time_to_json(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


def _time_from_json(text: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text))


def _optional_time_from_json(text: Any) -> dt.datetime | None:
    return None if text is None else _time_from_json(text)


@dataclass(frozen=True)
class Loaded:
    """A state as read, and what happened on the way (for a log line)."""

    state: State
    note: str | None = None  # "migrated ..." or "rebuilt ..."
    legacy: dict[str, Any] | None = None  # a v1 document, for the service to migrate


def read_state(directory: Path) -> Loaded:
    """Read the state directory. Never raises for content: a file that is not
    understood is moved aside and the state rebuilt from what is observed."""
    path = directory / FILENAME
    try:
        data = json.loads(path.read_text())
        version = data.get("version") if isinstance(data, dict) else None
    except FileNotFoundError:
        return Loaded(State())
    except (OSError, ValueError) as error:
        return _rebuilt(path, f"cannot read it: {error}")
    if version == 1:
        return Loaded(State(), f"{path}: schema version 1, migrated to {SCHEMA_VERSION}", data)
    if version != SCHEMA_VERSION:
        return _rebuilt(path, f"schema version {version!r}, expected {SCHEMA_VERSION}")
    try:
        state = _parse(directory, data)
    except (OSError, KeyError, TypeError, ValueError) as error:
        return _rebuilt(path, f"not understood: {error}")
    return Loaded(state)


def _parse(directory: Path, data: dict[str, Any]) -> State:
    documents = {FILENAME: data}
    for sub in (LINEAGES, NAMES):
        for file in sorted((directory / sub).glob("*.json")):
            documents[f"{sub}/{file.name}"] = json.loads(file.read_text())
    return build_state_from_documents(documents)


def build_state_from_documents(documents: dict[str, Any]) -> State:
    """The state from its parsed files (relative path -> JSON value)."""
    data = documents[FILENAME]
    state = State(
        last_wall=_optional_time_from_json(data.get("last_wall")),
        last_monotonic=data.get("last_monotonic"),
        boot=data.get("boot"),
    )
    state.failures = {k: Failure.from_json(v) for k, v in data.get("failures", {}).items()}
    for path, value in sorted(documents.items()):
        if path.startswith(f"{LINEAGES}/"):
            name = path.removeprefix(f"{LINEAGES}/").removesuffix(".json")
            state.lineages[name] = LineageState.from_json(value)
        elif path.startswith(f"{NAMES}/"):
            owner = path.removeprefix(f"{NAMES}/").removesuffix("json")
            state.names[owner] = NameHistory.from_json(owner, value)
    return state


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
        self._written: dict[str, bytes] = {}
        self._cache: dict[str, tuple[tuple[Any, ...], bytes]] = {}

    def load(self) -> Loaded:
        loaded = read_state(self.directory)
        if loaded.note is None:
            self._written = loaded.state.documents(self._cache)
        return loaded

    def save(self, state: State) -> None:
        from danesync.actions.files import write_atomic, write_atomic_many

        documents = state.documents(self._cache)
        try:
            for sub in (LINEAGES, NAMES):
                (self.directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            # Per-lineage and per-name files first (in one batch: one flush for
            # all, not two fsyncs each), the global file last.
            changed = {
                relative: data
                for relative, data in documents.items()
                if relative != FILENAME and self._written.get(relative) != data
            }
            write_atomic_many({self.directory / r: d for r, d in changed.items()}, mode=0o600)
            self._written.update(changed)
            data = documents.get(FILENAME)
            if data is not None and self._written.get(FILENAME) != data:
                write_atomic(self.directory / FILENAME, data, mode=0o600)
                self._written[FILENAME] = data
            for relative in set(self._written) - set(documents):
                (self.directory / relative).unlink(missing_ok=True)
                del self._written[relative]
        except OSError as error:
            where = error.filename or self.directory
            raise StateError(
                f"{where}: cannot write the state: {error.strerror or error}"
            ) from error
