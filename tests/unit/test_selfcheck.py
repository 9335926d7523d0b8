"""The DANE judge (danesync.dane) on real chains, with OpenSSL's DANE client as the oracle."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from danesync.dane import Outcome, base_domain, judge_dane, usable
from danesync.tlsa import TlsaRecord
from tests.conftest import require_program
from tests.harness.certs import Hierarchy, Leaf, cert_pem, key_pem, make_key

HOST = "mx.example.test"
NAME = f"_25._tcp.{HOST}."
# The oracle runs OpenSSL on the real clock: these chains are dated around it.
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def record(usage: int, selector: int, matching: int, cert: x509.Certificate) -> TlsaRecord:
    data = der(cert) if selector == 0 else spki(cert)
    if matching == 1:
        data = hashlib.sha256(data).digest()
    elif matching == 2:
        data = hashlib.sha512(data).digest()
    return TlsaRecord(NAME, usage, selector, matching, data.hex())


def hierarchy() -> Hierarchy:
    h = Hierarchy("Oracle")
    # Re-date the CA pair around the real clock (the harness dates them for its NOW).
    from tests.harness import certs

    saved = certs.NOW
    certs.NOW = NOW
    try:
        h.__post_init__()
    finally:
        certs.NOW = saved
    return h


def leaf_of(h: Hierarchy, **kwargs: object) -> Leaf:
    kwargs.setdefault("not_before", NOW - DAY)
    kwargs.setdefault("not_after", NOW + 30 * DAY)
    return h.issue(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Case:
    name: str
    served: Sequence[x509.Certificate]  # leaf first, as the server sends them
    leaf_key: object
    records: Sequence[TlsaRecord]
    expected: Outcome


def build_cases() -> list[Case]:
    h = hierarchy()
    leaf = leaf_of(h, hostnames=[HOST])
    root, inter = h.root, h.intermediate
    chain = [leaf.cert, inter]
    wildcard = leaf_of(h, hostnames=["*.example.test"])
    other_name = leaf_of(h, hostnames=["mail.example.org"])
    expired = leaf_of(h, hostnames=[HOST], not_before=NOW - 60 * DAY, not_after=NOW - DAY)
    not_yet = leaf_of(h, hostnames=[HOST], not_before=NOW + DAY, not_after=NOW + 60 * DAY)
    other_h = hierarchy()
    not_ca_key = make_key("ec256")
    not_ca = h.make_ca("Oracle Not A CA", not_ca_key, ca=False)
    from_not_ca = leaf_of(h, hostnames=[HOST], signer=not_ca_key)
    # make_ca names the root as issuer: re-issue the leaf under the not-a-CA's name.
    bad_issuer_leaf = (
        x509.CertificateBuilder()
        .subject_name(from_not_ca.cert.subject)
        .issuer_name(not_ca.subject)
        .public_key(from_not_ca.key.public_key())
        .serial_number(from_not_ca.cert.serial_number)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), False)
        .sign(not_ca_key, from_not_ca.cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    old_key = make_key("ec256")
    old_inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Oracle Old")]))
        .issuer_name(root.subject)
        .public_key(old_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 90 * DAY)
        .not_valid_after(NOW - DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .sign(h.root_key, root.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    under_old = leaf_of(h, hostnames=[HOST], signer=old_key)
    under_old_cert = (
        x509.CertificateBuilder()
        .subject_name(under_old.cert.subject)
        .issuer_name(old_inter.subject)
        .public_key(under_old.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), False)
        .sign(old_key, old_inter.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    k = leaf.key
    return [
        Case(
            "2 1 1 an expired issuer is the trust anchor (its dates are not checked)",
            [under_old_cert, old_inter],
            under_old.key,
            [record(2, 1, 1, old_inter)],
            Outcome.VALID,
        ),
        Case(
            "2 1 1 root, an expired issuer between",
            [under_old_cert, old_inter, root],
            under_old.key,
            [record(2, 1, 1, root)],
            Outcome.BROKEN,
        ),
        Case("2 1 1 issuer", chain, k, [record(2, 1, 1, inter)], Outcome.VALID),
        Case("2 0 1 issuer", chain, k, [record(2, 0, 1, inter)], Outcome.VALID),
        Case("2 1 2 issuer", chain, k, [record(2, 1, 2, inter)], Outcome.VALID),
        Case("3 1 1 leaf", chain, k, [record(3, 1, 1, leaf.cert)], Outcome.VALID),
        Case("3 0 1 leaf", chain, k, [record(3, 0, 1, leaf.cert)], Outcome.VALID),
        Case("3 1 1 leaf alone", [leaf.cert], k, [record(3, 1, 1, leaf.cert)], Outcome.VALID),
        Case(
            "3 1 1 expired leaf (DANE-EE ignores dates)",
            [expired.cert, inter],
            expired.key,
            [record(3, 1, 1, expired.cert)],
            Outcome.VALID,
        ),
        Case(
            "3 1 1 leaf with another name (DANE-EE ignores names)",
            [other_name.cert, inter],
            other_name.key,
            [record(3, 1, 1, other_name.cert)],
            Outcome.VALID,
        ),
        Case("3 1 1 another key", chain, k, [record(3, 1, 1, wildcard.cert)], Outcome.BROKEN),
        Case("2 1 1 the leaf itself", chain, k, [record(2, 1, 1, leaf.cert)], Outcome.BROKEN),
        Case("2 1 1 root not served", chain, k, [record(2, 1, 1, root)], Outcome.BROKEN),
        Case("2 1 1 root served", [*chain, root], k, [record(2, 1, 1, root)], Outcome.VALID),
        Case(
            "2 1 1 root served out of order",
            [leaf.cert, root, inter],
            k,
            [record(2, 1, 1, root)],
            Outcome.VALID,
        ),
        Case("2 1 0 root key not served", chain, k, [record(2, 1, 0, root)], Outcome.VALID),
        Case("2 0 0 root cert not served", chain, k, [record(2, 0, 0, root)], Outcome.VALID),
        Case("2 1 1 issuer not served", [leaf.cert], k, [record(2, 1, 1, inter)], Outcome.BROKEN),
        Case(
            "2 1 1 another issuer",
            chain,
            k,
            [record(2, 1, 1, other_h.intermediate)],
            Outcome.BROKEN,
        ),
        Case(
            "2 1 1 wildcard leaf",
            [wildcard.cert, inter],
            wildcard.key,
            [record(2, 1, 1, inter)],
            Outcome.VALID,
        ),
        Case(
            "2 1 1 leaf with another name",
            [other_name.cert, inter],
            other_name.key,
            [record(2, 1, 1, inter)],
            Outcome.BROKEN,
        ),
        Case(
            "2 1 1 expired leaf",
            [expired.cert, inter],
            expired.key,
            [record(2, 1, 1, inter)],
            Outcome.BROKEN,
        ),
        Case(
            "2 1 1 leaf not yet valid",
            [not_yet.cert, inter],
            not_yet.key,
            [record(2, 1, 1, inter)],
            Outcome.BROKEN,
        ),
        Case(
            "2 1 1 issuer without CA flag",
            [bad_issuer_leaf, not_ca],
            from_not_ca.key,
            [record(2, 1, 1, not_ca)],
            Outcome.BROKEN,
        ),
        Case(
            "one stale and one matching record",
            chain,
            k,
            [record(2, 1, 1, other_h.intermediate), record(2, 1, 1, inter)],
            Outcome.VALID,
        ),
        Case(
            "a PKIX record beside a matching DANE-TA",
            chain,
            k,
            [record(1, 1, 1, leaf.cert), record(2, 1, 1, inter)],
            Outcome.VALID,
        ),
    ]


CASES = build_cases()


@contextmanager
def tls_server(served: Sequence[x509.Certificate], key: object) -> Iterator[int]:
    """A TLS server on loopback that sends `served` (in that order) to one client."""
    with tempfile.TemporaryDirectory() as directory:
        chain_file = Path(directory) / "chain.pem"
        key_file = Path(directory) / "key.pem"
        chain_file.write_bytes(b"".join(cert_pem(c) for c in served))
        key_file.write_bytes(key_pem(key))  # type: ignore[arg-type]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain_file, key_file)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)

    def serve() -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()
        thread.join(10)


def openssl_accepts(port: int, records: Sequence[TlsaRecord]) -> bool:
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-dane_tlsa_domain",
        HOST,
        "-verify_return_error",
        # RFC 7672 3.1.1, as Postfix sets it: DANE-EE(3) ignores names.
        "-dane_ee_no_namechecks",
    ]
    for r in records:
        argv += ["-dane_tlsa_rrdata", r.rdata]
    result = subprocess.run(argv, input=b"", capture_output=True, timeout=20, check=False)
    output = result.stdout.decode(errors="replace")
    return result.returncode == 0 and "Verification: OK" in output


class TestJudgeAgainstOpenssl:
    """Every verdict agrees with `openssl s_client -dane_tlsa_rrdata` on the same chain."""

    @pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
    def test_verdict(self, case: Case) -> None:
        verdict = judge_dane([der(c) for c in case.served], case.records, [HOST], NOW)
        assert verdict.outcome is case.expected, verdict.reason

    @pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
    def test_openssl_agrees(self, case: Case) -> None:
        require_program("openssl")
        with tls_server(case.served, case.leaf_key) as port:
            accepted = openssl_accepts(port, case.records)
        assert accepted == (case.expected is Outcome.VALID)


class TestJudge:
    """What the verdict says besides valid or broken."""

    def test_no_records(self) -> None:
        case = CASES[0]
        verdict = judge_dane([der(c) for c in case.served], [], [HOST], NOW)
        assert verdict.outcome is Outcome.NO_RECORDS and verdict.ok

    def test_only_pkix_records_are_unusable(self) -> None:
        case = CASES[0]
        leaf = case.served[0]
        verdict = judge_dane([der(c) for c in case.served], [record(1, 1, 1, leaf)], [HOST], NOW)
        assert verdict.outcome is Outcome.UNUSABLE and verdict.ok

    def test_broken_names_the_served_leaf(self) -> None:
        case = next(c for c in CASES if c.name == "2 1 1 another issuer")
        leaf = case.served[0]
        verdict = judge_dane([der(c) for c in case.served], case.records, [HOST], NOW)
        assert not verdict.ok
        assert verdict.leaf_serial == f"{leaf.serial_number:X}".rjust(
            len(f"{leaf.serial_number:X}") + len(f"{leaf.serial_number:X}") % 2, "0"
        )
        assert verdict.leaf_issuer == leaf.issuer.rfc4514_string()

    def test_nothing_served(self) -> None:
        assert judge_dane([], CASES[0].records, [HOST], NOW).outcome is Outcome.BROKEN

    def test_garbage_served(self) -> None:
        verdict = judge_dane([b"not a certificate"], CASES[0].records, [HOST], NOW)
        assert verdict.outcome is Outcome.BROKEN

    def test_matched_record_is_reported(self) -> None:
        case = next(c for c in CASES if c.name == "one stale and one matching record")
        verdict = judge_dane([der(c) for c in case.served], case.records, [HOST], NOW)
        assert verdict.matched == case.records[1]

    def test_usable(self) -> None:
        assert usable(TlsaRecord(NAME, 2, 1, 1, "00" * 32))
        assert not usable(TlsaRecord(NAME, 2, 1, 1, "00" * 31))  # a short digest
        assert not usable(TlsaRecord(NAME, 2, 1, 2, "00" * 32))
        assert not usable(TlsaRecord(NAME, 0, 1, 1, "00" * 32))
        assert not usable(TlsaRecord(NAME, 3, 2, 1, "00" * 32))
        assert not usable(TlsaRecord(NAME, 3, 1, 3, "00" * 32))

    def test_base_domain(self) -> None:
        assert base_domain("_25._tcp.MX.example.test.") == "mx.example.test"
        assert base_domain("mx.example.test") == "mx.example.test"


class TestBuildChecks:
    """Every served chain against every distinct RRset; probe and DNS errors kept apart."""

    def test_chains_times_distinct_rrsets(self) -> None:
        from danesync.published import Published
        from danesync.selfcheck import Served, build_checks

        case = CASES[2]  # "2 1 1 issuer": valid
        served = Served(tuple(der(c) for c in case.served))
        stale = Published("verify server b", frozenset({record(2, 1, 1, CASES[0].served[-1])}))
        good = frozenset(case.records)
        checks = build_checks(
            NAME,
            ["one", "two"],
            [served, Served(error="no answer")],
            [
                Published("verify server a", good),
                Published("verify server c", good),
                stale,
                Published("verify server d", error="timeout"),
            ],
            NOW,
            deployed={"two": served.fingerprint or ""},
        )
        by_source = {c.source: c for c in checks}
        assert by_source["verify server a, verify server c"].outcome == "valid"
        assert by_source["verify server a, verify server c"].lineage == "two"
        assert by_source["verify server a, verify server c"].key_algorithm == "ecdsa"
        assert by_source["verify server d"].outcome == "error"
        assert by_source["probe"].outcome == "error" and by_source["probe"].lineage == "one, two"
        assert by_source["verify server b"].outcome == "broken"
        assert by_source["verify server b"].published == tuple(
            sorted(r.rdata for r in stale.records)
        )


class TestRoundRobin:
    """A host with more names than one run's time allows is checked over several runs."""

    def test_budget_spreads_names_over_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from danesync import published as published_dns
        from danesync import selfcheck
        from danesync.config import CertificateConfig, Config, DnsConfig, Endpoint, PostfixConfig

        names = [f"_25._tcp.mx{i}.example.test." for i in range(20)]
        config = Config(
            path=Path("/x"),
            postfix=PostfixConfig(probe=Endpoint("127.0.0.1", 25)),
            dns=DnsConfig(verify_servers=(Endpoint("127.0.0.1", 53),)),
            certificates=tuple(
                CertificateConfig(f"mx{i}", (f"mx{i}.example.test",), (name,))
                for i, name in enumerate(names)
            ),
        )
        asked: list[str] = []

        def served(host: str, port: int, servername: str) -> list[selfcheck.Served]:
            asked.append(servername)
            return [selfcheck.Served(tuple(der(c) for c in CASES[2].served))]

        def published(servers: object, name: str, resolver: str) -> list[published_dns.Published]:
            # DANE-EE: the test leaf does not carry these names.
            ee = record(3, 1, 1, CASES[2].served[0])
            return [published_dns.Published("verify server a", frozenset({ee}))]

        monkeypatch.setattr(selfcheck, "read_served", served)
        monkeypatch.setattr(published_dns, "read_published", published)
        checker = selfcheck.SelfChecker(config, clock=lambda: NOW)
        first = checker.run(budget=0, log_changes=False)  # one batch per run
        hosts = [base_domain(n) for n in names]
        w = selfcheck.WORKERS
        # A batch's names are asked side by side: compare batches, not the order within.
        assert sorted(asked) == sorted(hosts[:w]) and len(first) == w
        checker.run(budget=0, log_changes=False)
        last = checker.run(budget=0, log_changes=False)
        assert sorted(asked[w : 2 * w]) == sorted(hosts[w : 2 * w])
        assert sorted(asked[2 * w :]) == sorted((hosts[2 * w :] + hosts)[:w])  # wraps around
        assert {c.name for c in last} == set(names)  # earlier runs' results are kept
        assert all(c.outcome == "valid" for c in last)
        checker.run(budget=0, log_changes=False)
        assert sorted(asked[3 * w :]) == sorted((hosts + hosts)[3 * w - len(hosts) :][:w])


