"""Which TLSA records each lineage needs: the one definition. Pure.

Watcher (partial) passes and full passes both ask this module, with today's
configuration, so they never disagree about what to publish or retire.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from danesync.config import CertificateConfig, Config
from danesync.memo import SlotMemo
from danesync.state import ChainInfo, State
from danesync.tlsa import TlsaRecord, Usage, absolute_name


def build_chain_records(
    certificate: CertificateConfig,
    chain: ChainInfo,
    extra_records: Iterable[TlsaRecord] = (),
) -> frozenset[TlsaRecord]:
    """The records `chain` needs under today's config of its lineage.

    `extra_records` are records to publish beside them for this certificate
    (pre-published issuer families, say); they are needed as long as the
    chain is.
    """
    records: set[TlsaRecord] = set(extra_records)
    for usage in certificate.usages:
        if usage is Usage.DANE_TA:
            if chain.issuer_spki is None:
                continue
            number, data = 2, chain.issuer_spki
        else:
            number, data = 3, chain.leaf_spki
        for name in certificate.tlsa:
            records.add(TlsaRecord(absolute_name(name), number, 1, 1, data))
    built = frozenset(records)
    # The records the chain was read with, when they are these (the usual
    # case): the state's own objects, not a copy of each record and its name
    # per lineage (about 2 MiB kept between passes at 10,000 lineages).
    captured = frozenset(chain.tlsa)
    return captured if captured == built else built


@dataclass(frozen=True, slots=True)
class Holding:
    """The chains a lineage may serve now or soon: deployed, in flight, candidate."""

    lineage: str
    names: tuple[str, ...]  # its TLSA owner names (today's config)
    chains: tuple[ChainInfo, ...]
    certificate: CertificateConfig | None  # None: no longer configured


@dataclass(frozen=True)
class ConfigIndex:
    """What a pass looks up in the configured certificates, built once per list
    of certificates: a renewal among 10,000 then walks none of them."""

    certificates: tuple[CertificateConfig, ...]  # the first of each lineage, in order
    position: Mapping[str, int]  # lineage -> its place in the configuration
    # owner name (as configured, and absolute) -> the lineages with a TLSA name there
    by_name: Mapping[str, tuple[str, ...]]
    defaults: tuple[CertificateConfig, ...]  # those with sni = false
    sni: tuple[CertificateConfig, ...]  # those with sni = true

    # The lineages are the keys of `position`, not a frozenset of their own
    # (two of them were 1 MiB at 10,000 lineages).
    @property
    def lineages(self) -> AbstractSet[str]:
        return self.position.keys()

    def any_sni(self, lineages: Iterable[str]) -> bool:
        """Whether one of `lineages` is a configured SNI lineage."""
        position, certificates = self.position, self.certificates
        return any(n in position and certificates[position[n]].sni for n in lineages)


def build_config_index(config: Config) -> ConfigIndex:
    """The index of `config.certificates` (remembered while they are equal)."""
    return build_index_of(config.certificates)


def build_index_of(certificates: tuple[CertificateConfig, ...]) -> ConfigIndex:
    return _INDEX.get(None, certificates, _build_config_index)


def _build_config_index(configured: tuple[CertificateConfig, ...]) -> ConfigIndex:
    first: dict[str, CertificateConfig] = {}
    for certificate in configured:
        first.setdefault(certificate.lineage, certificate)  # as Config.certificate()
    certificates = tuple(first.values())
    by_name: dict[str, list[str]] = {}
    for certificate in certificates:
        for name in certificate.tlsa:
            for key in dict.fromkeys((name, absolute_name(name))):
                by_name.setdefault(key, []).append(certificate.lineage)
    return ConfigIndex(
        certificates,
        {lineage: index for index, lineage in enumerate(first)},
        {name: tuple(dict.fromkeys(lineages)) for name, lineages in by_name.items()},
        tuple(c for c in certificates if not c.sni),
        tuple(c for c in certificates if c.sni),
    )


def build_holdings(
    config: Config,
    state: State,
    held: Mapping[str, ChainInfo | None],
    lineages: Iterable[str] | None = None,
) -> tuple[Holding, ...]:
    """Per lineage, the chains whose records are needed.

    `held` maps the lineages decided in this pass to their candidate when it
    is held or deploying (None: no candidate to keep); the other lineages keep
    the candidate the state says is pending. `lineages`: only these configured
    lineages (None: every one); the holdings come in configuration order, and
    every lineage dropped from the configuration is always among them.
    """
    index = build_config_index(config)
    if lineages is None:
        certificates: Iterable[CertificateConfig] = index.certificates
    else:
        wanted = sorted(
            (index.position[n] for n in set(lineages) if n in index.position),
        )
        certificates = [index.certificates[i] for i in wanted]
    holdings = []
    states = state.lineages
    for certificate in certificates:
        lineage = certificate.lineage
        lineage_state = states.get(lineage)
        if lineage_state is None:
            deployed = inflight = None
            candidate = held.get(lineage)
        else:
            deployed, inflight = lineage_state.deployed, lineage_state.inflight
            candidate = held.get(lineage, lineage_state.pending)
        # The same Holding object while nothing of it changed: what is built
        # from it (build_holding_records) is then found by identity.
        kept = _KEPT.get(lineage)
        if kept is None:
            kept = _KEPT[lineage] = _Kept()
        elif (
            kept.holding is not None
            and _same(kept.certificate, certificate)
            and _same(kept.deployed, deployed)
            and _same(kept.inflight, inflight)
            and _same(kept.candidate, candidate)
        ):
            holdings.append(kept.holding)
            continue
        kept.certificate, kept.deployed = certificate, deployed
        kept.inflight, kept.candidate = inflight, candidate
        kept.holding = _holding(certificate, deployed, inflight, candidate)
        holdings.append(kept.holding)
    # A lineage dropped from the config is served until the next deploy rewrites
    # Postfix's parameters: its records, as captured, stay needed until then.
    dropped = [
        (lineage, info)
        for lineage in states.keys() - index.lineages
        if (info := states[lineage].deployed) is not None
    ]
    for lineage, info in sorted(dropped, key=lambda item: item[0]):
        names = tuple(sorted({r.name for r in info.tlsa}))
        holdings.append(Holding(lineage, names, (info,), None))
    return tuple(holdings)


def _holding(
    certificate: CertificateConfig,
    deployed: ChainInfo | None,
    inflight: ChainInfo | None,
    candidate: ChainInfo | None,
) -> Holding:
    chains = tuple(info for info in (deployed, inflight, candidate) if info is not None)
    return Holding(certificate.lineage, certificate.tlsa, chains, certificate)


def _same(kept: object, given: object) -> bool:
    """Equal inputs, as a tuple of them compares (identity first, then ==)."""
    return kept is given or kept == given


# A lineage's records at one owner name: a frozenset, or the state's own tuple
# of a chain's records (`ChainInfo.tlsa`) when they are exactly those.
Records = Collection[TlsaRecord]
Groups = tuple[tuple[str, Records], ...]


@dataclass(slots=True, eq=False)
class _Kept:
    """What is remembered of one lineage between passes (memo.py's rule: a
    result is reused only while every input it was built from is equal): its
    Holding with the inputs it was built from, and its records by owner name
    with theirs. One slotted object per lineage, not a tuple of inputs and a
    tuple per result (about 1 MiB at 10,000 lineages). Records at one owner
    name (the usual case) are kept as `name` and `records`, the chain's own
    tuple where it holds them, without a frozenset and a tuple of pairs of
    their own (3 MiB at 10,000 lineages)."""

    certificate: CertificateConfig | None = None
    deployed: ChainInfo | None = None
    inflight: ChainInfo | None = None
    candidate: ChainInfo | None = None
    holding: Holding | None = None  # built from the four above
    grouped: Holding | None = None  # what the records were built from, with `extra`
    extra: tuple[TlsaRecord, ...] = ()
    name: str | None = None  # the one owner name of the records, or None: see `groups`
    records: Records = ()
    groups: Groups | None = None


# Lineage -> its Holding and its records by owner name, with the inputs they were built from:
# a pass over 10,000 lineages rebuilds only the lineages whose chains or
# config changed (docs/benchmarks.md, "One SNI renewal pass").
_KEPT: dict[str, _Kept] = {}
_INDEX: SlotMemo[None, ConfigIndex] = SlotMemo()


def build_needed_records(
    holdings: Iterable[Holding],
    extra_records: Mapping[str, Iterable[TlsaRecord]] | None = None,
) -> dict[str, frozenset[TlsaRecord]]:
    """Owner name -> every record needed there, over all lineages.

    `extra_records` maps a lineage to records to pre-publish for it.
    """
    needed: dict[str, frozenset[TlsaRecord]] = {}
    for holding in holdings:
        extra = tuple((extra_records or {}).get(holding.lineage, ()))
        for name, records in build_holding_records(holding, extra):
            present = needed.get(name)
            needed[name] = frozenset(records) if present is None else present.union(records)
    return needed


def build_holding_records(holding: Holding, extra: tuple[TlsaRecord, ...] = ()) -> Groups:
    """One lineage's needed records, grouped by owner name; remembered while
    everything they are built from is unchanged."""
    # Everything the records are built from, compared by value (the Holding's
    # chains and config, which build_chain_records reads, and the extra records).
    kept = _KEPT.get(holding.lineage)
    if kept is None:
        kept = _KEPT[holding.lineage] = _Kept()
    elif kept.grouped is not None and _same(kept.grouped, holding) and _same(kept.extra, extra):
        if kept.name is not None:
            return ((kept.name, kept.records),)
        if kept.groups is not None:
            return kept.groups
    single = _one_name(holding, extra)
    groups = (single,) if single is not None else _group(holding, extra)
    kept.grouped, kept.extra = holding, extra
    kept.name, kept.records = single if single is not None else (None, ())
    kept.groups = None if single is not None else groups
    return groups


def _one_name(holding: Holding, extra: tuple[TlsaRecord, ...]) -> tuple[str, Records] | None:
    """One chain's records when they all have one owner name (the usual case
    between renewals): as the chain holds them where they are exactly its own."""
    if len(holding.chains) != 1 or holding.certificate is None:
        return None
    chain = holding.chains[0]
    records = build_chain_records(holding.certificate, chain, extra)
    names = {record.name for record in records}
    if len(names) != 1:
        return None
    return names.pop(), chain.tlsa if records == frozenset(chain.tlsa) else records


def _group(holding: Holding, extra: tuple[TlsaRecord, ...]) -> Groups:
    by_name: dict[str, set[TlsaRecord]] = {}
    for chain in holding.chains:
        if holding.certificate is None:
            records = frozenset(chain.tlsa)
        else:
            records = build_chain_records(holding.certificate, chain, extra)
        for record in records:
            by_name.setdefault(record.name, set()).add(record)
    return tuple((name, frozenset(records)) for name, records in sorted(by_name.items()))
