"""The SNI table kept up to date by what changed (sni.build_sni_table). Pure.

Built from scratch the table walks every name of every SNI lineage and sorts
all the keys: at 10,000 lineages that is most of a renewal whose leaf has
another name. Here the last table is kept with an index (key -> the lineages
naming it, in configuration order; wildcard key -> the exact keys it
covers), and a new list of certificates that differs from the last one only
in some lineages (same lineages, same order) recomputes only the keys those
lineages named before or name now, and the exact keys under a wildcard among
them. Anything else (a lineage added, removed or moved) builds the table
again. The result is the table `sni.build_sni_table_afresh` builds, entry for
entry and problem for problem (tests/unit/test_incremental.py compares them).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from danesync.sni import SniCertificate, SniEntry, SniTable, build_sni_key, covers

Slot = tuple[int, int]  # (place of the certificate in the list, place of the name in it)


@dataclass
class TableIndex:
    """One table and what updating it needs; mutated by `update` only."""

    certificates: tuple[SniCertificate, ...]
    table: SniTable
    keys_of: list[list[str | None]]  # per certificate, per name: its key (None: not a key)
    members: dict[str, list[Slot]] = field(default_factory=dict)  # key -> slots, in order
    problems: dict[Slot, str] = field(default_factory=dict)
    entries: dict[str, SniEntry] = field(default_factory=dict)
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key -> its entry's files
    keys: list[str] = field(default_factory=list)  # sorted
    ordered: list[SniEntry] = field(default_factory=list)  # the entries of `keys`, in order
    covered: dict[str, set[str]] = field(default_factory=dict)  # wildcard key -> exact keys


def build_table_index(certificates: tuple[SniCertificate, ...]) -> TableIndex:
    """The table of `certificates` with its index, from scratch."""
    index = TableIndex(certificates, SniTable((), ()), [[] for _ in certificates])
    touched = _add(index, range(len(certificates)))
    _recompute(index, touched)
    return index


def update_table_index(index: TableIndex, certificates: tuple[SniCertificate, ...]) -> TableIndex:
    """The index for `certificates`: `index` updated in place when only some
    lineages' certificates changed, else built again."""
    old = index.certificates
    if old is certificates:  # the very list of the last call (a deploy asks four times)
        return index
    if len(old) != len(certificates):
        return build_table_index(certificates)
    changed = [p for p, (a, b) in enumerate(zip(old, certificates, strict=True)) if a is not b]
    if any(old[p].lineage != certificates[p].lineage for p in changed):
        return build_table_index(certificates)
    if not changed:
        index.certificates = certificates
        return index
    touched: set[str] = set()
    for place in changed:  # forget what the old certificate named
        for number, key in enumerate(index.keys_of[place]):
            index.problems.pop((place, number), None)
            if key is not None:
                index.members[key].remove((place, number))
                touched.add(key)
    index.certificates = certificates
    touched |= _add(index, changed)
    _recompute(index, touched)
    return index


def _add(index: TableIndex, places: Sequence[int] | range) -> set[str]:
    """Index the names of the certificates at `places`; returns their keys."""
    touched: set[str] = set()
    for place in places:
        certificate = index.certificates[place]
        keys: list[str | None] = []
        for number, name in enumerate(certificate.names):
            try:
                key: str | None = build_sni_key(name)
            except ValueError as error:
                problem = f"{certificate.lineage}: {error}; left out of the SNI table"
                index.problems[(place, number)] = problem
                key = None
            keys.append(key)
            if key is not None:
                bisect.insort(index.members.setdefault(key, []), (place, number))
                touched.add(key)
        index.keys_of[place] = keys
    return touched


def _recompute(index: TableIndex, touched: set[str]) -> None:
    """The entries, conflicts and wildcard links of the `touched` keys, then the table."""
    chosen: dict[str, dict[str, SniCertificate]] = {}
    for key in touched:
        chosen[key] = _choose(index, key)
        wildcard = _wildcard_of(key)
        if wildcard is not None:  # an exact key: it may have come or gone under a wildcard
            under = index.covered.setdefault(wildcard, set())
            if chosen[key]:
                under.add(key)
            else:
                under.discard(key)
    # An exact entry also lists the files of a covering wildcard: a changed
    # wildcard changes every entry under it.
    affected = set(touched)
    for key in touched:
        if key.startswith("."):
            affected |= index.covered.get(key, set())
    for key in affected:
        by_algorithm = dict(chosen[key] if key in chosen else _choose(index, key, quiet=True))
        place = bisect.bisect_left(index.keys, key)
        if not by_algorithm:
            if index.entries.pop(key, None) is not None:
                del index.files[key]
                del index.keys[place]
                del index.ordered[place]
            continue
        wildcard = _wildcard_of(key)
        if wildcard is not None:
            for algorithm, certificate in _choose(index, wildcard, quiet=True).items():
                by_algorithm.setdefault(algorithm, certificate)
        served = [by_algorithm[algorithm] for algorithm in sorted(by_algorithm)]
        entry = SniEntry(
            key, tuple(c.lineage for c in served), tuple(dict.fromkeys(c.path for c in served))
        )
        if key in index.entries:
            index.ordered[place] = entry
        else:
            index.keys.insert(place, key)
            index.ordered.insert(place, entry)
        index.entries[key] = entry
        index.files[key] = entry.files
    problems = tuple(dict.fromkeys(index.problems[slot] for slot in sorted(index.problems)))
    table = SniTable(tuple(index.ordered), problems)
    # Its cached lookups, copied (in C) rather than built by a walk of every entry.
    table.__dict__["by_key"] = dict(index.entries)
    table.__dict__["_files"] = MappingProxyType(dict(index.files))
    index.table = table


def _choose(index: TableIndex, key: str, quiet: bool = False) -> dict[str, SniCertificate]:
    """Per key algorithm, the first lineage naming `key`; the conflicts as problems
    (unless `quiet`: a lookup for another key's entry)."""
    by_algorithm: dict[str, SniCertificate] = {}
    for place, number in index.members.get(key, ()):
        certificate = index.certificates[place]
        owner = by_algorithm.get(certificate.key_algorithm)
        if owner is None:
            by_algorithm[certificate.key_algorithm] = certificate
            if not quiet:
                index.problems.pop((place, number), None)
        elif not quiet:
            if owner.lineage != certificate.lineage:
                name = certificate.names[number]
                index.problems[(place, number)] = (
                    f"SNI name {name}: lineages {owner.lineage} and {certificate.lineage} both"
                    f" have an {certificate.key_algorithm} key and Postfix takes one per"
                    f" algorithm; {owner.lineage} serves it (narrow the other's hostnames)"
                )
            else:
                index.problems.pop((place, number), None)
    return by_algorithm


def _wildcard_of(key: str) -> str | None:
    """The wildcard key that would cover the exact key `key` (None: none can)."""
    wildcard = f".{key.partition('.')[2]}"
    return wildcard if covers(wildcard, key) else None
