"""ACME Renewal Information on the standard library, against a small CA of our own.

Debian 12's Pebble has no ARI endpoint, so this module serves an ACME
directory and RFC 9773 renewalInfo resources itself, over HTTPS on loopback
with a self-signed certificate that the client trusts through
REQUESTS_CA_BUNDLE. The server names certificates the way a CA does: by its
own key identifier and the serial number read from the certificate's DER,
computed here and not by danesync; any other identifier is a 404.

danesync asks with urllib, so every test runs on both lanes (Debian 12's
acme 2.1 has no ARI, PyPI's has): the acme library is never imported.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import danesync
from danesync.ari import fetch_renewal_window, plan_renewal_notice
from danesync.errors import AriError
from tests.harness.certs import Hierarchy, Leaf

pytestmark = pytest.mark.integration

DAY = dt.timedelta(days=1)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _der_serial(certificate_der: bytes) -> bytes:
    """The serialNumber INTEGER's content octets, read straight from the DER."""

    def element(pos: int) -> tuple[int, int, int]:
        tag, length = certificate_der[pos], certificate_der[pos + 1]
        pos += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(certificate_der[pos : pos + size], "big")
            pos += size
        return tag, pos, pos + length

    _, certificate, _ = element(0)  # Certificate ::= SEQUENCE
    _, tbs, _ = element(certificate)  # tbsCertificate ::= SEQUENCE
    tag, start, end = element(tbs)
    if tag == 0xA0:  # [0] EXPLICIT version
        tag, start, end = element(end)
    assert tag == 0x02, "serialNumber is not an INTEGER"
    return certificate_der[start:end]


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class AriServer:
    """An ACME directory with renewalInfo, served over HTTPS on 127.0.0.1."""

    base: str
    ca_file: Path
    answers: dict[str, Answer] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def directory_url(self) -> str:
        return f"{self.base}/directory"

    @property
    def directory_without_ari_url(self) -> str:
        return f"{self.base}/directory-without-ari"

    def identifier(self, leaf: x509.Certificate, issuer: x509.Certificate) -> str:
        """How the CA names `leaf`: its own key identifier and the serial's DER."""
        key_id = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
        serial = _der_serial(leaf.public_bytes(serialization.Encoding.DER))
        return f"{_b64url(key_id)}.{_b64url(serial)}"

    def suggest(
        self,
        leaf: Leaf,
        start: dt.datetime,
        end: dt.datetime,
        explanation_url: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"suggestedWindow": {"start": _rfc3339(start), "end": _rfc3339(end)}}
        if explanation_url:
            body["explanationURL"] = explanation_url
        headers = {"Retry-After": retry_after} if retry_after else {}
        self.answer(leaf, Answer(200, json.dumps(body).encode(), headers=headers))

    def answer(self, leaf: Leaf, answer: Answer) -> None:
        with self.lock:
            self.answers[self.identifier(leaf.cert, leaf.chain[0])] = answer

    def seen(self) -> list[str]:
        with self.lock:
            return list(self.requests)

    def respond(self, path: str) -> Answer:
        with self.lock:
            self.requests.append(path)
            if path in ("/directory", "/directory-without-ari"):
                directory: dict[str, Any] = {
                    name: f"{self.base}/acme/{name}"
                    for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange")
                }
                directory["meta"] = {"termsOfService": f"{self.base}/terms"}
                if path == "/directory":
                    directory["renewalInfo"] = f"{self.base}/acme/renewal-info"
                return Answer(200, json.dumps(directory).encode())
            prefix = "/acme/renewal-info/"
            if path.startswith(prefix) and path[len(prefix) :] in self.answers:
                return self.answers[path[len(prefix) :]]
        problem = {"type": "urn:ietf:params:acme:error:malformed", "detail": f"no such: {path}"}
        return Answer(404, json.dumps(problem).encode(), "application/problem+json")


