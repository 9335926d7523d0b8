"""An in-memory world for danesync's real planner and step executor.

A primary name server and lagging secondaries, DNS caches that honour the
TTL each RRset was served with, a Postfix that serves the files it was told
to (reload, postmap, probe and file writes can fail), certbot lineages, a
clock whose wall time can step, and a state store that can be "crashed".
The service talks to it only through the ports of danesync.ports.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danesync.actions.dns import UpdateResult
from danesync.config import CertificateConfig
from danesync.errors import DnsUpdateError, PostfixError
from danesync.history import RRset
from danesync.plan import Problem
from danesync.ports import Answers, Offer, ProbeRequest, ProbeResult
from danesync.state import Loaded, State, build_state_from_documents
from danesync.tlsa import TlsaRecord

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PRIMARY = "10.0.0.1:53"
DEPLOY_DIR = Path("/sim/deploy")


class Crash(BaseException):
    """danesync was killed here (SIGKILL): nothing after this runs."""


# --- time ---------------------------------------------------------------------


class SimClock:
    """True time drives the world; danesync sees `wall` (true + steps) and `monotonic`."""

    def __init__(self) -> None:
        self.true = START
        self.offset = dt.timedelta(0)
        self.mono = 1000.0
        self.boot_id = "boot-1"

    def advance(self, seconds: float) -> None:
        self.true += dt.timedelta(seconds=seconds)
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)

    def wall(self) -> dt.datetime:
        return self.true + self.offset

    def monotonic(self) -> float:
        return self.mono

    def boot(self) -> str:
        return self.boot_id


# --- chains -------------------------------------------------------------------


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pem_of(fingerprint: str) -> bytes:
    return f"SIM {fingerprint}".encode()


def fingerprint_of(pem: bytes | None) -> str | None:
    if pem is None or not pem.startswith(b"SIM "):
        return None
    return pem[4:].decode()


# --- DNS ------------------------------------------------------------------------


@dataclass
class Cache:
    """A validating resolver: holds what it fetched for the TTL it was served with."""

    entries: dict[str, tuple[RRset, dt.datetime, dt.datetime]] = field(default_factory=dict)

    def fetch(self, name: str, rrset: RRset, now: dt.datetime) -> None:
        held = self.entries.get(name)
        if held is not None and held[2] > now:
            return  # still cached: a resolver does not ask again
        self.entries[name] = (rrset, now, now + dt.timedelta(seconds=rrset.ttl))

    def held(self, name: str, now: dt.datetime) -> tuple[RRset, dt.datetime] | None:
        entry = self.entries.get(name)
        if entry is None or entry[2] <= now:
            return None
        return entry[0], entry[1]


class SimDns:
    """The primary, secondaries that copy it when told to, and danesync's DnsPort."""

    def __init__(self, clock: SimClock, secondaries: int) -> None:
        self.clock = clock
        self.primary = PRIMARY
        self.servers = [PRIMARY] + [f"10.0.0.{i + 2}:53" for i in range(secondaries)]
        self.zones: dict[str, dict[str, RRset]] = {s: {} for s in self.servers}
        self.down: set[str] = set()
        self.fail_update = False
        self.crash_after_update = False
        self.lose_answer = False  # the update is applied, its answer lost

    def rrset(self, server: str, name: str) -> RRset:
        return self.zones[server].get(name, RRset.of((), 0))

    def transfer(self, secondary: str) -> None:
        self.zones[secondary] = dict(self.zones[PRIMARY])

    def operator_add(self, name: str, record: TlsaRecord, ttl: int) -> None:
        current = self.rrset(PRIMARY, name)
        self.zones[PRIMARY][name] = RRset.of(current.records | {record}, ttl)

    # DnsPort
    def query(self, names: Sequence[str]) -> Answers:
        rrsets: dict[str, dict[str, RRset]] = {}
        problems = []
        for name in names:
            rrsets[name] = {}
            for server in self.servers:
                if server in self.down:
                    problems.append(f"{server}: {name}: no answer")
                else:
                    rrsets[name][server] = self.rrset(server, name)
        fresh = frozenset() if problems else frozenset(names)
        return Answers(rrsets, tuple(problems), fresh)

    def update(
        self,
        add: Sequence[TlsaRecord],
        delete: Sequence[TlsaRecord],
        ttl: int,
        expected: Mapping[str, frozenset[TlsaRecord]],
    ) -> UpdateResult:
        if self.fail_update or PRIMARY in self.down:
            raise DnsUpdateError("example.test", "TIMEOUT", "no answer")
        added: set[TlsaRecord] = set()
        deleted: set[TlsaRecord] = set()
        for name in sorted({r.name for r in (*add, *delete)}):
            current = self.rrset(PRIMARY, name)
            records = set(current.records)
            for record in add:
                if record.name == name and record not in records:
                    records.add(record)
                    added.add(record)
            for record in delete:
                if record.name == name and record in records:
                    records.remove(record)
                    deleted.add(record)
            new_ttl = ttl if any(r.name == name for r in add) else current.ttl
            self.zones[PRIMARY][name] = RRset.of(records, new_ttl)
        if self.crash_after_update:
            self.crash_after_update = False
            raise Crash("after the update, before its answer was recorded")
        if self.lose_answer:
            self.lose_answer = False
            raise DnsUpdateError("example.test", "TIMEOUT", "answer lost")
        return UpdateResult(frozenset(added), frozenset(deleted), 1, 0)


