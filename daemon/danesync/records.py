"""Adding and removing TLSA records at one owner name, under the invariant. Pure.

`known` are the chains Postfix may present to clients of the name; `unknown`
says one more is served that danesync did not deploy and could not identify
(snakeoil, a bootstrap chain): it is assumed to match a non-empty RRset (the
operator's records are for it), never a first record.
"""

from __future__ import annotations

from collections.abc import Sequence

from danesync.decisions import Publish, Retire
from danesync.history import RRset
from danesync.matching import rrset_accepts
from danesync.state import ChainInfo
from danesync.tlsa import TlsaRecord


def plan_publish(
    name: str,
    current: RRset,
    needed: frozenset[TlsaRecord],
    known: Sequence[ChainInfo],
    unknown: bool,
    ttl: int,
) -> Publish | None:
    """Add what is needed and missing, if every served chain accepts the result."""
    add = needed - current.records
    if not add:
        return None
    if unknown and not current.records:
        return None  # a first record would break the unknown chain: deploy first
    result = current.records | add
    if not all(rrset_accepts(result, chain.matches) for chain in known):
        return None
    previous = current.ttl if current.records and current.ttl != ttl else None
    return Publish(name, tuple(sorted(add)), ttl, previous)


def plan_retire(
    name: str,
    current: RRset,
    owned: frozenset[TlsaRecord],
    needed: frozenset[TlsaRecord],
    known: Sequence[ChainInfo],
    unknown: bool,
) -> Retire | None:
    """Remove danesync's own records nothing needs, while every served chain
    still accepts what remains."""
    if unknown:
        return None
    delete: list[TlsaRecord] = []
    for record in sorted((owned & current.records) - needed):
        remaining = current.records - {*delete, record}
        if all(rrset_accepts(remaining, chain.matches) for chain in known):
            delete.append(record)
    return Retire(name, tuple(delete)) if delete else None
