"""What the planner decides, as data: verbs, decisions, steps, the plan. Pure.

The planner (plan.py) returns a `Plan`; the executor (steps.py) runs its
steps one at a time. Every type here is a frozen value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from danesync.state import ChainInfo
from danesync.tlsa import TlsaRecord


class Verb(Enum):
    UNCHANGED = "unchanged"  # the candidate is what Postfix serves
    DEPLOY = "deploy"  # every possible RRset accepts it (or DNS is off)
    FORCE = "force"  # emergency: the deployed chain is expired or at its last safe moment
    PUBLISH = "publish"  # held: danesync publishes its records now
    MISSING = "missing"  # held: records the operator must add (check mode)
    WAIT_VISIBLE = "wait_visible"  # held: a server still serves an RRset that rejects it
    WAIT_AGE = "wait_age"  # held: caches may still hold such an RRset until proceed_at
    DNS_UNKNOWN = "dns_unknown"  # held: the DNS servers could not be asked
    DOWNGRADE = "downgrade"  # not deployed: expires before the deployed chain
    FAILED = "failed"  # its deploy failed before; not retried until it changes
    INVALID = "invalid"
    PENDING = "pending"  # certbot is mid-update

    @property
    def deploys(self) -> bool:
        return self in (Verb.DEPLOY, Verb.FORCE)

    @property
    def holds(self) -> bool:
        return self in (
            Verb.PUBLISH,
            Verb.MISSING,
            Verb.WAIT_VISIBLE,
            Verb.WAIT_AGE,
            Verb.DNS_UNKNOWN,
        )


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a lineage has no usable candidate now."""

    reason: str
    pending: bool = False


Candidate = ChainInfo | Problem


@dataclass(frozen=True)
class Observations:
    """What a pass saw, beyond the state (which holds the DNS history)."""

    candidates: Mapping[str, Candidate]  # the lineages this pass decides
    fresh: frozenset[str] = frozenset()  # owner names every server answered for now
    served: Mapping[str, str] | None = None  # adoption probe: lineage -> served leaf
    on_disk: Mapping[str, str | None] | None = None  # lineage -> its chain file's leaf
    # lineage -> records to publish beside its chains' own (issuer families, say)
    extra_records: Mapping[str, tuple[TlsaRecord, ...]] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    lineage: str
    verb: Verb
    chain: ChainInfo | None = None
    reason: str = ""
    proceed_at: dt.datetime | None = None
    missing: tuple[TlsaRecord, ...] = ()  # records it needs not yet served everywhere
    forced_at: dt.datetime | None = None  # held, but deployed then at the latest


class DeployKind(Enum):
    NEW = "new"
    FORCED = "forced"
    RESUMED = "resumed"  # a deploy a restart cut short: the file is in place
    REPAIR = "repair"  # the deployed chain's file is missing or altered


@dataclass(frozen=True, slots=True)
class DeployItem:
    lineage: str
    chain: ChainInfo
    kind: DeployKind
    reason: str = ""


@dataclass(frozen=True)
class Deploy:
    """Files, one parameter change, one reload, probes; a rollback per lineage."""

    items: tuple[DeployItem, ...]


@dataclass(frozen=True)
class Publish:
    name: str
    add: tuple[TlsaRecord, ...]
    ttl: int
    previous_ttl: int | None = None  # the RRset's TTL before, when the update changes it


@dataclass(frozen=True)
class Retire:
    name: str
    delete: tuple[TlsaRecord, ...]


@dataclass(frozen=True)
class ClearInflight:
    """A deploy in flight never wrote its file (or was rolled back): forget it."""

    lineage: str


Step = Deploy | Publish | Retire | ClearInflight


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    steps: tuple[Step, ...]
    missing: tuple[TlsaRecord, ...] = ()  # needed, not served everywhere (check mode logs them)

    @property
    def deploys(self) -> tuple[DeployItem, ...]:
        return tuple(i for s in self.steps if isinstance(s, Deploy) for i in s.items)

    @property
    def wake_at(self) -> dt.datetime | None:
        times = [d.proceed_at for d in self.decisions if d.proceed_at is not None]
        return min(times, default=None)
