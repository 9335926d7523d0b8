"""The DANE self-check from outside: what a sender sees, whoever caused it.

For every TLSA owner name in the configuration, connect to `postfix.probe`
as a DANE sender would (STARTTLS, SNI = the TLSA base domain, once per key
algorithm the server offers), ask every verify server (and the system's
resolver, when it validates: AD bit) for the RRset, and judge each served
chain against each distinct RRset with `danesync.dane.judge_dane`. It catches
what danesync did not cause: a record changed by hand, main.cf edited by
hand, another tool's reload.

`danesync check` runs it once; the daemon runs it every `monitor.check_interval`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from danesync.actions import probe
from danesync.config import Config
from danesync.dane import Outcome, base_domain, judge_dane
from danesync.errors import DnsError, ProbeError
from danesync.health import DaneCheck
from danesync.tlsa import TlsaRecord

if TYPE_CHECKING:
    from danesync.actions import dns as dns_actions
    from danesync.published import Published

log = structlog.get_logger("danesync")

WORKERS = 8  # names checked side by side
# Seconds one run may take: the loop (and systemd's watchdog ping) waits for it.
# A host with more names than fit is checked round-robin over several runs.
BUDGET = 20.0
ALGORITHMS = ("ecdsa", "rsa")  # Postfix serves at most one default chain of each


@dataclass(frozen=True)
class Served:
    """One chain the server sent for a name, or why none came."""

    chain: tuple[bytes, ...] = ()
    error: str | None = None

    @property
    def key_algorithm(self) -> str | None:
        if not self.chain:
            return None
        try:
            key = x509.load_der_x509_certificate(self.chain[0]).public_key()
        except ValueError:
            return None
        if isinstance(key, rsa.RSAPublicKey):
            return "rsa"
        if isinstance(key, ec.EllipticCurvePublicKey):
            return "ecdsa"
        return type(key).__name__.removesuffix("PublicKey").lower()

    @property
    def fingerprint(self) -> str | None:
        return hashlib.sha256(self.chain[0]).hexdigest() if self.chain else None


def build_checks(
    name: str,
    lineages: Sequence[str],
    served: Sequence[Served],
    published: Sequence[Published],
    now: dt.datetime,
    deployed: Mapping[str, str] | None = None,
) -> tuple[DaneCheck, ...]:
    """Judge every served chain against every distinct published RRset. Pure.

    `deployed` maps lineage -> the SHA-256 of its deployed leaf (DER), to say
    which lineage a served chain is; without a match the name's lineages are
    all named.
    """
    checks: list[DaneCheck] = []
    all_lineages = ", ".join(lineages) or "(unconfigured)"
    rrsets: dict[frozenset[TlsaRecord], list[str]] = {}
    for answer in published:
        if answer.error is not None:
            checks.append(DaneCheck(all_lineages, name, answer.source, "error", answer.error, now))
        else:
            rrsets.setdefault(answer.records, []).append(answer.source)
    for chain in served:
        if chain.error is not None or not chain.chain:
            reason = chain.error or "no certificate served"
            checks.append(DaneCheck(all_lineages, name, "probe", "error", reason, now))
            continue
        owner = [
            lineage for lineage in lineages if (deployed or {}).get(lineage) == chain.fingerprint
        ]
        lineage = ", ".join(owner) if owner else all_lineages
        for records, sources in rrsets.items():
            verdict = judge_dane(chain.chain, records, [base_domain(name)], now)
            checks.append(
                DaneCheck(
                    lineage=lineage,
                    name=name,
                    source=", ".join(sources),
                    outcome=verdict.outcome.value,
                    reason=verdict.reason,
                    checked_at=now,
                    key_algorithm=chain.key_algorithm,
                    serial=verdict.leaf_serial,
                    issuer=verdict.leaf_issuer,
                    published=tuple(sorted(r.rdata for r in records)),
                )
            )
    return tuple(checks)


def names_to_check(config: Config) -> dict[str, list[str]]:
    """TLSA owner name -> the lineages that publish under it, in config order."""
    names: dict[str, list[str]] = {}
    for certificate in config.certificates:
        for name in certificate.tlsa:
            names.setdefault(name, []).append(certificate.lineage)
    return names


def read_served(host: str, port: int, servername: str, timeout: float = 5) -> list[Served]:
    """Every chain Postfix serves to a sender asking for `servername`, one per key type."""
    chains: dict[bytes, Served] = {}
    errors: list[str] = []
    for algorithm in ALGORITHMS:
        try:
            chain = probe.probe_served_chain(
                host, port, servername, timeout, key_algorithm=algorithm
            )
        except ProbeError as error:
            errors.append(str(error))
            continue
        chains.setdefault(chain[0], Served(chain))
    if not chains:
        # Neither TLS 1.2 key type: a TLS 1.3-only server, or another key type.
        try:
            chain = probe.probe_served_chain(host, port, servername, timeout)
        except ProbeError as error:
            return [Served(error=f"{error} (also asked for {', '.join(ALGORITHMS)}: {errors[0]})")]
        chains[chain[0]] = Served(chain)
    return list(chains.values())


class SelfChecker:
    """Runs the self-check and logs what changed since the last run.

    `dane.broken` (error) when a served chain stops validating or what is
    served or published changes while it is broken; `dane.ok` (info) when it
    validates again.
    """

    def __init__(
        self,
        config: Config,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.config = config
        self.clock = clock
        self._servers: list[dns_actions.Server] | None = None
        self._cursor = 0  # where the next run starts, when one run cannot check every name
        self._last: dict[str, tuple[DaneCheck, ...]] = {}  # name -> its last checks
        self._broken: dict[tuple[str, str, str | None], tuple[str | None, tuple[str, ...]]] = {}

    @property
    def enabled(self) -> bool:
        return self.config.postfix.probe is not None and bool(self.config.certificates)

    def run(
        self,
        deployed: Mapping[str, str] | None = None,
        lineages: Collection[str] | None = None,
        *,
        log_changes: bool = True,
        budget: float = BUDGET,
    ) -> tuple[DaneCheck, ...]:
        """Check every TLSA name (of `lineages` only, if given); log what changed."""
        endpoint = self.config.postfix.probe
        if endpoint is None:
            return ()
        # dnspython here, not at import: a DNS-off daemon starts without it (issue 15).
        from danesync.published import read_published, verify_servers

        try:
            if self._servers is None:
                self._servers = verify_servers(self.config)
            servers = self._servers
        except DnsError as error:
            log.error("dns.failed", reason=f"self-check: {error}")
            return ()
        now = self.clock()
        names = names_to_check(self.config)
        if lineages is not None:
            names = {n: ls for n, ls in names.items() if set(ls) & set(lineages)}
        if not names:
            return ()

        def check(item: tuple[str, list[str]]) -> tuple[DaneCheck, ...]:
            name, lineages = item
            served = read_served(endpoint.host, endpoint.port, base_domain(name))
            published = read_published(servers, name, self.config.monitor.resolver)
            return build_checks(name, lineages, served, published, now, deployed)

        items = list(names.items())
        start = self._cursor % len(items)
        ordered = items[start:] + items[:start]
        give_up = time.monotonic() + budget
        done = 0
        with ThreadPoolExecutor(max_workers=max(1, min(WORKERS, len(items)))) as pool:
            while done < len(ordered) and (done == 0 or time.monotonic() < give_up):
                batch = ordered[done : done + WORKERS]
                for (name, _), found in zip(batch, pool.map(check, batch), strict=True):
                    self._last[name] = found
                done += len(batch)
        self._cursor = start + done
        # Names this run did not reach keep their last checks (until their turn).
        checks = tuple(c for name, _ in items for c in self._last.get(name, ()))
        if log_changes:
            self._log_changes(checks)
        return checks

    def _log_changes(self, checks: tuple[DaneCheck, ...]) -> None:
        broken_now: dict[tuple[str, str, str | None], tuple[str | None, tuple[str, ...]]] = {}
        for check in checks:
            key = (check.name, check.source, check.key_algorithm)
            if not check.broken:
                continue
            broken_now[key] = (check.serial, check.published)
            if self._broken.get(key) == broken_now[key]:
                continue
            log.error(
                "dane.broken",
                lineage=check.lineage,
                tlsa=check.name,
                serial=check.serial,
                issuer=check.issuer,
                key_algorithm=check.key_algorithm,
                published=list(check.published),
                source=check.source,
                reason=(
                    f"{check.name}: the chain served to senders (leaf serial {check.serial}, "
                    f"issuer {check.issuer}) does not validate against the TLSA records "
                    f"{'; '.join(check.published)} from {check.source}: {check.reason}"
                ),
            )
        for key in self._broken.keys() - broken_now.keys():
            healed = [c for c in checks if (c.name, c.source, c.key_algorithm) == key]
            if healed and healed[0].outcome != "error":
                log.info(
                    "dane.ok",
                    lineage=healed[0].lineage,
                    tlsa=healed[0].name,
                    serial=healed[0].serial,
                    reason=healed[0].reason,
                )
        self._broken = broken_now


def deployed_fingerprints(state: object) -> dict[str, str]:
    """lineage -> SHA-256 of the deployed leaf, from whatever the state keeps."""
    lineages = getattr(state, "lineages", {}) or {}
    found: dict[str, str] = {}
    for name, lineage_state in lineages.items():
        deployed = getattr(lineage_state, "deployed", None)
        fingerprint = getattr(deployed, "fingerprint", None)
        if isinstance(fingerprint, str):
            found[name] = fingerprint
    return found


__all__ = ["Outcome", "SelfChecker", "build_checks", "deployed_fingerprints"]
