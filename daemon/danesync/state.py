"""What danesync remembers between passes and restarts: one JSON file.

Written atomically after every step (temporary file, fsync, rename, fsync of
the directory), so a crash at any point leaves either the old or the new
state. The file holds no key material.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danesync.chain import Chain
from danesync.errors import StateError
from danesync.tlsa import TlsaRecord

SCHEMA_VERSION = 1
FILENAME = "state.json"


@dataclass(frozen=True)
class ChainInfo:
    """What the state keeps of a chain: enough to know what Postfix serves."""

    fingerprint: str
    serial: str
    not_after: dt.datetime
    issuer: str
    key_algorithm: str
    version: int
    tlsa: tuple[TlsaRecord, ...]

    @classmethod
    def from_chain(cls, chain: Chain) -> ChainInfo:
        return cls(
            fingerprint=chain.fingerprint,
            serial=chain.serial,
            not_after=chain.not_after,
            issuer=chain.issuer,
            key_algorithm=chain.key_algorithm,
            version=chain.version,
            tlsa=chain.tlsa,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "serial": self.serial,
            "not_after": _time_to_json(self.not_after),
            "issuer": self.issuer,
            "key_algorithm": self.key_algorithm,
            "version": self.version,
            "tlsa": [record.key for record in self.tlsa],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChainInfo:
        return cls(
            fingerprint=str(data["fingerprint"]),
            serial=str(data["serial"]),
            not_after=_time_from_json(data["not_after"]),
            issuer=str(data["issuer"]),
            key_algorithm=str(data["key_algorithm"]),
            version=int(data["version"]),
            tlsa=tuple(TlsaRecord.from_key(key) for key in data["tlsa"]),
        )


@dataclass
class LineageState:
    deployed: ChainInfo | None = None
    # The candidate being rolled in, and since when it waits.
    pending: ChainInfo | None = None
    pending_since: dt.datetime | None = None
    proceed_at: dt.datetime | None = None  # the earliest it can be deployed, as last planned
    # A candidate whose deploy failed (reload or probe): not retried until it changes.
    failed_fingerprint: str | None = None
    failed_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "deployed": self.deployed.to_json() if self.deployed else None,
            "pending": self.pending.to_json() if self.pending else None,
            "pending_since": _time_to_json(self.pending_since),
            "proceed_at": _time_to_json(self.proceed_at),
            "failed_fingerprint": self.failed_fingerprint,
            "failed_reason": self.failed_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LineageState:
        return cls(
            deployed=ChainInfo.from_json(data["deployed"]) if data.get("deployed") else None,
            pending=ChainInfo.from_json(data["pending"]) if data.get("pending") else None,
            pending_since=_optional_time_from_json(data.get("pending_since")),
            proceed_at=_optional_time_from_json(data.get("proceed_at")),
            failed_fingerprint=data.get("failed_fingerprint"),
            failed_reason=data.get("failed_reason"),
        )


@dataclass
class RecordState:
    """A TLSA record danesync published or watches."""

    published: bool = False  # by danesync: only these are ever deleted
    visible_since: dt.datetime | None = None  # on every verify server, continuously

    def to_json(self) -> dict[str, Any]:
        return {"published": self.published, "visible_since": _time_to_json(self.visible_since)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordState:
        return cls(bool(data.get("published")), _optional_time_from_json(data.get("visible_since")))


@dataclass
class State:
    lineages: dict[str, LineageState] = field(default_factory=dict)
    records: dict[TlsaRecord, RecordState] = field(default_factory=dict)
    # Postfix must be reloaded (and the probe run): set before chain files are
    # written, cleared once Postfix confirmed; a crash in between is resumed.
    reload_pending: bool = False

    def lineage(self, name: str) -> LineageState:
        return self.lineages.setdefault(name, LineageState())

    def record(self, record: TlsaRecord) -> RecordState:
        return self.records.setdefault(record, RecordState())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "lineages": {name: s.to_json() for name, s in sorted(self.lineages.items())},
            "records": {r.key: s.to_json() for r, s in sorted(self.records.items())},
            "reload_pending": self.reload_pending,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"schema version {data.get('version')!r}, expected {SCHEMA_VERSION}")
        return cls(
            lineages={n: LineageState.from_json(s) for n, s in data["lineages"].items()},
            records={
                TlsaRecord.from_key(k): RecordState.from_json(s) for k, s in data["records"].items()
            },
            reload_pending=bool(data.get("reload_pending")),
        )


def _time_to_json(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


def _time_from_json(text: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text))


def _optional_time_from_json(text: Any) -> dt.datetime | None:
    return None if text is None else _time_from_json(text)


def load_state(directory: Path) -> State:
    path = directory / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as error:
        raise StateError(f"{path}: cannot read the state: {error}") from error
    try:
        return State.from_json(data)
    except (KeyError, TypeError, ValueError) as error:
        raise StateError(f"{path}: the state is not understood: {error}") from error


def save_state(directory: Path, state: State) -> None:
    from danesync.actions.files import write_atomic

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode() + b"\n"
    try:
        write_atomic(directory / FILENAME, data, mode=0o600)
    except OSError as error:
        raise StateError(f"{directory / FILENAME}: cannot write the state: {error}") from error
