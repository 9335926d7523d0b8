"""The STARTTLS probe: which leaf certificate does Postfix serve right now?

No certificate verification happens here: danesync compares the served leaf
byte for byte with the one it deployed, which is a stronger check than any
trust-anchor path, and works the same for a self-signed test chain.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import Any

from danesync.errors import ProbeError
from danesync.sni import build_concrete_name

DEFAULT_PORT = 25


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# OpenSSL cipher strings that make the server pick the chain of one key
# algorithm (TLS 1.2 only: TLS 1.3 negotiates it with signature algorithms,
# which Python's ssl module cannot restrict).
_ALGORITHM_CIPHERS = {"rsa": "aRSA", "ecdsa": "aECDSA"}


def client_context(key_algorithm: str | None = None) -> ssl.SSLContext:
    """The client context for probes asking for `key_algorithm` (None: any).

    One per algorithm for the life of the process: building a context (and
    OpenSSL 3's setup behind it) was a third of a probe's CPU, and a cold
    start probes every new leaf. Its settings never change and wrapping a
    socket only reads it, so threads share it. It never resumes a session
    (the ssl module resumes only when given `session=`), so every probe is a
    full handshake and sees the certificate served at that moment.
    """
    context = _CONTEXTS.get(key_algorithm)
    if context is None:
        with _CONTEXTS_LOCK:
            context = _CONTEXTS.get(key_algorithm)
            if context is None:
                context = _CONTEXTS[key_algorithm] = _new_client_context(key_algorithm)
    return context


_CONTEXTS: dict[str | None, ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _new_client_context(key_algorithm: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # We compare the exact leaf instead (module docstring).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if key_algorithm in _ALGORITHM_CIPHERS:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(_ALGORITHM_CIPHERS[key_algorithm])
    return context


class Endpoint:
    """A probe endpoint whose name is resolved once, not at every probe.

    Connecting tries each address in the resolver's order (Debian's
    localhost is ::1 first, and Postfix may listen on 127.0.0.1 only) and
    starts with the last one that answered. Used for one batch of probes: a
    later batch resolves again, so a changed address is picked up.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.where = format_host_port(host, port)
        self._addresses: list[tuple[int, Any]] | None = None
        self._lock = threading.Lock()

    def _resolved(self) -> list[tuple[int, Any]]:
        with self._lock:
            if self._addresses is None:
                try:
                    infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                except OSError as error:
                    raise ProbeError(f"{self.where}: cannot connect: {error}") from error
                self._addresses = [(family, address) for family, _, _, _, address in infos]
            return list(self._addresses)

    def connect(self, timeout: float) -> socket.socket:
        addresses = self._resolved()
        error: OSError | None = None
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except OSError as failure:
                sock.close()
                error = failure
                continue
            if (family, address) != addresses[0]:
                with self._lock:  # the next probes start where this one got through
                    if self._addresses is not None and (family, address) in self._addresses:
                        self._addresses.remove((family, address))
                        self._addresses.insert(0, (family, address))
            return sock
        raise ProbeError(f"{self.where}: cannot connect: {error or 'no address'}")


def probe_starttls(
    host: str | Endpoint,
    port: int,
    servername: str | None = None,
    timeout: float = 5,
    *,
    key_algorithm: str | None = None,
) -> bytes:
    """EHLO, STARTTLS, handshake (with SNI `servername` if given); the served leaf, DER.

    With `key_algorithm` ("rsa", "ecdsa"), only that kind of chain is
    acceptable to the client, so a host serving both shows the one asked for.

    `host` may be an `Endpoint` (then `port` is its own): a batch of probes
    resolves the name once. Raises ProbeError saying which step failed.
    """
    return _starttls(host, port, servername, timeout, key_algorithm, whole_chain=False)[0]


def probe_served_chain(
    host: str | Endpoint,
    port: int,
    servername: str | None = None,
    timeout: float = 5,
    *,
    key_algorithm: str | None = None,
) -> tuple[bytes, ...]:
    """As `probe_starttls`, but every certificate the server sent, leaf first, DER.

    A DANE-TA check needs the whole chain as served, in the server's order.
    Where this Python cannot give it (no `get_unverified_chain`), the tuple
    holds the leaf only.
    """
    return _starttls(host, port, servername, timeout, key_algorithm, whole_chain=True)