class _Handler(BaseHTTPRequestHandler):
    server: _HttpsServer

    def do_GET(self) -> None:
        answer = self.server.ari.respond(self.path)
        if answer.delay:
            time.sleep(answer.delay)
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    ari: AriServer
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's thread: a client that rejects
        # our certificate must not stall the accept loop.
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        # socketserver closes the original socket, which the wrapper has detached.
        with wrapped:
            super().finish_request(wrapped, client_address)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ARI test CA endpoint")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def ari_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AriServer]:
    cert_path, key_path = _self_signed(tmp_path_factory.mktemp("ari"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    httpd = _HttpsServer(("127.0.0.1", 0), _Handler)
    httpd.context = context
    httpd.ari = AriServer(f"https://127.0.0.1:{httpd.server_address[1]}", cert_path)
    thread = threading.Thread(target=httpd.serve_forever, name="ari-server", daemon=True)
    thread.start()
    try:
        yield httpd.ari
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server(ari_server: AriServer, monkeypatch: pytest.MonkeyPatch) -> AriServer:
    """The server, trusted by requests (as REQUESTS_CA_BUNDLE does for Pebble), no proxies."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ari_server.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with ari_server.lock:
        ari_server.requests.clear()
    return ari_server


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy("ARI")


def _leaf(hierarchy: Hierarchy, days_left: float = 60, serial: int | None = None) -> Leaf:
    now = _utc_now()
    return hierarchy.issue(
        not_before=now - 30 * DAY,
        not_after=now + dt.timedelta(days=days_left),
        serial=serial,
        authority_key_id=True,
    )


def _reissue(hierarchy: Hierarchy, key: Any) -> x509.Certificate:
    """The hierarchy's intermediate name with a Subject Key Identifier of `key`."""
    now = _utc_now()
    return (
        x509.CertificateBuilder()
        .subject_name(hierarchy.intermediate.subject)
        .issuer_name(hierarchy.root.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), False)
        .sign(hierarchy.root_key, hashes.SHA256())
    )


class TestFetch:
    """fetch_renewal_window asks the CA with two GETs: the directory, then renewalInfo."""

    def test_window_opened_gives_a_notice(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        now = _utc_now()
        start, end = now - 2 * DAY, now + DAY
        server.suggest(leaf, start, end, explanation_url="https://ca.example/incident/42")
        window = fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert window is not None
        assert (window.start, window.end) == (start, end)
        assert window.explanation_url == "https://ca.example/incident/42"
        assert window.identifier == server.identifier(leaf.cert, leaf.chain[0])
        assert server.seen() == ["/directory", f"/acme/renewal-info/{window.identifier}"]
        not_after = now + 60 * DAY
        reason = plan_renewal_notice(window, not_after, True, now)
        assert reason is not None
        assert "certbot has not renewed" in reason
        assert reason.endswith("see https://ca.example/incident/42")
        # The same window once certbot has renewed: nothing to say.
        assert plan_renewal_notice(window, not_after, False, now) is None

    def test_window_ahead_gives_none(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        now = _utc_now()
        server.suggest(leaf, now + 30 * DAY, now + 32 * DAY)
        window = fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert window is not None and window.explanation_url is None
        assert plan_renewal_notice(window, now + 60 * DAY, True, now) is None

    def test_serial_with_top_bit_set(self, server: AriServer, hierarchy: Hierarchy) -> None:
        # Its DER needs a leading zero byte; a wrong identifier would be a 404.
        leaf = _leaf(hierarchy, serial=0x80_00_00_00_00_00_00_00_01)
        now = _utc_now()
        server.suggest(leaf, now - DAY, now + DAY)
        window = fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert window is not None and window.identifier.endswith(".AIAAAAAAAAAAAQ")

    def test_unknown_certificate(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        with pytest.raises(AriError, match="the CA answered with an error") as caught:
            fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert caught.value.url is not None and "/acme/renewal-info/" in caught.value.url

    def test_retry_after_sets_next_check(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        now = _utc_now()
        server.suggest(leaf, now + DAY, now + 2 * DAY, retry_after="7200")
        window = fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert window is not None
        assert abs(window.next_check - (now + dt.timedelta(hours=2))) < dt.timedelta(seconds=30)

    def test_directory_without_renewal_info(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        server.suggest(leaf, _utc_now() - DAY, _utc_now() + DAY)
        assert (
            fetch_renewal_window(server.directory_without_ari_url, leaf.cert, leaf.chain[0]) is None
        )
        assert server.seen() == ["/directory-without-ari"]

    def test_expired_certificate_is_not_asked_about(
        self, server: AriServer, hierarchy: Hierarchy
    ) -> None:
        leaf = _leaf(hierarchy, days_left=-1)
        server.suggest(leaf, _utc_now() - DAY, _utc_now() + DAY)
        assert fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0]) is None
        assert server.seen() == []

    def test_certificate_without_aki(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = hierarchy.issue(not_after=_utc_now() + 60 * DAY)
        with pytest.raises(AriError, match="no Authority Key Identifier") as caught:
            fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert caught.value.url == server.directory_url
        assert server.seen() == []

    def test_wrong_issuer(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        with pytest.raises(AriError, match="not the certificate's issuer"):
            fetch_renewal_window(server.directory_url, leaf.cert, Hierarchy("Other").intermediate)
        assert server.seen() == []

    def test_issuer_with_key_identifier(self, server: AriServer, hierarchy: Hierarchy) -> None:
        # Real intermediates carry a Subject Key Identifier: it must match the leaf's AKI.
        leaf = _leaf(hierarchy)
        now = _utc_now()
        server.suggest(leaf, now - DAY, now + DAY)
        issuer = _reissue(hierarchy, hierarchy.intermediate_key.public_key())
        assert fetch_renewal_window(server.directory_url, leaf.cert, issuer) is not None
        stranger = _reissue(hierarchy, ec.generate_private_key(ec.SECP256R1()).public_key())
        with pytest.raises(AriError, match="does not match the certificate's AKI"):
            fetch_renewal_window(server.directory_url, leaf.cert, stranger)

    @pytest.mark.parametrize(
        ("answer", "reason"),
        [
            (
                Answer(
                    200,
                    b'{"suggestedWindow": {"start": "2030-01-02T00:00:00Z",'
                    b' "end": "2030-01-01T00:00:00Z"}}',
                ),
                "ends before it starts",
            ),
            (
                Answer(200, b'{"suggestedWindow": {"start": "2030-01-02T00:00:00Z"}}'),
                "lacks a start or an end",
            ),
            (Answer(200, b'{"explanationURL": "https://ca.example/"}'), "malformed response"),
            (Answer(200, b"<html>maintenance</html>", "text/html"), "Content-Type"),
            (Answer(503, b"down for maintenance", "text/plain"), "HTTP 503"),
        ],
    )
    def test_bad_answers(
        self, server: AriServer, hierarchy: Hierarchy, answer: Answer, reason: str
    ) -> None:
        leaf = _leaf(hierarchy)
        server.answer(leaf, answer)
        with pytest.raises(AriError, match=reason):
            fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])

    def test_retry_after_on_an_error(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        server.answer(leaf, Answer(503, b"busy", "text/plain", headers={"Retry-After": "7200"}))
        with pytest.raises(AriError, match="HTTP 503") as caught:
            fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])
        assert caught.value.retry_after == "7200"

    def test_timeout(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        server.answer(leaf, Answer(200, b"{}", delay=3))
        started = time.monotonic()
        with pytest.raises(AriError, match="request failed"):
            fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0], timeout=1)
        assert time.monotonic() - started < 2.5

    def test_untrusted_server_certificate(
        self, server: AriServer, hierarchy: Hierarchy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")
        leaf = _leaf(hierarchy)
        with pytest.raises(AriError, match=r"request failed.*(?i:certificate)"):
            fetch_renewal_window(server.directory_url, leaf.cert, leaf.chain[0])

    def test_nothing_listening(self, hierarchy: Hierarchy) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        leaf = _leaf(hierarchy)
        with pytest.raises(AriError, match="request failed") as caught:
            fetch_renewal_window(f"https://127.0.0.1:{port}/directory", leaf.cert, leaf.chain[0])
        assert caught.value.url == f"https://127.0.0.1:{port}/directory"


class TestLibraries:
    """ARI needs nothing beyond the standard library."""

    def test_acme_is_not_loaded(self, server: AriServer, hierarchy: Hierarchy) -> None:
        leaf = _leaf(hierarchy)
        now = _utc_now()
        server.suggest(leaf, now - DAY, now + DAY)
        script = (
            "import sys\n"
            "from cryptography import x509\n"
            "from danesync.ari import fetch_renewal_window\n"
            "leaf, issuer = (x509.load_pem_x509_certificate(p.encode()) for p in sys.argv[2:4])\n"
            "window = fetch_renewal_window(sys.argv[1], leaf, issuer)\n"
            "assert window is not None\n"
            "print(sorted(m for m in ('acme', 'josepy', 'requests') if m in sys.modules))\n"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                server.directory_url,
                leaf.cert_pem.decode(),
                leaf.chain_pem.decode(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(danesync.__file__).parents[1])},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"
