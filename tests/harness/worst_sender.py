"""A DANE sender behind the worst cache DESIGN.md allows, with a slow handshake.

A real cache (Unbound) often drops a version early: a fresh answer fetched
for another query replaces what it held. DESIGN.md promises more: a cache may
hold *any* version some server served, for that version's whole TTL. This
sender holds danesync to that promise:

- It asks the authoritative server every 0.1 s and remembers each version it
  saw, possible until the last time it was seen plus its TTL: the worst cache.
- Every `interval` s it "looks up" every version possible then, and `gap` s
  later (the connect, a banner that postscreen holds back, EHLO) OpenSSL's
  DANE code judges the chain Postfix serves against each of them.

The lookups overlap, so one of them always lands in the last `gap` s of a
version's life; a deploy that comes before a version can have left every
cache, or within `gap` s of it, fails a handshake.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from tests.harness.bind import normalize_tlsa
from tests.harness.unbound import DaneCheck, DaneChecks


@dataclass
class _Version:
    records: frozenset[str]
    ttl: int
    last_seen: float

    @property
    def possible_until(self) -> float:
        return self.last_seen + self.ttl


class WorstCacheSender(DaneChecks):
    """See the module docstring. `postfix` is the receiving `DanePostfix`."""

    def __init__(
        self, bind: Any, postfix: Any, name: str, gap: float, interval: float = 0.25
    ) -> None:
        self.bind, self.postfix, self.name = bind, postfix, name
        self.gap, self.interval = gap, interval
        self.checks: list[DaneCheck] = []
        self._versions: dict[frozenset[str], _Version] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._looker = threading.Thread(target=self._look, daemon=True)

    def _ask(self) -> tuple[frozenset[str], int] | None:
        query = dns.message.make_query(self.name, "TLSA")
        try:
            response = dns.query.udp(query, self.bind.host, timeout=0.5, port=self.bind.port)
        except (dns.exception.DNSException, OSError):
            return None
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TLSA:
                return frozenset(normalize_tlsa(r.to_text()) for r in rrset), rrset.ttl
        return frozenset(), 0

    def _watch(self) -> None:
        while not self._stop.is_set():
            answer = self._ask()
            now = time.time()
            if answer is not None and answer[0]:
                records, ttl = answer
                with self._lock:
                    self._versions[records] = _Version(records, ttl, now)
            self._stop.wait(0.1)

    def _look(self) -> None:
        while not self._stop.is_set():
            looked = time.time()
            with self._lock:
                possible = [v for v in self._versions.values() if v.possible_until > looked]
            for version in possible:
                thread = threading.Thread(target=self._connect, args=(looked, version), daemon=True)
                thread.start()
                self._threads.append(thread)
            self._stop.wait(self.interval)

    def _connect(self, looked: float, version: _Version) -> None:
        time.sleep(self.gap)
        options = ["-dane_tlsa_domain", self.name.removeprefix("_25._tcp.").rstrip(".")]
        for record in sorted(version.records):
            options += ["-dane_tlsa_rrdata", record]
        output = self.postfix.s_client(*options)
        check = DaneCheck(
            started=looked,
            finished=time.time(),
            verified="Verification: OK" in output,
            tlsa=version.records,
            output=output[-1500:],
            held_until=version.possible_until,
        )
        with self._lock:
            self.checks.append(check)

    def __enter__(self) -> WorstCacheSender:
        self._watcher.start()
        self._looker.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._looker.join()
        self._watcher.join()
        for thread in self._threads:
            thread.join()