def _served_chain(tls: ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the peer sent: public API from Python 3.13, private before."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return tuple(_der(cert) for cert in public() or ())
    private = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if private is not None:
        return tuple(_der(cert) for cert in private() or ())
    leaf = tls.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def _der(cert: object) -> bytes:
    if isinstance(cert, bytes):
        return cert
    return bytes(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]


def _starttls(
    host: str | Endpoint,
    port: int,
    servername: str | None,
    timeout: float,
    key_algorithm: str | None,
    *,
    whole_chain: bool,
) -> tuple[bytes, ...]:
    """The chain the server sent after STARTTLS (at least the leaf), leaf first;
    only the leaf unless `whole_chain` (no certificate objects made per probe).

    The dialogue is the shortest Postfix logs as a clean session (EHLO,
    STARTTLS, QUIT: no "lost connection" in the operator's log).
    """
    endpoint = host if isinstance(host, Endpoint) else Endpoint(host, port)
    where = endpoint.where
    sock = endpoint.connect(timeout)
    try:
        replies = _Replies(sock, where)
        code, text = replies.read()
        if code != 220:
            raise ProbeError(f"{where}: cannot connect: greeting {code} {text}")
        sock.sendall(f"EHLO {_helo_name()}\r\n".encode("ascii"))
        code, text = replies.read()
        if code != 250:
            raise ProbeError(f"{where}: EHLO refused: {code} {text}")
        if not any(line.split()[:1] == ["STARTTLS"] for line in text.upper().splitlines()):
            raise ProbeError(f"{where}: STARTTLS is not offered")
        sock.sendall(b"STARTTLS\r\n")
        code, text = replies.read()
        if code != 220:
            raise ProbeError(f"{where}: STARTTLS refused: {code} {text}")
        if replies.pending():
            raise ProbeError(f"{where}: data before the TLS handshake")
        try:
            # Postfix rejects a wildcard as an invalid SNI name: ask for a name under it.
            sni_name = build_concrete_name(servername) if servername else None
            tls = client_context(key_algorithm).wrap_socket(sock, server_hostname=sni_name)
        except ssl.SSLError as error:
            raise ProbeError(f"{where}: TLS handshake failed: {error}") from error
        sock = tls
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise ProbeError(f"{where}: no certificate served")
        chain = _served_chain(tls) if whole_chain else (der,)
        if not chain or chain[0] != der:
            chain = (der, *chain)
        with contextlib.suppress(OSError, ProbeError):
            # A courtesy (we have what we came for), but its answer is awaited:
            # closing with Postfix's 221 unread would reset the connection.
            tls.sendall(b"QUIT\r\n")
            _Replies(tls, where).read()
        return chain
    except ProbeError:
        raise
    except OSError as error:
        raise ProbeError(f"{where}: {error or type(error).__name__}") from error
    finally:
        sock.close()


_MAX_LINE = 8192  # as smtplib
_MAX_LINES = 100


class _Replies:
    """SMTP replies read from a socket, buffered only within one reply."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
        self.buffer = b""

    def pending(self) -> bool:
        return bool(self.buffer)

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > _MAX_LINE:
                raise ProbeError(f"{self.where}: reply line too long")
            data = self.sock.recv(4096)
            if not data:
                raise ProbeError(f"{self.where}: connection closed")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def read(self) -> tuple[int, str]:
        """One reply, multi-line included: its code and its text, one line each."""
        lines = []
        for _ in range(_MAX_LINES):
            line = self._line()
            try:
                code = int(line[:3])
            except ValueError:
                raise ProbeError(
                    f"{self.where}: not an SMTP reply: {line[:80].decode(errors='replace')}"
                ) from None
            lines.append(line[4:].decode(errors="replace"))
            if line[3:4] != b"-":
                return code, "\n".join(lines)
        raise ProbeError(f"{self.where}: reply too long")


_HELO_NAME: list[str] = []


def _helo_name() -> str:
    """This host's name for EHLO (as smtplib: gethostname), asked once."""
    if not _HELO_NAME:
        name = socket.gethostname()
        _HELO_NAME.append(name if name and name.isascii() and " " not in name else "localhost")
    return _HELO_NAME[0]


def probe_implicit_tls(
    host: str,
    port: int,
    servername: str | None = None,
    timeout: float = 5,
    *,
    key_algorithm: str | None = None,
) -> bytes:
    """The leaf a TLS-from-the-start service (smtps, port 465) serves, DER; no STARTTLS.

    Raises ProbeError saying which step failed.
    """
    where = format_host_port(host, port)
    sni_name = build_concrete_name(servername) if servername else None
    try:
        # create_connection tries every address the name resolves to.
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError as error:
        raise ProbeError(f"{where}: cannot connect: {error}") from error
    with connection:
        try:
            with client_context(key_algorithm).wrap_socket(
                connection, server_hostname=sni_name
            ) as tls:
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLError as error:
            raise ProbeError(f"{where}: TLS handshake failed: {error}") from error
        except OSError as error:
            raise ProbeError(f"{where}: {error or type(error).__name__}") from error
    if not der:
        raise ProbeError(f"{where}: no certificate served")
    return der


def wait_for_leaf(
    host: str,
    port: int,
    expected_der: bytes,
    servername: str | None = None,
    *,
    deadline: float = 10,
    interval: float = 0.25,
    timeout: float = 5,
    key_algorithm: str | None = None,
) -> bool:
    """Probe until `expected_der` is served (True) or `deadline` seconds pass (False).

    A reload is asynchronous: the master re-reads its configuration and old
    smtpd processes may finish a session with the old chain, so the first
    probes after a reload can still see it or fail.
    """
    end = time.monotonic() + deadline
    while True:
        try:
            if (
                probe_starttls(host, port, servername, timeout, key_algorithm=key_algorithm)
                == expected_der
            ):
                return True
        except ProbeError:
            pass
        if time.monotonic() + interval >= end:
            return False
        time.sleep(interval)
