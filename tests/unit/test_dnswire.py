"""danesync.actions.dnswire's own UDP exchange (it does not use dns.query):
which datagrams it takes as the answer. A socket on loopback plays the server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from danesync.actions.dnswire import Server, exchange
from danesync.errors import DnsError


@pytest.fixture
def udp_server() -> Iterator[tuple[socket.socket, Server]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock, Server("127.0.0.1", sock.getsockname()[1])


def _serve_once(
    sock: socket.socket, act: Callable[[dns.message.Message, tuple[str, int]], None]
) -> threading.Thread:
    def run() -> None:
        wire, client = sock.recvfrom(65535)
        act(dns.message.from_wire(wire), client)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _answer(query: dns.message.Message, text: str) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.answer.append(
        dns.rrset.from_text(query.question[0].name, 60, "IN", "TXT", f'"{text}"')
    )
    return response.to_wire()


def _query() -> dns.message.Message:
    return dns.message.make_query("example.test.", dns.rdatatype.TXT)


def test_a_datagram_from_another_port_is_not_the_answer(
    udp_server: tuple[socket.socket, Server],
) -> None:
    sock, server = udp_server

    def act(query: dns.message.Message, client: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.bind(("127.0.0.1", 0))
            other.sendto(_answer(query, "forged"), client)  # the right id, the wrong source
        sock.sendto(_answer(query, "real"), client)

    thread = _serve_once(sock, act)
    response = exchange(server, _query(), 3.0, tcp=False)
    thread.join()
    assert [rdata.to_text() for rdata in response.answer[0]] == ['"real"']


def test_an_answer_to_another_question_is_refused(
    udp_server: tuple[socket.socket, Server],
) -> None:
    sock, server = udp_server

    def act(query: dns.message.Message, client: tuple[str, int]) -> None:
        query.id ^= 1
        sock.sendto(_answer(query, "stale"), client)

    thread = _serve_once(sock, act)
    with pytest.raises(DnsError, match="does not match the question"):
        exchange(server, _query(), 3.0, tcp=False)
    thread.join()


def test_silence_is_a_timeout(udp_server: tuple[socket.socket, Server]) -> None:
    _, server = udp_server
    with pytest.raises(DnsError, match=r"no answer within 0\.2 s"):
        exchange(server, _query(), 0.2, tcp=False)
