"""Which SNI name gets which chain: the tls_server_sni_maps entries and the probe names.

Pure: configuration, leaf names and chain file paths in; table entries out.

Postfix looks an SNI name up verbatim, then each parent domain with a
leading dot (`a.example.net`, `.example.net`, `.net`), and serves the first
entry found, which lists one chain file per key algorithm. So:

- an SNI certificate serves every DNS name of its leaf unless `hostnames`
  narrows the list;
- a wildcard `*.example.net` is keyed `.example.net`;
- an RSA and an ECDSA lineage for the same name are one entry listing both
  files, and an exact entry also lists a covering wildcard's file of an
  algorithm it lacks (the exact entry hides the wildcard from Postfix);
- two lineages of the same algorithm for one key cannot both be served: the
  first in the configuration keeps it and the conflict is reported.

The probe must ask for a concrete name (Postfix rejects `*.example.net` as an
invalid SNI name): a wildcard is probed as `danesync-probe.example.net`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from danesync.snitable import TableIndex

PROBE_LABEL = "danesync-probe"
_LAST_TABLE: dict[None, TableIndex] = {}  # the last table built, with its index
# What a table key cannot hold: postmap splits at white space; `#` starts a
# comment; quotes, backslashes and commas are not written into keys.
_NOT_IN_KEY = re.compile(r'[\s#"\\,]')


@dataclass(frozen=True, slots=True)
class SniCertificate:
    """One SNI lineage as the table sees it."""

    lineage: str
    key_algorithm: str  # "rsa", "ecdsa", "ed25519": Postfix takes one of each per entry
    names: tuple[str, ...]  # the names it serves (`build_served_names`)
    path: str  # its chain file (a str: 10,000 Path objects were 3.5 MiB)


@dataclass(frozen=True, slots=True)
class SniEntry:
    """One line of the table: a lookup key and the lineages (and files) it serves."""

    key: str
    lineages: tuple[str, ...]
    files: tuple[str, ...]


@dataclass(frozen=True)
class SniTable:
    entries: tuple[SniEntry, ...]  # sorted by key
    problems: tuple[str, ...]  # conflicts and names that cannot be keys, one line each

    def files(self) -> Mapping[str, tuple[str, ...]]:
        """{table key: chain files}: built once per table (read-only, shared)."""
        return self._files

    @functools.cached_property
    def _files(self) -> Mapping[str, tuple[str, ...]]:
        return MappingProxyType({entry.key: entry.files for entry in self.entries})

    def entry(self, key: str) -> SniEntry | None:
        return self.by_key.get(key)

    @functools.cached_property
    def by_key(self) -> dict[str, SniEntry]:
        # A lookup per probed lineage: a linear search was quadratic at 10,000.
        return {entry.key: entry for entry in self.entries}


def leaf_dns_names(leaf: x509.Certificate) -> tuple[str, ...]:
    """The leaf's subjectAltName DNS names, lower case, in order, without repeats."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for written in san.get_values_for_type(x509.DNSName):
        name = written.lower().rstrip(".")
        if name and name not in names:
            names.append(name)
    return tuple(names)


def build_served_names(
    hostnames: Sequence[str], hostnames_set: bool, leaf_names: Sequence[str]
) -> tuple[str, ...]:
    """The names an SNI certificate serves: `hostnames` if configured, else the leaf's."""
    if hostnames_set or not leaf_names:
        return tuple(hostnames)
    return tuple(leaf_names)


def build_sni_key(name: str) -> str:
    """The table key of a name: lower case, no final dot; `*.example.net` is `.example.net`.

    Raises ValueError for what cannot be a key (IDNA names must be A-labels).
    """
    key = name.strip().lower().rstrip(".")
    if key.startswith("*."):
        key = key[1:]
    if not key or key == "." or not key.isascii() or "*" in key or _NOT_IN_KEY.search(key):
        raise ValueError(f"{name!r} is not an SNI name (IDNA names must be A-labels)")
    return key


def covers(wildcard_key: str, key: str) -> bool:
    """Whether a wildcard keyed `.example.net` covers the exact name `key` (one label)."""
    head, _, rest = key.partition(".")
    return bool(head) and not key.startswith(".") and f".{rest}" == wildcard_key


