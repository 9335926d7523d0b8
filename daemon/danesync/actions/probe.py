"""The STARTTLS probe: which leaf certificate does Postfix serve right now?

No certificate verification happens here: danesync compares the served leaf
byte for byte with the one it deployed, which is a stronger check than any
trust-anchor path, and works the same for a self-signed test chain.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import time

from danesync.errors import ProbeError
from danesync.sni import build_concrete_name

DEFAULT_PORT = 25


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# OpenSSL cipher strings that make the server pick the chain of one key
# algorithm (TLS 1.2 only: TLS 1.3 negotiates it with signature algorithms,
# which Python's ssl module cannot restrict).
_ALGORITHM_CIPHERS = {"rsa": "aRSA", "ecdsa": "aECDSA"}


def _client_context(key_algorithm: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # We compare the exact leaf instead (module docstring).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if key_algorithm in _ALGORITHM_CIPHERS:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(_ALGORITHM_CIPHERS[key_algorithm])
    return context


def probe_starttls(
    host: str,
    port: int,
    servername: str | None = None,
    timeout: float = 5,
    *,
    key_algorithm: str | None = None,
) -> bytes:
    """EHLO, STARTTLS, handshake (with SNI `servername` if given); the served leaf, DER.

    With `key_algorithm` ("rsa", "ecdsa"), only that kind of chain is
    acceptable to the client, so a host serving both shows the one asked for.

    Raises ProbeError saying which step failed.
    """
    return _starttls(host, port, servername, timeout, key_algorithm)[0]


def probe_served_chain(
    host: str,
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
    return _starttls(host, port, servername, timeout, key_algorithm)


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
    host: str, port: int, servername: str | None, timeout: float, key_algorithm: str | None
) -> tuple[bytes, ...]:
    """The chain the server sent after STARTTLS (at least the leaf), leaf first."""
    where = format_host_port(host, port)
    try:
        smtp = smtplib.SMTP(host, port, local_hostname=socket.gethostname(), timeout=timeout)
    except (OSError, smtplib.SMTPException) as error:
        raise ProbeError(f"{where}: cannot connect: {error}") from error
    try:
        code, message = smtp.ehlo()
        if code != 250:
            raise ProbeError(f"{where}: EHLO refused: {code} {message.decode(errors='replace')}")
        if not smtp.has_extn("starttls"):
            raise ProbeError(f"{where}: STARTTLS is not offered")
        code, message = smtp.docmd("STARTTLS")
        if code != 220:
            raise ProbeError(
                f"{where}: STARTTLS refused: {code} {message.decode(errors='replace')}"
            )
        if smtp.sock is None:
            raise ProbeError(f"{where}: connection closed after STARTTLS")
        try:
            # Postfix rejects a wildcard as an invalid SNI name: ask for a name under it.
            sni_name = build_concrete_name(servername) if servername else None
            tls = _client_context(key_algorithm).wrap_socket(smtp.sock, server_hostname=sni_name)
        except ssl.SSLError as error:
            raise ProbeError(f"{where}: TLS handshake failed: {error}") from error
        # As smtplib's own starttls does: later commands go over TLS.
        smtp.sock, smtp.file = tls, None
        der = tls.getpeercert(binary_form=True)
        if not der:
            raise ProbeError(f"{where}: no certificate served")
        chain = _served_chain(tls)
        if not chain or chain[0] != der:
            chain = (der, *chain)
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()  # a courtesy: we have what we came for
        return chain
    except ProbeError:
        raise
    except (OSError, smtplib.SMTPException) as error:
        raise ProbeError(f"{where}: {error or type(error).__name__}") from error
    finally:
        smtp.close()


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
            with _client_context(key_algorithm).wrap_socket(
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
