"""What DNS caches may hold: the RRset versions served at each TLSA owner name. Pure.

DESIGN.md, "the one invariant": a cache may hold any version some server
served within that version's TTL. danesync learns versions from what each
verify server answers (with its TTL) and from its own updates. It assumes
the worst for the time nobody looked: a server is taken to serve the version
it was last seen serving until it is seen serving another one, and that
version stays possible for its TTL after that moment. `rollover_wait` is a
floor on that TTL (caches that clamp TTLs upwards, servers nobody asks),
never a replacement for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from danesync.tlsa import TlsaRecord

# Versions kept per name once they can no longer be held anywhere: none.
_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)

# A version's TTL is not the whole story of how long it can matter: a sender
# looks the TLSA RRset up before it connects, and its TLS handshake comes
# after the connect, the banner (postscreen may hold it back for 6 s) and
# EHLO. A version therefore stays possible this long after its TTL ran out.
SENDER_SLACK = dt.timedelta(seconds=10)


@dataclass(frozen=True, order=True)
class RRset:
    """One version of the TLSA RRset at a name: its records and the TTL served with them."""

    records: frozenset[TlsaRecord]
    ttl: int

    @classmethod
    def of(cls, records: Iterable[TlsaRecord], ttl: int) -> RRset:
        records = frozenset(records)
        return cls(records, ttl if records else 0)  # an empty RRset asks nothing: no TTL

    def to_json(self) -> dict[str, Any]:
        return {"records": sorted(r.rdata for r in self.records), "ttl": self.ttl}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> RRset:
        return cls.of(
            (TlsaRecord.from_key(f"{name} {rdata}") for rdata in data["records"]), int(data["ttl"])
        )


@dataclass(frozen=True)
class Seen:
    """A version and the latest moment some server may have served it."""

    rrset: RRset
    first_seen: dt.datetime
    last_served: dt.datetime


@dataclass(frozen=True)
class NameHistory:
    """Everything known about one owner name."""

    name: str
    seen: tuple[Seen, ...] = ()
    # Each server's version when it was last asked (or last updated by danesync):
    # until it is seen serving another, it is taken to serve this one still.
    servers: Mapping[str, RRset] = field(default_factory=dict)
    owned: frozenset[TlsaRecord] = frozenset()  # records danesync's own updates added
    # Records an update was sent to add but whose answer was not recorded (a
    # crash in between): found on the primary at the next look, they are danesync's.
    intent: frozenset[TlsaRecord] = frozenset()

    def current(self, server: str) -> RRset | None:
        return self.servers.get(server)

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": [
                {
                    **s.rrset.to_json(),
                    "first_seen": s.first_seen.isoformat(),
                    "last_served": s.last_served.isoformat(),
                }
                for s in self.seen
            ],
            "servers": {k: v.to_json() for k, v in sorted(self.servers.items())},
            "owned": sorted(r.rdata for r in self.owned),
            "intent": sorted(r.rdata for r in self.intent),
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> NameHistory:
        def records(items: Iterable[str]) -> frozenset[TlsaRecord]:
            return frozenset(TlsaRecord.from_key(f"{name} {rdata}") for rdata in items)

        return cls(
            name,
            tuple(
                Seen(
                    RRset.from_json(name, s),
                    dt.datetime.fromisoformat(s["first_seen"]),
                    dt.datetime.fromisoformat(s["last_served"]),
                )
                for s in data.get("seen", [])
            ),
            {k: RRset.from_json(name, v) for k, v in data.get("servers", {}).items()},
            records(data.get("owned", [])),
            records(data.get("intent", [])),
        )


def _touch(seen: tuple[Seen, ...], rrset: RRset, now: dt.datetime) -> tuple[Seen, ...]:
    """`rrset` was served at `now`."""
    result = []
    found = False
    for entry in seen:
        if entry.rrset == rrset:
            found = True
            result.append(replace(entry, last_served=max(entry.last_served, now)))
        else:
            result.append(entry)
    if not found:
        result.append(Seen(rrset, now, now))
    return tuple(result)


def record_served(history: NameHistory, server: str, rrset: RRset, now: dt.datetime) -> NameHistory:
    """`server` serves `rrset` at `now` (an answer, or danesync's own update of the primary).

    The version the server was last seen serving may have been served until
    now: the worst case for the time nobody looked.
    """
    seen = history.seen
    previous = history.servers.get(server)
    if previous is not None:
        seen = _touch(seen, previous, now)
    seen = _touch(seen, rrset, now)
    return replace(history, seen=seen, servers={**history.servers, server: rrset})


def record_owned(
    history: NameHistory, added: Iterable[TlsaRecord], deleted: Iterable[TlsaRecord]
) -> NameHistory:
    """danesync's update added `added` and deleted `deleted`: ownership follows."""
    owned = (history.owned | frozenset(added)) - frozenset(deleted)
    return replace(history, owned=owned, intent=frozenset())


def settle_intent(history: NameHistory, primary: str) -> NameHistory:
    """After a restart: records of an unconfirmed add found on the primary are danesync's."""
    if not history.intent:
        return history
    current = history.servers.get(primary)
    found = history.intent & current.records if current is not None else frozenset()
    return replace(history, owned=history.owned | found, intent=frozenset())


def _hold(seen: Seen, floor: int) -> dt.timedelta:
    return max(dt.timedelta(seconds=seen.rrset.ttl) + SENDER_SLACK, dt.timedelta(seconds=floor))


def possible_until(history: NameHistory, seen: Seen, floor: int) -> dt.datetime:
    """The moment no cache can hold `seen` any more; far future while a server serves it."""
    if seen.rrset in history.servers.values():
        return _NEVER
    return seen.last_served + _hold(seen, floor)


def possible_versions(
    history: NameHistory, now: dt.datetime, floor: int
) -> tuple[tuple[RRset, dt.datetime], ...]:
    """Every version a cache may hold now or later, with the moment it stops being possible."""
    return tuple(
        (s.rrset, until) for s in history.seen if (until := possible_until(history, s, floor)) > now
    )


def prune(history: NameHistory, now: dt.datetime, floor: int) -> NameHistory:
    """Forget versions that no cache can hold any more."""
    kept = tuple(s for s in history.seen if possible_until(history, s, floor) > now)
    return history if kept == history.seen else replace(history, seen=kept)


def restart_waits(
    history: NameHistory, before: dt.datetime, now: dt.datetime, floor: int
) -> NameHistory:
    """The wall clock jumped from `before` to `now`: every version possible at
    `before` counts as served until `now`, so no wait is shortened (a jump
    forward) or stretched without end (a jump back)."""
    seen = tuple(
        replace(s, last_served=now) if possible_until(history, s, floor) > before else s
        for s in history.seen
    )
    return replace(history, seen=seen)


def is_never(moment: dt.datetime) -> bool:
    return moment == _NEVER
