"""Observations a pass gives the planner: DNS answers (into the RRset history),
what Postfix serves (adoption probe), and the chain files on disk."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from danesync.config import CertificateConfig, DnsMode
from danesync.history import RRset, prune, record_served, settle_intent
from danesync.plan import Problem
from danesync.ports import Offer
from danesync.runtime import CHECKING, PROBING, PassResult, Runtime
from danesync.tlsa import TlsaRecord

log = structlog.get_logger("danesync")


def _everywhere(rrsets: Iterable[RRset]) -> frozenset[TlsaRecord]:
    sets = [r.records for r in rrsets]
    return frozenset.intersection(*sets) if sets else frozenset()


def observe_dns(rt: Runtime, names: Iterable[str], result: PassResult) -> frozenset[str]:
    """Ask every server for every name and record what each serves; returns
    the names every server answered for."""
    names = sorted(set(names))
    if rt.config.dns.mode is DnsMode.OFF or not names:
        return frozenset()
    answers = rt.dns.query(names)
    if answers.problems:
        reason = "; ".join(answers.problems)
        log.error("dns.failed", reason=reason)
    # One failure per server (status shows each with since when); "dns" when
    # not even the servers could be found.
    if answers.problems and not answers.servers:
        rt.fail(result, "observe", "dns", "; ".join(answers.problems))
    else:
        rt.succeeded("observe", "dns")
    for server, problem in sorted(answers.servers.items()):
        if problem is None:
            rt.succeeded("observe", server)
        else:
            rt.fail(result, "observe", server, problem)
    now = rt.clock.wall()
    floor = rt.config.dns.rollover_wait
    for name, per_server in sorted(answers.rrsets.items()):
        history = rt.state.name(name)
        known = _everywhere(history.servers.values()) if history.servers else frozenset()
        for server, rrset in sorted(per_server.items()):
            history = record_served(history, server, rrset, now)
        if rt.dns.primary is not None:
            history = settle_intent(history, rt.dns.primary)
        history = prune(history, now, floor)
        rt.state.names[name] = history
        if name not in answers.fresh:
            continue
        after = _everywhere(per_server.values())
        before = rt.visible.get(name)
        rt.visible[name] = after
        if before is None:  # first look in this run: what the state knew is no news
            before = known
        ttl = max((r.ttl for r in per_server.values()), default=0)
        for record in sorted(after - before):
            log.info("tlsa.visible", tlsa=record.zone_line(ttl))
        for record in sorted((before - after) & history.owned):
            log.warning(
                "tlsa.missing",
                tlsa=record.zone_line(ttl),
                reason="no longer served by every server",
            )
    rt.save()
    return answers.fresh


def observe_served(
    rt: Runtime, certificates: Iterable[CertificateConfig], candidates: Mapping[str, object]
) -> dict[str, str]:
    """On adoption (nothing deployed yet), what Postfix serves now: a chain it
    already serves can be taken over without any wait."""
    served: dict[str, str] = {}
    if rt.config.postfix.probe is None or rt.config.dns.mode is DnsMode.OFF:
        return served
    certificates = list(certificates)
    # Without tls_server_sni_maps Postfix serves every SNI name its default
    # chain, so one probe answers for all (10,000 handshakes were minutes of
    # a cold start); with any map in effect, each name is asked.
    by_name: bool | None = None
    answers: dict[str | None, str | None] = {}
    for done, certificate in enumerate(certificates, 1):
        rt.progress(PROBING, done, len(certificates))
        lineage_state = rt.state.lineages.get(certificate.lineage)
        if lineage_state is not None and (lineage_state.deployed or lineage_state.inflight):
            continue
        if not isinstance(candidates.get(certificate.lineage), Offer):
            continue
        servername = certificate.hostnames[0] if certificate.sni else None
        if servername is not None:
            if by_name is None:
                by_name = rt.postfix.sni_maps_in_effect()
            if not by_name:
                servername = None
        if servername not in answers:
            answers[servername] = rt.postfix.probe_served(servername)
        fingerprint = answers[servername]
        if fingerprint is not None:
            served[certificate.lineage] = fingerprint
    return served


def read_on_disk(
    rt: Runtime, certificate: CertificateConfig, candidate: Offer | Problem | None
) -> tuple[str | None, bytes | None]:
    """The leaf of a lineage's chain file (None: missing or unreadable), and its
    bytes when they were read (not when the file holds `candidate`)."""
    if isinstance(candidate, Offer) and rt.postfix.chain_file_holds(
        certificate.lineage, candidate.digest
    ):
        return candidate.info.fingerprint, None  # no read while its stat is unchanged
    data = rt.postfix.read_chain_file(certificate.lineage)
    if data is None:
        return None, None
    offer = rt.lineages.read_deployed(certificate, data)
    return (offer.info.fingerprint if offer else None), data


def observe_on_disk(
    rt: Runtime, certificates: Iterable[CertificateConfig], candidates: Mapping[str, object]
) -> dict[str, str | None]:
    """For each deployed lineage of the pass, what its chain file holds."""
    found: dict[str, str | None] = {}
    certificates = list(certificates)
    for done, certificate in enumerate(certificates, 1):
        rt.progress(CHECKING, done, len(certificates))
        lineage_state = rt.state.lineages.get(certificate.lineage)
        if lineage_state is None or lineage_state.deployed is None:
            continue
        candidate = candidates.get(certificate.lineage)
        offer = candidate if isinstance(candidate, Offer | Problem) else None
        found[certificate.lineage] = read_on_disk(rt, certificate, offer)[0]
    return found
