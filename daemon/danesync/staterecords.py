"""What danesync remembers per lineage, and its failures, between passes (state.py keeps them)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from danesync.chaininfo import ChainInfo, optional_time_from_json, time_from_json, time_to_json


@dataclass(slots=True)
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
        """Every field, as an immutable value: equal keys, equal documents.

        Between renewals only `deployed` is set: then the key is that alone (the
        store keeps one key per lineage; a 1-tuple is half a 7-tuple's memory).
        Lengths differ whenever the other fields do, so equal keys still mean
        equal documents."""
        if (
            self.pending is None
            and self.pending_since is None
            and self.proceed_at is None
            and self.inflight is None
            and self.failed_fingerprint is None
            and self.failed_reason is None
        ):
            return (self.deployed,)
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
        deployed = ChainInfo.from_json(data["deployed"]) if data.get("deployed") else None

        def info(key: str) -> ChainInfo | None:
            found = ChainInfo.from_json(data[key]) if data.get(key) else None
            return deployed if found is not None and found == deployed else found  # one object

        return cls(
            deployed=deployed,
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
