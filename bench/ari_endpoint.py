"""A minimal ACME directory with RFC 9773 renewalInfo, over HTTPS on loopback.

Every renewalInfo request gets a window 30 to 32 days ahead and
`Retry-After: 21600`, like a CA with nothing to say; `delay` holds each answer
back to stand in for the network between a mail host and its CA. Used to
measure what asking the CA costs a full pass with many lineages.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: AriEndpoint


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        endpoint = self.server.endpoint
        with endpoint.lock:
            endpoint.requests += 1
        if endpoint.delay:
            time.sleep(endpoint.delay)
        headers: dict[str, str] = {}
        if self.path == "/directory":
            body: dict[str, Any] = {
                name: f"{endpoint.base}/acme/{name}"
                for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange")
            }
            body["renewalInfo"] = f"{endpoint.base}/acme/renewal-info"
        elif self.path.startswith("/acme/renewal-info/"):
            now = dt.datetime.now(dt.UTC)
            start, end = now + dt.timedelta(days=30), now + dt.timedelta(days=32)
            body = {
                "suggestedWindow": {
                    "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            }
            headers["Retry-After"] = "21600"
        else:
            self.send_error(404)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class AriEndpoint:
    """`with AriEndpoint(directory) as ca:` serves `ca.directory_url`; trust `ca.ca_file`."""

    def __init__(self, directory: Path, delay: float = 0.0) -> None:
        self.directory = directory
        self.delay = delay
        self.requests = 0
        self.lock = threading.Lock()
        self.ca_file = directory / "ari-endpoint.pem"
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        assert self._httpd is not None
        return f"https://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def directory_url(self) -> str:
        return f"{self.base}/directory"

    def __enter__(self) -> AriEndpoint:
        self.directory.mkdir(parents=True, exist_ok=True)
        key_path = self.directory / "ari-endpoint.key"
        _write_self_signed(self.ca_file, key_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_path)
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        httpd.endpoint = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _write_self_signed(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "danesync bench ARI endpoint")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
