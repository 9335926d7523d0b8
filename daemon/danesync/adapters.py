"""The real ports: thin wrappers over actions/ (Postfix, DNS, files, probe),
certbot's live/ and the system clock. Each is tested against the real thing."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from collections.abc import Mapping, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from danesync import readcache
from danesync.actions import files, postfix, probe, snitables
from danesync.certbot import read_deploy_pem, read_validated
from danesync.chain import Chain, LineageFiles, rewrite_earlier_chain_file, validate_chain
from danesync.config import CertificateConfig, Config, DnsMode
from danesync.errors import ChainError, DnsError, LineagePending, PostfixError, ProbeError
from danesync.pem import PemError, split_pem
from danesync.plan import Problem
from danesync.ports import Answers, AriTarget, Offer, ProbeRequest, ProbeResult
from danesync.readcache import ReadCache, Validated
from danesync.state import ChainInfo
from danesync.tlsa import TlsaRecord

if TYPE_CHECKING:
    from danesync.actions.dns import UpdateResult
    from danesync.ports import DnsPort

PROBE_WORKERS = 16  # concurrent STARTTLS probes after a deploy


class SystemClock:
    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()  # CLOCK_MONOTONIC: one epoch for every process of a boot

    def boot(self) -> str:
        try:
            return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""


def open_read_cache(config: Config, known: readcache.Known | None = None) -> ReadCache:
    """The read cache of the state directory: one per service, shared by the
    lineages (validated chains) and Postfix (deployed chain files); `known`:
    the state's chains of a lineage, whose equal objects its entries share."""
    return ReadCache(config.state.dir / readcache.DIRECTORY, known)


def offer_from_chain(chain: Chain) -> Offer:
    return Offer(ChainInfo.from_chain(chain), chain.deploy_pem)


class CertbotLineages:
    """certbot's lineages through the read cache kept in the state directory."""

    def __init__(self, config: Config, cache: ReadCache | None = None) -> None:
        self.config = config
        self.cache = cache or open_read_cache(config)

    def read_candidate(self, certificate: CertificateConfig, now: dt.datetime) -> Offer | Problem:
        config_dir = self.config.certbot.config_dir
        try:
            entry, pem = read_validated(config_dir, certificate, now, self.cache)
        except LineagePending as pending:
            return Problem(pending.reason, pending=True)
        except ChainError as error:
            self.cache.drop(certificate.lineage)
            return Problem(error.reason)
        ari = None
        if entry.ari_id is not None or entry.ari_problem is not None:
            ari = AriTarget(entry.info, entry.ari_id, entry.ari_problem)
        if pem is None:
            reader = _PemReader(self.cache, config_dir, certificate, entry, now)
            return Offer(entry.info, reader, entry.pem_sha256, ari)
        return Offer(entry.info, pem, ari=ari)

    def flush(self) -> None:
        self.cache.flush()

    def read_deployed(self, certificate: CertificateConfig, data: bytes) -> Offer | None:
        try:
            blocks = split_pem(data, certificate.lineage)
            keys = b"".join(b.text for b in blocks if b.label.endswith("PRIVATE KEY"))
            certificates = [b.text for b in blocks if b.label == "CERTIFICATE"]
            lineage_files = LineageFiles(
                certificate.lineage,
                0,
                privkey=keys,
                cert=certificates[0],
                chain=b"".join(certificates[1:]),
                fullchain=b"".join(certificates),
            )
            # Expiry does not matter here: the question is what is served.
            chain = validate_chain(
                lineage_files,
                certificate.hostnames,
                certificate.tlsa,
                certificate.usages,
                _any_time_within(certificates[0]),
            )
        except (PemError, ChainError, IndexError, ValueError):
            return None
        return offer_from_chain(chain)


