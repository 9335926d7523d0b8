"""The SNI lineages as the table sees them (`sni.SniCertificate`), kept up to
date by what changed. Pure: configuration, chains and chain paths in.

A deploy among 10,000 lineages asks for them four times (the table, its
problems, the parameters, the probe names), each time with every deployed
chain. Built from scratch that is a walk over every SNI certificate; here
the last answer is kept with what it was built from, and only the lineages
whose chain object changed are built again. Anything else that changed (the
configured certificates, the set of deployed lineages, the path adapter)
builds the whole list again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from danesync.config import CertificateConfig
from danesync.memo import SlotMemo
from danesync.sni import SniCertificate, build_served_names
from danesync.state import ChainInfo


def build_sni_certificate(
    certificate: CertificateConfig, info: ChainInfo, path: str
) -> SniCertificate:
    """One SNI lineage: the same object while nothing it is built from changed (a
    renewal with the same names, key type and file), so that the table built
    from all of them is found again by identity."""
    inputs = (
        certificate.lineage,
        certificate.hostnames,
        certificate.hostnames_set,
        info.key_algorithm,
        info.names,
        path,
    )
    return _CERTIFICATES.get(certificate.lineage, inputs, _sni_certificate)


def _sni_certificate(
    inputs: tuple[str, tuple[str, ...], bool, str, tuple[str, ...], str],
) -> SniCertificate:
    lineage, hostnames, hostnames_set, key_algorithm, leaf_names, path = inputs
    names = build_served_names(hostnames, hostnames_set, leaf_names)
    return SniCertificate(lineage, key_algorithm, names, path)


_CERTIFICATES: SlotMemo[str, SniCertificate] = SlotMemo()


@dataclass(frozen=True)
class _Built:
    """One answer and everything it was built from."""

    configured: tuple[CertificateConfig, ...]
    chains: dict[str, ChainInfo]  # a copy: the caller's mapping may change
    path_of: object
    result: tuple[SniCertificate, ...]
    position: dict[str, int]  # lineage -> its place in `result`
    certificate: dict[str, CertificateConfig]  # the SNI lineages in `result`


def build_sni_certificates(
    configured: tuple[CertificateConfig, ...],
    chains: Mapping[str, ChainInfo],
    chain_path: Callable[[str], str],
    path_of: object,
) -> tuple[SniCertificate, ...]:
    """The SNI certificates among `configured` that have a chain in `chains`, in order.

    `chain_path` gives a lineage's chain file; `path_of` is what it belongs to
    (the same object answers the same path for a lineage for as long as it lives).
    """
    last = _LAST.get(None)
    if (
        last is None
        or last.configured is not configured
        or last.path_of is not path_of
        or last.chains.keys() != chains.keys()
    ):
        built = _build(configured, chains, chain_path, path_of)
    elif last.chains == chains:  # in C, values compared by identity first: the usual answer
        return last.result
    else:
        changed = [name for name, info in chains.items() if last.chains[name] is not info]
        result = list(last.result)
        for name in changed:
            place = last.position.get(name)
            if place is not None:  # an SNI lineage
                result[place] = build_sni_certificate(
                    last.certificate[name], chains[name], chain_path(name)
                )
        built = _Built(
            configured, dict(chains), path_of, tuple(result), last.position, last.certificate
        )
    _LAST[None] = built
    return built.result


def _build(
    configured: tuple[CertificateConfig, ...],
    chains: Mapping[str, ChainInfo],
    chain_path: Callable[[str], str],
    path_of: object,
) -> _Built:
    result: list[SniCertificate] = []
    position: dict[str, int] = {}
    certificates: dict[str, CertificateConfig] = {}
    for certificate in configured:
        info = chains.get(certificate.lineage)
        if not certificate.sni or info is None or certificate.lineage in position:
            continue  # the first of a lineage counts, as Config.certificate()
        position[certificate.lineage] = len(result)
        certificates[certificate.lineage] = certificate
        result.append(build_sni_certificate(certificate, info, chain_path(certificate.lineage)))
    return _Built(configured, dict(chains), path_of, tuple(result), position, certificates)


_LAST: dict[None, _Built] = {}  # the last answer (one daemon, one configuration)
