"""What the state keeps of a chain (`ChainInfo`), one object per distinct chain.

Split from state.py: the state, the read cache and the planner all hold these;
at 10,000 lineages they are most of what the daemon keeps between passes.
"""

from __future__ import annotations

import datetime as dt
import sys
import weakref
from dataclasses import dataclass
from typing import Any

from danesync.chain import Chain
from danesync.matching import build_match_set
from danesync.tlsa import TlsaRecord, spki_sha256


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


def _time_to_json(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


def _time_from_json(text: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(str(text))


def _optional_time_from_json(text: Any) -> dt.datetime | None:
    return None if text is None else _time_from_json(text)