class _PemReader:
    """An offer's bytes, read when a deploy takes them. A slotted object, not a
    closure: a first pass holds one per lineage (10,000 closures were 2.2 MiB)."""

    __slots__ = ("cache", "certificate", "config_dir", "entry", "now")

    def __init__(
        self,
        cache: ReadCache,
        config_dir: Path,
        certificate: CertificateConfig,
        entry: Validated,
        now: dt.datetime,
    ) -> None:
        self.cache = cache
        self.config_dir = config_dir
        self.certificate = certificate
        self.entry = entry
        self.now = now

    def __call__(self) -> bytes:
        try:
            return read_deploy_pem(self.config_dir, self.certificate, self.entry, self.now)
        except ValueError:
            # Changed although its stats did not say so (a rewrite within
            # the file system's time granularity): the next pass validates.
            self.cache.drop(self.certificate.lineage)
            raise


def _any_time_within(leaf_pem: bytes) -> dt.datetime:
    from cryptography import x509

    from danesync.chain import _not_after, _not_before

    leaf = x509.load_pem_x509_certificate(leaf_pem)
    return _not_before(leaf) + (_not_after(leaf) - _not_before(leaf)) / 2


class RealPostfix:
    def __init__(self, config: Config, cache: ReadCache | None = None) -> None:
        self.config = config
        self.deploy_dir = config.postfix.deploy_dir
        self.config_dir = config.postfix.config_dir
        # Chain files found intact, kept across restarts (readcache.build_file_key).
        self._files = cache or ReadCache(None)
        self._deploy_dir = os.fspath(config.postfix.deploy_dir)
        # One SNI table up to 256 SNI certificates, then 2, 4, ... (snitables.py):
        # fixed by the configuration, so a renewal never changes main.cf.
        self._sni_shards = snitables.plan_sni_shard_count(
            sum(1 for c in config.certificates if c.sni)
        )

    def chain_path(self, lineage: str) -> str:
        # A str joined when asked, not remembered: 10,000 kept Path objects and
        # their parts were 3.5 MiB, as str 0.9 MiB; a join is well under a
        # microsecond (a renewal at 10,000 lineages asks 20,000 times).
        return files.build_chain_file_name(self._deploy_dir, lineage)

    def read_chain_file(self, lineage: str) -> bytes | None:
        try:
            with open(self.chain_path(lineage), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def chain_file_holds(self, lineage: str, digest: bytes) -> bool:
        """The chain file holds exactly the bytes of `digest` (SHA-256); not read
        again while its stat is unchanged, even after a restart (the key is kept
        in the read cache).

        A full pass asks this for every deployed lineage: at 10,000 lineages,
        reading every file back each time was most of an idle pass, and of a
        warm start. Any write changes the file's ctime (and a rename its inode).
        """
        path = self.chain_path(lineage)
        before = _stat_key(path)
        if before is not None and self._files.file_key(lineage) == readcache.build_file_key(
            before, digest
        ):
            return True
        data = self.read_chain_file(lineage)
        if data is None or not _holds(data, digest, lineage):
            self._files.put_file_key(lineage, None)
            return False
        if before is not None and _stat_key(path) == before:  # not replaced while read
            self._files.put_file_key(lineage, readcache.build_file_key(before, digest))
        return True

    def install_chain_file(self, lineage: str, pem: bytes) -> None:
        files.install_chain_file(self.deploy_dir, lineage, pem)

    def install_chain_files(self, pems: Mapping[str, bytes]) -> None:
        files.install_chain_files(self.deploy_dir, pems)

    def restore_chain_file(self, lineage: str) -> bool:
        return files.restore_chain_file(self.deploy_dir, lineage)

    def sni_table_exists(self) -> bool:
        return snitables.sni_tables_exist(self.deploy_dir, self._sni_shards)

    def sni_maps_value(self) -> str:
        return snitables.build_sni_maps_values(self.deploy_dir, self._sni_shards)

    def write_sni_table(
        self, entries: Mapping[str, Sequence[str]], changed: Set[str] | None = None
    ) -> None:
        """Rebuild the tables holding the chain files of `changed` lineages (None: all)."""
        paths = None if changed is None else {self.chain_path(name) for name in changed}
        snitables.write_sni_tables(self.deploy_dir, entries, self._sni_shards, paths)

    def write_parameter_changes(self, wanted: Mapping[str, str | None]) -> dict[str, str | None]:
        # None removes a parameter (postconf -X); the result restores main.cf exactly.
        return postfix.write_parameter_changes(self.config_dir, wanted)

    def write_parameters(self, values: Mapping[str, str | None]) -> None:
        postfix.write_parameters(self.config_dir, values)

    def reload(self) -> None:
        postfix.reload_postfix(self.config_dir)

    def confirm_served(
        self, requests: Sequence[ProbeRequest], on_result: ProbeResult | None = None
    ) -> dict[str, bool]:
        endpoint = self.config.postfix.probe
        if endpoint is None or not requests:
            outcomes = {r.lineage: True for r in requests}
            for request in requests:
                if on_result is not None:
                    on_result(request.lineage, True)
            return outcomes

        # One resolution of the endpoint's name for the batch, not one a probe.
        target = probe.Endpoint(endpoint.host, endpoint.port)

        def confirm(request: ProbeRequest) -> bool:
            return _wait_for_fingerprint(target, request)

        # One pool for the whole batch (it used to be drained every 256 probes);
        # each outcome is handed to `on_result` here, in this thread, while the
        # workers go on probing: a cold start logs as it probes, not after.
        outcomes = {}
        with ThreadPoolExecutor(max_workers=min(PROBE_WORKERS, len(requests))) as pool:
            for request, ok in zip(requests, pool.map(confirm, requests), strict=True):
                outcomes[request.lineage] = ok
                if on_result is not None:
                    on_result(request.lineage, ok)
        return outcomes

    def sni_maps_in_effect(self) -> bool:
        try:
            values = postfix.read_parameters(self.config_dir, ["tls_server_sni_maps"])
        except PostfixError:
            return True  # unknown: ask every name, as before
        return bool(values.get("tls_server_sni_maps", "").strip())

    def probe_served(self, servername: str | None) -> str | None:
        endpoint = self.config.postfix.probe
        if endpoint is None:
            return None
        try:
            der = probe.probe_starttls(endpoint.host, endpoint.port, servername=servername)
        except ProbeError:
            return None
        return hashlib.sha256(der).hexdigest()


def _holds(data: bytes, digest: bytes, lineage: str) -> bool:
    """The chain file's bytes are those of `digest`, or were written by an
    earlier danesync with the same key and certificates (chain.py, key_pem)."""
    if hashlib.sha256(data).digest() == digest:
        return True
    earlier = rewrite_earlier_chain_file(data, lineage)
    return earlier is not None and hashlib.sha256(earlier).digest() == digest


def _stat_key(path: str) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _wait_for_fingerprint(
    endpoint: probe.Endpoint, request: ProbeRequest, deadline: float = 10, interval: float = 0.25
) -> bool:
    """Probe until the leaf with `request.fingerprint` is served, or `deadline` passes.

    A reload is asynchronous: the first probes after it may still see the old chain.
    """
    end = time.monotonic() + deadline
    while True:
        try:
            der = probe.probe_starttls(
                endpoint, endpoint.port, request.servername, 5, key_algorithm=request.key_algorithm
            )
            if hashlib.sha256(der).hexdigest() == request.fingerprint:
                return True
        except ProbeError:
            pass
        if time.monotonic() + interval >= end:
            return False
        time.sleep(interval)


def open_dns(config: Config) -> DnsPort:
    """The DNS port: `realdns.RealDns`, and with it dnspython (0.15 s of
    imports), only when DNS is on. A daemon with dns.mode "off" never asks
    (observe and the planner look at the mode first) and starts without it
    (issue 15, coldtail). A SIGHUP that turns DNS on builds a new service."""
    if config.dns.mode is DnsMode.OFF:
        return NoDns(config)
    from danesync.realdns import RealDns

    return RealDns(config)


class NoDns:
    """dns.mode "off": nothing is queried or published."""

    def __init__(self, config: Config) -> None:
        server = config.dns.server
        self.primary = None if server is None else str(server)

    def query(self, names: Sequence[str]) -> Answers:
        return Answers({}, ('dns.mode is "off"',))

    def update(
        self,
        add: Sequence[TlsaRecord],
        delete: Sequence[TlsaRecord],
        ttl: int,
        expected: Mapping[str, frozenset[TlsaRecord]],
    ) -> UpdateResult:
        raise DnsError('dns.mode is "off": nothing is published')