# --- Postfix --------------------------------------------------------------------


class SimPostfix:
    """main.cf, chain files, the SNI table; what smtpd processes present."""

    def __init__(self, snakeoil: str) -> None:
        self.files: dict[str, bytes] = {}
        self.prev: dict[str, bytes] = {}
        self.params: dict[str, str] = {}
        self.loaded: dict[str, str] = {}
        self.table: dict[str, list[bytes]] = {}  # postmap -F: the files' contents
        self.table_written = False
        self.snakeoil = snakeoil
        # What processes started before the last reload may still present.
        self.at_reload: dict[str, bytes] = {}
        self.table_at_reload: dict[str, list[bytes]] = {}
        self.fail_reload = False
        self.fail_postmap = False
        self.fail_write: set[str] = set()  # lineages whose file write fails (ENOSPC)
        self.fail_probe: set[str] = set()

    def chain_path(self, lineage: str) -> str:
        return str(DEPLOY_DIR / f"{lineage}.pem")

    def _lineage(self, path: str) -> str:
        return Path(path).name.removesuffix(".pem")

    def read_chain_file(self, lineage: str) -> bytes | None:
        return self.files.get(lineage)

    def chain_file_holds(self, lineage: str, digest: bytes) -> bool:
        data = self.files.get(lineage)
        return data is not None and hashlib.sha256(data).digest() == digest

    def install_chain_file(self, lineage: str, pem: bytes) -> None:
        if lineage in self.fail_write:
            raise OSError(28, "No space left on device", str(self.chain_path(lineage)))
        current = self.files.get(lineage)
        if current == pem:
            return
        if current is not None:
            self.prev[lineage] = current
        self.files[lineage] = pem

    def install_chain_files(self, pems: Mapping[str, bytes]) -> None:
        for lineage, pem in pems.items():  # a failed write leaves the earlier ones
            self.install_chain_file(lineage, pem)

    def restore_chain_file(self, lineage: str) -> bool:
        if lineage not in self.prev:
            return False
        self.files[lineage] = self.prev.pop(lineage)
        return True

    def sni_table_exists(self) -> bool:
        return self.table_written

    def sni_maps_value(self) -> str:
        return f"hash:{DEPLOY_DIR}/sni"

    def write_sni_table(
        self, entries: Mapping[str, Sequence[Path]], changed: Set[str] | None = None
    ) -> None:
        """postmap -F of the tables holding `changed` lineages' files (None: all).

        Like the real shards, an entry none of whose files changed keeps what
        it embedded. smtpd notices a replaced table before its next connection
        and restarts (no reload needed): the old table is gone at once.
        """
        if self.fail_postmap:
            raise PostfixError(["postmap"], 1, "postmap: fatal: simulated")
        table = {} if changed is None else dict(self.table)
        for hostname, paths in entries.items():
            lineages = {self._lineage(str(path)) for path in paths}
            if changed is not None and hostname in table and not lineages & changed:
                continue
            contents = []
            for path in paths:
                data = self.files.get(self._lineage(str(path)))
                if data is None:
                    raise PostfixError(["postmap"], 0, f"warning: {path}: missing")
                contents.append(data)
            table[hostname] = contents
        self.table = table
        self.table_at_reload = {k: list(v) for k, v in table.items()}
        self.table_written = True

    def write_parameter_changes(self, wanted: Mapping[str, str | None]) -> dict[str, str | None]:
        previous: dict[str, str | None] = {}
        for name, value in wanted.items():
            if self.params.get(name) != value:
                previous[name] = self.params.get(name)
        self.write_parameters({k: wanted[k] for k in previous})
        return previous

    def write_parameters(self, values: Mapping[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                self.params.pop(name, None)
            else:
                self.params[name] = value

    def reload(self) -> None:
        if self.fail_reload:
            raise PostfixError(["postfix", "reload"], 1, "postfix: fatal: simulated")
        self.loaded = dict(self.params)
        self.at_reload = dict(self.files)
        self.table_at_reload = {k: list(v) for k, v in self.table.items()}

    def default_lineages(self) -> list[str]:
        value = self.loaded.get("smtpd_tls_chain_files", "")
        return [self._lineage(p) for p in value.replace(",", " ").split()]

    def presented(self, lineage: str, sni: bool, hostnames: Sequence[str]) -> set[str]:
        """Fingerprints a client of this lineage may be shown now."""
        found: set[str] = set()
        if sni:
            if "tls_server_sni_maps" in self.loaded:
                for hostname in hostnames:
                    for table in (self.table, self.table_at_reload):
                        for data in table.get(hostname, []):
                            fp = fingerprint_of(data)
                            if fp is not None:
                                found.add(fp)
            return found
        if lineage in self.default_lineages():
            for data in (self.files.get(lineage), self.at_reload.get(lineage)):
                fp = fingerprint_of(data)
                if fp is not None:
                    found.add(fp)
        return found

    def confirm_served(
        self, requests: Sequence[ProbeRequest], on_result: ProbeResult | None = None
    ) -> dict[str, bool]:
        outcomes = {
            r.lineage: r.lineage not in self.fail_probe
            and fingerprint_of(self.files.get(r.lineage)) == r.fingerprint
            for r in requests
        }
        for lineage, ok in outcomes.items():
            if on_result is not None:
                on_result(lineage, ok)
        return outcomes

    def probe_served(self, servername: str | None) -> str | None:
        return None  # adoption through the probe is tested elsewhere

    def sni_maps_in_effect(self) -> bool:
        return bool(self.loaded.get("tls_server_sni_maps"))


# --- certbot and the state ------------------------------------------------------------


class SimLineages:
    def __init__(self) -> None:
        self.current: dict[str, Offer | Problem] = {}
        self.known: dict[str, Offer] = {}  # every chain ever issued, by fingerprint

    def issue(self, lineage: str, offer: Offer) -> None:
        self.known[offer.info.fingerprint] = offer
        self.current[lineage] = offer

    def read_candidate(self, certificate: CertificateConfig, now: dt.datetime) -> Offer | Problem:
        return self.current.get(certificate.lineage, Problem("no such lineage"))

    def read_deployed(self, certificate: CertificateConfig, data: bytes) -> Offer | None:
        fp = fingerprint_of(data)
        return self.known.get(fp) if fp else None

    def flush(self) -> None:
        pass


class MemoryStore:
    """The state directory: the same documents the real store writes, as JSON."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.fail = False

    def load(self) -> Loaded:
        if not self.documents:
            return Loaded(State())
        return Loaded(build_state_from_documents(json.loads(json.dumps(self.documents))))

    def save(self, state: State) -> None:
        from danesync.errors import StateError

        if self.fail:
            raise StateError("/sim/state: cannot write the state: No space left on device")
        self.documents = {k: json.loads(v) for k, v in state.documents().items()}
