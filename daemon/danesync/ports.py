"""The small interfaces the service drives: Postfix, DNS, lineages, clock, state.

The service and its step executor only talk to these, so the same code runs
against the real programs (adapters.py) and against the in-memory world of
the simulation (tests/sim/).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from danesync.config import CertificateConfig
from danesync.history import RRset
from danesync.plan import Problem
from danesync.state import ChainInfo, Loaded, State
from danesync.tlsa import TlsaRecord

if TYPE_CHECKING:  # dnspython only where DNS is used (realdns.RealDns)
    from danesync.actions.dns import UpdateResult


@dataclass(frozen=True, slots=True)
class Offer:
    """A validated chain: what the planner reasons about, and the bytes to deploy.

    `source` is the bytes, or a function that reads them from the disk (and
    validates them again) when a deploy needs them: a pass over 10,000 cached
    lineages reads no archive file. `digest` (SHA-256 of the bytes) is what a
    deployed file is compared with.
    """

    info: ChainInfo
    source: bytes | Callable[[], bytes] = field(repr=False)  # contains the key
    digest: bytes = field(default=b"", repr=False)
    ari: AriTarget | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.digest:
            if not isinstance(self.source, bytes):
                raise ValueError("an Offer read later needs the digest of its bytes")
            object.__setattr__(self, "digest", hashlib.sha256(self.source).digest())

    @property
    def pem(self) -> bytes:
        """The bytes to deploy; ValueError if the lineage changed since it was validated."""
        return self.source if isinstance(self.source, bytes) else self.source()


@dataclass(frozen=True, slots=True)
class AriTarget:
    """What ARI monitoring needs of a candidate leaf between passes."""

    chain: ChainInfo  # the leaf (its own object: no fingerprint string per lineage)
    identifier: str | None  # RFC 9773 certificate identifier
    problem: str | None  # why there is none

    @property
    def fingerprint(self) -> str:
        return self.chain.fingerprint

    @property
    def not_after(self) -> dt.datetime:
        return self.chain.not_after


class OfferPems(Mapping[str, bytes]):
    """fingerprint -> bytes to deploy, read only for the offers a deploy takes.

    Indexed at the first look, not before: a pass that deploys nothing (every
    warm start) does not make a fingerprint string per offer (ChainInfo
    derives them; 10,000 lineages: 1 MiB at the pass's peak)."""

    def __init__(self, offers: Iterable[Offer]) -> None:
        self._given: tuple[Offer, ...] | None = tuple(offers)
        self._index: dict[str, Offer] = {}

    @property
    def _offers(self) -> dict[str, Offer]:
        if self._given is not None:
            self._index = {offer.info.fingerprint: offer for offer in self._given}
            self._given = None
        return self._index

    def __getitem__(self, fingerprint: str) -> bytes:
        return self._offers[fingerprint].pem

    def __iter__(self) -> Iterator[str]:
        return iter(self._offers)

    def __len__(self) -> int:
        return len(self._offers)


@dataclass(frozen=True)
class ProbeRequest:
    """Confirm that Postfix serves `fingerprint` to a client asking like this."""

    lineage: str
    fingerprint: str
    servername: str | None
    key_algorithm: str | None


# Called with a lineage and whether its probe saw the new leaf.
ProbeResult = Callable[[str, bool], None]


@dataclass(frozen=True)
class Answers:
    """One look at DNS: per owner name, per server, the RRset it serves."""

    rrsets: Mapping[str, Mapping[str, RRset]]
    problems: tuple[str, ...] = ()  # one line per server and name that could not be asked
    fresh: frozenset[str] = frozenset()  # names every server answered for
    # Per server asked: the first reason it could not be asked, or None (answered
    # everything): what `status` shows per DNS server, with since when.
    servers: Mapping[str, str | None] = field(default_factory=dict)


class Clock(Protocol):
    def wall(self) -> dt.datetime: ...

    def monotonic(self) -> float: ...

    def boot(self) -> str:
        """Identifies the monotonic clock's epoch (this boot)."""
        ...


class PostfixPort(Protocol):
    def chain_path(self, lineage: str) -> str: ...

    def read_chain_file(self, lineage: str) -> bytes | None: ...

    def chain_file_holds(self, lineage: str, digest: bytes) -> bool:
        """The chain file holds exactly the bytes whose SHA-256 is `digest`."""
        ...

    def install_chain_file(self, lineage: str, pem: bytes) -> None: ...

    def install_chain_files(self, pems: Mapping[str, bytes]) -> None:
        """`install_chain_file` for every lineage of `pems`, flushed once."""
        ...

    def restore_chain_file(self, lineage: str) -> bool: ...

    def sni_table_exists(self) -> bool: ...

    def sni_maps_value(self) -> str: ...

    def write_sni_table(
        self, entries: Mapping[str, Sequence[str]], changed: Set[str] | None = None
    ) -> None: ...

    def write_parameter_changes(self, wanted: Mapping[str, str | None]) -> dict[str, str | None]:
        """Set what differs; return the previous values of what changed (None: absent)."""
        ...

    def write_parameters(self, values: Mapping[str, str | None]) -> None: ...

    def reload(self) -> None: ...

    def confirm_served(
        self, requests: Sequence[ProbeRequest], on_result: ProbeResult | None = None
    ) -> dict[str, bool]:
        """Per lineage: did the probe see the expected leaf? `on_result` is called
        in the caller's thread with each lineage's outcome as soon as it is known."""
        ...

    def probe_served(self, servername: str | None) -> str | None:
        """The fingerprint of the leaf Postfix serves now; None if it cannot be asked."""
        ...

    def sni_maps_in_effect(self) -> bool:
        """Postfix may serve an SNI name a chain of its own (tls_server_sni_maps is
        set, or cannot be read); False: every name is served the default chain."""
        ...


class DnsPort(Protocol):
    primary: str | None  # the server updates go to, as history keys it

    def query(self, names: Sequence[str]) -> Answers: ...

    def update(
        self,
        add: Sequence[TlsaRecord],
        delete: Sequence[TlsaRecord],
        ttl: int,
        expected: Mapping[str, frozenset[TlsaRecord]],
    ) -> UpdateResult: ...


class LineagePort(Protocol):
    def read_candidate(
        self, certificate: CertificateConfig, now: dt.datetime
    ) -> Offer | Problem: ...

    def read_deployed(self, certificate: CertificateConfig, data: bytes) -> Offer | None:
        """The chain in a deployed file's bytes; None if it cannot be read back."""
        ...

    def flush(self) -> None:
        """Keep what the reads learnt for the next start (the read cache)."""
        ...


class StatePort(Protocol):
    def load(self) -> Loaded: ...

    def save(self, state: State) -> None: ...