def build_sni_table(certificates: Iterable[SniCertificate]) -> SniTable:
    """The table for these SNI lineages, in configuration order (the first wins a conflict).

    The last table is kept with its index (snitable.py): a list that differs
    in a few lineages' certificates updates only the keys they name.
    """
    from danesync.snitable import build_table_index, update_table_index

    inputs = tuple(certificates)
    last = _LAST_TABLE.get(None)
    index = build_table_index(inputs) if last is None else update_table_index(last, inputs)
    _LAST_TABLE[None] = index
    return index.table


def build_sni_table_afresh(certificates: Sequence[SniCertificate]) -> SniTable:
    """The definition of the table, from scratch (`build_sni_table` keeps it up to date)."""
    # key -> algorithm -> the lineage serving it
    chosen: dict[str, dict[str, SniCertificate]] = {}
    problems: list[str] = []
    for certificate in certificates:
        for name in certificate.names:
            try:
                key = build_sni_key(name)
            except ValueError as error:
                problems.append(f"{certificate.lineage}: {error}; left out of the SNI table")
                continue
            by_algorithm = chosen.setdefault(key, {})
            owner = by_algorithm.get(certificate.key_algorithm)
            if owner is None:
                by_algorithm[certificate.key_algorithm] = certificate
            elif owner.lineage != certificate.lineage:
                problems.append(
                    f"SNI name {name}: lineages {owner.lineage} and {certificate.lineage} both"
                    f" have an {certificate.key_algorithm} key and Postfix takes one per"
                    f" algorithm; {owner.lineage} serves it (narrow the other's hostnames)"
                )
    wildcards = {key: algorithms for key, algorithms in chosen.items() if key.startswith(".")}
    entries = []
    for key in sorted(chosen):
        by_algorithm = dict(chosen[key])
        # At most one wildcard covers a name (one label): look it up, not through them all.
        wildcard_key = f".{key.partition('.')[2]}"
        if wildcard_key in wildcards and covers(wildcard_key, key):
            for algorithm, certificate in wildcards[wildcard_key].items():
                by_algorithm.setdefault(algorithm, certificate)
        served = [by_algorithm[algorithm] for algorithm in sorted(by_algorithm)]
        entries.append(
            SniEntry(
                key,
                tuple(c.lineage for c in served),
                tuple(dict.fromkeys(c.path for c in served)),
            )
        )
    return SniTable(tuple(entries), tuple(dict.fromkeys(problems)))


def build_sni_entries(certificates: Iterable[SniCertificate]) -> Mapping[str, tuple[str, ...]]:
    """{table key: chain files} for `postfix.write_sni_table`; see `build_sni_table`."""
    return build_sni_table(certificates).files()


def build_concrete_name(name: str) -> str:
    """A name a client may send as SNI: a wildcard's `*` becomes `danesync-probe`."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("*."):
        return f"{PROBE_LABEL}{name[1:]}"
    if name.startswith("."):
        return f"{PROBE_LABEL}{name}"
    return name


def build_probe_names(
    certificates: Sequence[SniCertificate],
    table: SniTable | None = None,
    lineages: Collection[str] | None = None,
) -> dict[str, str]:
    """{lineage: a concrete SNI name under which the table serves that lineage's chain}.

    A lineage that serves no name (all taken by others) is left out. A
    concrete name is preferred to a wildcard's made-up one; a made-up name
    that happens to be a key of its own is not used. `lineages`: only those
    (None: all).
    """
    table = table or build_sni_table(certificates)
    keys = table.by_key
    names: dict[str, str] = {}
    for certificate in certificates:
        if lineages is not None and certificate.lineage not in lineages:
            continue
        candidates = []
        for name in certificate.names:
            try:
                key = build_sni_key(name)
            except ValueError:
                continue
            entry = table.entry(key)
            if entry is None or certificate.lineage not in entry.lineages:
                continue
            concrete = build_concrete_name(key)
            if key.startswith(".") and concrete in keys:
                continue  # an exact entry of its own would answer instead
            candidates.append((key.startswith("."), concrete))
        if candidates:
            names[certificate.lineage] = min(candidates, key=lambda c: c[0])[1]
    return names