class TestValidatingResolver:
    """Only an answer with the AD bit counts; a tiny name server on loopback plays the resolver."""

    @staticmethod
    def serve(ad: bool, records: Sequence[TlsaRecord]) -> tuple[socket.socket, threading.Thread]:
        import dns.flags
        import dns.message
        import dns.rrset

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)

        def answer() -> None:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            if ad:
                response.flags |= dns.flags.AD
            if records:
                response.answer.append(
                    dns.rrset.from_text(NAME, 60, "IN", "TLSA", *[r.rdata for r in records])
                )
            sock.sendto(response.to_wire(), peer)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        return sock, thread

    @pytest.mark.parametrize("ad", [True, False])
    def test_ad_bit(self, ad: bool) -> None:
        from danesync.published import read_validated

        records = list(CASES[2].records)
        sock, thread = self.serve(ad, records)
        try:
            port = sock.getsockname()[1]
            found = read_validated(NAME, f"127.0.0.1:{port}", timeout=5)
        finally:
            thread.join(5)
            sock.close()
        if ad:
            assert found is not None and found.records == frozenset(records)
            assert found.source == "validating resolver 127.0.0.1"
        else:
            assert found is None  # not validated: no source

    def test_system_resolver_only_on_loopback(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        from danesync import published
        from danesync.actions import dnswire

        resolv_conf = tmp_path / "resolv.conf"
        resolv_conf.write_text(
            "# nameserver 127.0.0.1\nsearch example.test\nnameserver 192.0.2.53\n"
        )
        asked: list[object] = []
        monkeypatch.setattr(dnswire, "exchange", lambda *a, **k: asked.append(a))
        assert published.read_validated(NAME, resolv_conf=str(resolv_conf)) is None
        assert asked == []  # a remote resolver's AD bit is not asked for

    def test_nameservers_of_resolv_conf(self, tmp_path: Path) -> None:
        from danesync.published import read_nameservers

        resolv_conf = tmp_path / "resolv.conf"
        resolv_conf.write_text(
            "; a comment\n# nameserver 192.0.2.1\nnameserver 127.0.0.53\n"
            "options edns0 trust-ad\nnameserver ::1  # local\nnameserver\n"
        )
        assert read_nameservers(str(resolv_conf)) == ["127.0.0.53", "::1"]
        assert read_nameservers(str(tmp_path / "missing")) == []
