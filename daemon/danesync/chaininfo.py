"""What the state keeps of a chain (`ChainInfo`), one object per distinct chain.

Split from state.py: the state, the read cache and the planner all hold these;
at 10,000 lineages they are most of what the daemon keeps between passes.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, cast

from danesync.chain import Chain
from danesync.matching import build_match_set
from danesync.tlsa import TlsaRecord, spki_sha256


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """What the state keeps of a chain: enough to know what Postfix serves,
    which TLSA records match it, and when it expires.

    `fingerprint` (SHA-256 of the leaf's DER: the data of its 3 0 1) and
    `leaf_spki` (of its 3 1 1) are also the MatchSet's digests: when they are,
    they are read from there, not kept a second time as strings (10,000
    lineages: 2.2 MiB). Every reader, ==, hash, repr and `to_json` see the
    same strings as before (`_read_from_matches` below).
    """

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
    matches: AbstractSet[str]  # rdata of every usable TLSA record that matches it (MatchSet)
    tlsa: tuple[TlsaRecord, ...] = ()  # records it needed when read (for display)

    def __post_init__(self) -> None:
        matches = self.matches
        if isinstance(matches, MatchSet):
            for slot, kind in _DERIVED:
                if slot.__get__(self) == matches.leaf_digest(kind):
                    slot.__set__(self, None)  # read from `matches` from now on

    @classmethod
    def from_chain(cls, chain: Chain) -> ChainInfo:
        from cryptography import x509

        from danesync.chain import _not_before

        try:
            san = chain.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = tuple(sys.intern(n) for n in san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ()
        return cls(
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
            matches=MatchSet.of(build_match_set(chain.leaf, chain.intermediates)),
            tlsa=chain.tlsa,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "serial": self.serial,
            "not_before": time_to_json(self.not_before),
            "not_after": time_to_json(self.not_after),
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
        return cls(
            fingerprint=str(data["fingerprint"]),
            serial=str(data["serial"]),
            not_before=time_from_json(data["not_before"]),
            not_after=time_from_json(data["not_after"]),
            issuer=sys.intern(str(data["issuer"])),
            key_algorithm=sys.intern(str(data["key_algorithm"])),
            version=int(data["version"]),
            names=tuple(sys.intern(str(n)) for n in data["names"]),  # as the config's
            leaf_spki=str(data["leaf_spki"]),
            issuer_spki=_intern(data.get("issuer_spki")),
            matches=MatchSet.of(str(m) for m in data["matches"]),
            tlsa=tuple(TlsaRecord.from_key(key) for key in data.get("tlsa", [])),
        )


def _read_from_matches(name: str, kind: tuple[str, str]) -> Any:
    """Make ChainInfo's field `name` a property over its slot: the slot's
    string, or (None) the MatchSet's digest of `kind`. The generated __init__
    sets it through the property, __post_init__ clears it when it is derivable."""
    slot = ChainInfo.__dict__[name]  # the member descriptor of `slots=True`

    def read(info: ChainInfo) -> str:
        value = slot.__get__(info)
        return value if value is not None else cast(MatchSet, info.matches).leaf_digest(kind)

    setattr(ChainInfo, name, property(read, slot.__set__, doc=f"{name} (see ChainInfo)"))
    return slot


# The leaf's own rdata, in the order of MatchSet._leaf: (selector, matching type)
# -> the slice of the digests. SHA-256 32 bytes, SHA-512 64.
_LEAF_SLICES = {
    ("0", "1"): (0, 32),
    ("0", "2"): (32, 96),
    ("1", "1"): (96, 128),
    ("1", "2"): (128, 192),
}
_FINGERPRINT = ("0", "1")  # 3 0 1: SHA-256 of the leaf's DER
_LEAF_SPKI = ("1", "1")  # 3 1 1: SHA-256 of the leaf's SPKI
_DERIVED = (
    (_read_from_matches("fingerprint", _FINGERPRINT), _FINGERPRINT),
    (_read_from_matches("leaf_spki", _LEAF_SPKI), _LEAF_SPKI),
)
_ISSUERS: dict[frozenset[str], frozenset[str]] = {}  # one object per distinct issuer part


class MatchSet(AbstractSet[str]):
    """The rdata ("u s m hex") of the TLSA records a chain satisfies, compactly:
    the leaf's four DANE-EE digests as one bytes value, and the issuers'
    DANE-TA rdata as a frozenset shared by every chain of those issuers.

    A set of strings to every reader (`in`, iteration, `&`, ==, hash as the
    equal frozenset). At 10,000 lineages the frozenset of eight strings per
    chain was 1.3 KB of the state's memory, this is about 0.3 KB.
    """

    __slots__ = ("_cached_hash", "_issuer", "_leaf")

    def __init__(self, leaf: bytes, issuer: frozenset[str]) -> None:
        self._leaf = leaf
        self._issuer = _ISSUERS.setdefault(issuer, issuer)
        self._cached_hash: int | None = None

    @classmethod
    def of(cls, rdata: Iterable[str]) -> AbstractSet[str]:
        """A MatchSet equal to frozenset(rdata); that frozenset for any other shape."""
        everything = frozenset(rdata)
        leaf = {}
        issuer = []
        for item in everything:
            parts = item.split(" ")
            if parts[0] == "3" and len(parts) == 4 and (parts[1], parts[2]) in _LEAF_SLICES:
                leaf[(parts[1], parts[2])] = parts[3]
            elif parts[0] == "2":
                issuer.append(item)
            else:
                return everything
        try:
            digests = b"".join(bytes.fromhex(leaf[k]) for k in _LEAF_SLICES)
        except (KeyError, ValueError):
            return everything
        found = cls(digests, frozenset(sys.intern(i) for i in issuer))
        # Only when it gives back exactly these strings (lowercase hex, right sizes).
        return found if len(digests) == 192 and frozenset(found) == everything else everything

    def leaf_digest(self, kind: tuple[str, str]) -> str:
        """The hex data of the leaf's (selector, matching type) record."""
        start, end = _LEAF_SLICES[kind]
        return self._leaf[start:end].hex()

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        if item.startswith("3 "):
            parts = item.split(" ")
            where = _LEAF_SLICES.get((parts[1], parts[2])) if len(parts) == 4 else None
            return where is not None and self._leaf[where[0] : where[1]].hex() == parts[3]
        return item in self._issuer

    def __iter__(self) -> Iterator[str]:
        for (selector, matching), (start, end) in _LEAF_SLICES.items():
            yield f"3 {selector} {matching} {self._leaf[start:end].hex()}"
        yield from self._issuer

    def __len__(self) -> int:
        return len(_LEAF_SLICES) + len(self._issuer)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MatchSet):
            return self._leaf == other._leaf and self._issuer == other._issuer
        return super().__eq__(other)

    def __hash__(self) -> int:
        if self._cached_hash is None:
            self._cached_hash = hash(frozenset(self))  # equal to the equal frozenset's
        return self._cached_hash

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset[Any]:
        return frozenset(it)  # what `&`, `|`, `-` give: plain sets

    def __repr__(self) -> str:
        return f"MatchSet({sorted(self)!r})"


def _intern(text: object) -> str | None:
    # The issuer's values repeat across thousands of lineages: one string each.
    return None if text is None else sys.intern(str(text))


def time_to_json(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


def time_from_json(text: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text))


def optional_time_from_json(text: Any) -> dt.datetime | None:
    return None if text is None else time_from_json(text)
