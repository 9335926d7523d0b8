"""Talking to one DNS server: its addresses, one exchange, TSIG-signed or not.

A server given by host name is tried at every address it resolves to
(Debian's /etc/hosts makes ``localhost`` ::1 first). Failures of the network
become `Unreachable` (worth retrying); TSIG errors are named as the server
would (`tsig_failure`).

The exchange itself (UDP with TCP fallback, TCP) is done here on
dns.message's wire form, not by dns.query: Debian 12's dnspython 2.3 imports
requests, urllib3 and chardet with dns.query for DNS over HTTPS, which
danesync never uses (about 7 MiB of the daemon's memory).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.tsig

from danesync.config import parse_endpoint
from danesync.errors import DnsError

DEFAULT_PORT = 53


@dataclass(frozen=True, order=True)
class Server:
    """A DNS server to talk to directly: an address (or host name) and a port."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_PORT) -> Server:
        """``192.0.2.1``, ``192.0.2.1:53``, ``[2001:db8::1]:53``, ``2001:db8::1``,
        ``ns.example.com:5353``. Raises ValueError with the reason."""
        endpoint = parse_endpoint(text.strip(), default_port)  # the config's own parser
        return cls(endpoint.host, endpoint.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# -- queries -------------------------------------------------------------


class Unreachable(DnsError):
    """The server did not answer (timeout, refused connection): worth retrying."""

    def __init__(self, server: Server, rcode: str, detail: str) -> None:
        self.server = server
        self.rcode = rcode
        self.detail = detail
        super().__init__(f"{server}: {detail}")


def resolve_addresses(server: Server) -> list[str]:
    """The IP addresses to send to, in the resolver's order; a host name is
    resolved by the system (Debian's /etc/hosts makes ``localhost`` ::1 first,
    then 127.0.0.1: a server listening on one of them only is still reached)."""
    try:
        return [str(ipaddress.ip_address(server.host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(server.host, server.port, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise Unreachable(
            server, "UNRESOLVED", f"cannot resolve host name {server.host}: {error}"
        ) from error
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def tsig_failure(error: Exception) -> str | None:
    """The TSIG error name for dnspython's TSIG exceptions, else None."""
    kinds: tuple[tuple[type[Exception], str], ...] = (
        (dns.tsig.PeerBadSignature, "BADSIG"),
        (dns.tsig.PeerBadKey, "BADKEY"),
        (dns.tsig.PeerBadTime, "BADTIME"),
        (dns.tsig.PeerBadTruncation, "BADTRUNC"),
        (dns.tsig.BadSignature, "BADRESPONSE"),
        (dns.tsig.BadTime, "BADTIME"),
        (dns.tsig.BadKey, "BADRESPONSE"),
        (dns.message.UnknownTSIGKey, "BADRESPONSE"),
    )
    for kind, name in kinds:
        if isinstance(error, kind):
            return name
    return None


def exchange(
    server: Server,
    message: dns.message.Message,
    timeout: float,
    *,
    tcp: bool,
    signed: bool = False,
    maybe_delivered: Callable[[], None] = lambda: None,
) -> dns.message.Message:
    """Send one message to the first of the server's addresses that answers
    (each gets `timeout`). `maybe_delivered` is called when an address that
    is then given up on may have received the message (a timeout, a
    connection closed without an answer): an update may have been applied
    there. Every address failing -> Unreachable naming each."""
    addresses = resolve_addresses(server)
    failures: list[Unreachable] = []
    for address in addresses:
        try:
            if signed:
                return _exchange_signed_at(server, address, message, timeout)
            return _exchange_at(server, address, message, timeout, tcp=tcp)
        except Unreachable as error:
            failures.append(error)
            if address != addresses[-1] and not isinstance(error.__cause__, ConnectionRefusedError):
                maybe_delivered()
    if len(failures) == 1:
        raise failures[0]
    detail = "; ".join(f"{a}: {f.detail}" for a, f in zip(addresses, failures, strict=True))
    raise Unreachable(server, failures[-1].rcode, detail) from failures[-1]


def _exchange_at(
    server: Server, where: str, message: dns.message.Message, timeout: float, *, tcp: bool
) -> dns.message.Message:
    """Send one message to one address and return the answer; network failures -> Unreachable.
    Over UDP a truncated answer (TC) is asked again over TCP, as resolvers do."""
    wire = message.to_wire()
    try:
        if tcp:
            return _parse_answer(server, message, _tcp_exchange(where, server.port, wire, timeout))
        response = _udp_exchange(server, where, message, wire, timeout)
        if response.flags & dns.flags.TC:
            answer = _tcp_exchange(where, server.port, wire, timeout)
            return _parse_answer(server, message, answer)
        return response
    except (EOFError, OSError) as error:
        raise _network_failure(server, error, timeout) from error


def _tcp_exchange(where: str, port: int, wire: bytes, timeout: float) -> bytes:
    """One length-prefixed message over a new TCP connection; the answer's bytes."""
    with socket.create_connection((where, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        return _read_framed(sock)


def _udp_exchange(
    server: Server, where: str, message: dns.message.Message, wire: bytes, timeout: float
) -> dns.message.Message:
    """One datagram to `where`, and its answer from there within `timeout`.

    As dns.query.udp: the socket is not connected (a stopped server means a
    timeout, not an ICMP refusal), datagrams from any other address or port
    are skipped, and the first from the server must answer this message.
    """
    family = socket.AF_INET6 if ":" in where else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(wire, (where, server.port))
        expected = (ipaddress.ip_address(where), server.port)
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            answer, source = sock.recvfrom(65535)
            if (ipaddress.ip_address(source[0]), source[1]) == expected:
                return _parse_answer(server, message, answer)


def _parse_answer(
    server: Server, message: dns.message.Message, answer: bytes
) -> dns.message.Message:
    """The answer to `message` (TSIG checked as dnspython does); DnsError if it is not one."""
    try:
        response = dns.message.from_wire(answer, keyring=message.keyring, request_mac=message.mac)
    except dns.exception.DNSException as error:
        if tsig_failure(error) is not None:
            raise  # the update maps these to BADSIG, BADKEY, ...
        raise DnsError(f"{server}: unusable answer: {error}") from error
    if not message.is_response(response):
        raise DnsError(f"{server}: the answer does not match the question")
    return response


def _network_failure(server: Server, error: Exception, timeout: float) -> Unreachable:
    """What a send or receive that failed on the network means for the operator."""
    if isinstance(error, dns.exception.Timeout | TimeoutError):
        return Unreachable(server, "TIMEOUT", f"no answer within {timeout:g} s")
    if isinstance(error, ConnectionRefusedError):
        return Unreachable(
            server, "UNREACHABLE", "connection refused (is the name server running?)"
        )
    if isinstance(error, EOFError):
        return Unreachable(
            server, "UNREACHABLE", "the server closed the connection without answering"
        )
    detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return Unreachable(server, "UNREACHABLE", detail)


def _read_framed(sock: socket.socket) -> bytes:
    """One DNS-over-TCP message, without its two-byte length prefix."""
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        chunk = sock.recv(65535)
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data[2 : 2 + int.from_bytes(data[:2], "big")]


def _exchange_signed_at(
    server: Server, where: str, message: dns.message.Message, timeout: float
) -> dns.message.Message:
    """Send a TSIG-signed message over TCP and return the answer.

    Unlike dns.query.tcp, an answer *without* a TSIG record is returned (with
    ``had_tsig`` false) instead of raising: PowerDNS answers a bad key that
    way, Knot a zone it does not serve, and newer dnspython raises a bare
    FormError for both where Debian's 2.3 returns the message. Doing the
    exchange here gives the same answer, hence the same diagnosis, on every
    dnspython. A signed answer is verified as usual (PeerBadKey, ...).
    """
    wire = message.to_wire()  # signs, and sets message.mac for the answer's check
    try:
        with socket.create_connection((where, server.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            answer = _read_framed(sock)
    except (EOFError, OSError) as error:
        raise _network_failure(server, error, timeout) from error
    try:
        response = dns.message.from_wire(answer, keyring=message.keyring, request_mac=message.mac)
    except dns.exception.FormError:
        # Newer dnspython: "response requires a TSIG but does not have one".
        response = dns.message.from_wire(answer)
        if response.had_tsig:
            raise
    if not message.is_response(response):
        raise DnsError(f"{server}: the answer does not match the question")
    return response
