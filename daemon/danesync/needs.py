"""Which TLSA records each lineage needs: the one definition. Pure.

Watcher (partial) passes and full passes both ask this module, with today's
configuration, so they never disagree about what to publish or retire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    return frozenset(records)


@dataclass(frozen=True)
class Holding:
    """The chains a lineage may serve now or soon: deployed, in flight, candidate."""

    lineage: str
    names: tuple[str, ...]  # its TLSA owner names (today's config)
    chains: tuple[ChainInfo, ...]
    certificate: CertificateConfig | None  # None: no longer configured


def build_holdings(
    config: Config, state: State, held: Mapping[str, ChainInfo | None]
) -> tuple[Holding, ...]:
    """Per lineage, the chains whose records are needed.

    `held` maps the lineages decided in this pass to their candidate when it
    is held or deploying (None: no candidate to keep); the other lineages keep
    the candidate the state says is pending.
    """
    holdings = []
    configured = set()
    lineages = state.lineages
    for certificate in config.certificates:
        lineage = certificate.lineage
        configured.add(lineage)
        lineage_state = lineages.get(lineage)
        if lineage_state is None:
            deployed = inflight = None
            candidate = held.get(lineage)
        else:
            deployed, inflight = lineage_state.deployed, lineage_state.inflight
            candidate = held.get(lineage, lineage_state.pending)
        # The same Holding object while nothing of it changed: what is built
        # from it (build_holding_records) is then found by identity.
        inputs = (certificate, deployed, inflight, candidate)
        holdings.append(_HOLDINGS.get(lineage, inputs, _holding))
    # A lineage dropped from the config is served until the next deploy rewrites
    # Postfix's parameters: its records, as captured, stay needed until then.
    dropped = [
        (lineage, lineage_state.deployed)
        for lineage, lineage_state in state.lineages.items()
        if lineage not in configured and lineage_state.deployed is not None
    ]
    for lineage, info in sorted(dropped, key=lambda item: item[0]):
        names = tuple(sorted({r.name for r in info.tlsa}))
        holdings.append(Holding(lineage, names, (info,), None))
    return tuple(holdings)


def _holding(
    inputs: tuple[CertificateConfig, ChainInfo | None, ChainInfo | None, ChainInfo | None],
) -> Holding:
    certificate, deployed, inflight, candidate = inputs
    chains = tuple(info for info in (deployed, inflight, candidate) if info is not None)
    return Holding(certificate.lineage, certificate.tlsa, chains, certificate)


# Lineage -> its Holding and its records by owner name, with the inputs they were built from:
# a pass over 10,000 lineages rebuilds only the lineages whose chains or
# config changed (docs/benchmarks.md, "One SNI renewal pass").
_HOLDINGS: SlotMemo[str, Holding] = SlotMemo()
_HOLDING_RECORDS: SlotMemo[str, tuple[tuple[str, frozenset[TlsaRecord]], ...]] = SlotMemo()


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
            needed[name] = records if present is None else present | records
    return needed


def build_holding_records(
    holding: Holding, extra: tuple[TlsaRecord, ...] = ()
) -> tuple[tuple[str, frozenset[TlsaRecord]], ...]:
    """One lineage's needed records, grouped by owner name; remembered while
    everything they are built from is unchanged."""
    # Everything the records are built from, compared by value (the Holding's
    # chains and config, which build_chain_records reads, and the extra records).
    inputs = (holding, extra)
    return _HOLDING_RECORDS.get(holding.lineage, inputs, _group)


def _group(
    inputs: tuple[Holding, tuple[TlsaRecord, ...]],
) -> tuple[tuple[str, frozenset[TlsaRecord]], ...]:
    holding, extra = inputs
    by_name: dict[str, set[TlsaRecord]] = {}
    for chain in holding.chains:
        if holding.certificate is None:
            records = frozenset(chain.tlsa)
        else:
            records = build_chain_records(holding.certificate, chain, extra)
        for record in records:
            by_name.setdefault(record.name, set()).add(record)
    return tuple((name, frozenset(records)) for name, records in sorted(by_name.items()))
