"""danesync.actions.dns against a real BIND started by the test.

Changes "by hand" and checks go through the harness (nsupdate with its own
admin key, dig), never through the code under test.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from danesync.actions.dns import (
    RetryPolicy,
    Server,
    find_verify_servers,
    query_tlsa,
    query_visibility,
    send_tlsa_update,
)
from danesync.errors import DnsError, DnsUpdateError
from danesync.tlsa import TlsaRecord
from danesync.tsigkey import TsigKey, read_tsig_key
from tests.harness.bind import BindServer, bind_fixture

pytestmark = pytest.mark.integration

ZONE = "example.test"
MX = "_25._tcp.mx.example.test."
MX2 = "_25._tcp.mx2.example.test."

bind = bind_fixture()
# A second, independent primary of the same zone, with a larger NS set.
bind_b = bind_fixture(
    "bind_b",
    records=["@ IN NS ns2", "ns2 IN A 127.0.0.2", "ns2 IN AAAA ::2", "@ IN NS localhost."],
)


def record(name: str, seed: int | str, usage: int = 3) -> TlsaRecord:
    return TlsaRecord(name, usage, 1, 1, hashlib.sha256(str(seed).encode()).hexdigest())


def server(bind_server: BindServer) -> Server:
    return Server(bind_server.host, bind_server.port)


class _Sleeps:
    """An injectable sleep that records the delays and can act on each one."""

    def __init__(self, action: object = None) -> None:
        self.delays: list[float] = []
        self.action = action

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if callable(self.action):
            self.action()


class _UpdateAnswerDropper:
    """A TCP relay to BIND that passes everything but drops the answer to the
    first UPDATE: the update is applied, the client never hears so."""

    def __init__(self, target: BindServer) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.stopping = threading.Event()
        self.dropped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return Server("127.0.0.1", self.listener.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(5)
            with client, socket.create_connection((self.target.host, self.target.port)) as up:
                request = _read_framed(client)
                up.sendall(request)
                answer = _read_framed(up)
                is_update = (request[4] >> 3) & 0xF == 5  # opcode, after the length
                if is_update and not self.dropped:
                    self.dropped = True
                    continue  # close without answering
                client.sendall(answer)


def _read_framed(connection: socket.socket) -> bytes:
    """One DNS-over-TCP message, with its two-byte length prefix."""
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@pytest.fixture
def clean(bind: BindServer, bind_b: BindServer) -> Iterator[None]:
    """Both granted names start without TLSA records on both servers."""
    for bind_server in (bind, bind_b):
        bind_server.start()
        bind_server.nsupdate(f"update delete {MX} TLSA\nupdate delete {MX2} TLSA")
    yield


@pytest.fixture
def key(bind: BindServer) -> TsigKey:
    return read_tsig_key(bind.key_path)


@pytest.mark.usefixtures("clean")
class TestQueryTlsa:
    """query_tlsa asks one authoritative server directly."""

    def test_nxdomain_is_empty(self, bind: BindServer) -> None:
        assert query_tlsa(server(bind), "_25._tcp.nothing.example.test") == frozenset()

    def test_noerror_without_answer_is_empty(self, bind: BindServer) -> None:
        assert query_tlsa(server(bind), "mx.example.test.") == frozenset()

    def test_sees_what_dig_sees(self, bind: BindServer) -> None:
        one, two = record(MX, 1), record(MX, 2, usage=2)
        bind.add_record(MX, "TLSA", one.rdata)
        bind.add_record(MX, "TLSA", two.rdata.upper())
        assert query_tlsa(server(bind), "_25._tcp.MX.example.test") == {one, two}
        assert bind.dig_tlsa(MX) == {one.rdata, two.rdata}

    def test_a_truncated_answer_is_asked_again_over_tcp(self, bind: BindServer) -> None:
        # 24 records do not fit the 512 bytes of a UDP answer without EDNS:
        # BIND sets TC, and the whole set comes over TCP.
        many = {record(MX, f"many {n}") for n in range(24)}
        for one in many:
            bind.add_record(MX, "TLSA", one.rdata)
        assert query_tlsa(server(bind), MX) == many

    def test_refused_names_the_server(self, bind: BindServer) -> None:
        with pytest.raises(DnsError, match=rf"^{bind.address}: answered REFUSED"):
            query_tlsa(server(bind), "_25._tcp.mx.elsewhere.test")

    def test_stopped_server_times_out(self, bind: BindServer) -> None:
        with bind.stopped():
            started = time.monotonic()
            with pytest.raises(DnsError, match=rf"^{bind.address}: no answer within 0.3 s"):
                query_tlsa(server(bind), MX, timeout=0.3)
            assert time.monotonic() - started < 2


@pytest.mark.usefixtures("clean")
class TestSendTlsaUpdate:
    """RFC 2136 updates: single records, prerequisites, clear failures."""

    def test_publish_one_record(self, bind: BindServer, key: TsigKey) -> None:
        new = record(MX, "publish")
        result = send_tlsa_update(server(bind), ZONE, key, add=[new], delete=[], ttl=60)
        assert (result.added, result.deleted, result.sends, result.conflicts) == (
            frozenset({new}),
            frozenset(),
            1,
            0,
        )
        assert query_tlsa(server(bind), MX) == {new}
        assert bind.dig_tlsa(MX) == {new.rdata}
        answer = bind.dig(MX, "TLSA", "+noall", "+answer").split()
        assert answer[:4] == [MX, "60", "IN", "TLSA"]

    def test_second_record_beside_the_first(self, bind: BindServer, key: TsigKey) -> None:
        first, second = record(MX, "first"), record(MX, "second", usage=2)
        send_tlsa_update(server(bind), ZONE, key, [first], [], 60)
        result = send_tlsa_update(server(bind), ZONE, key, [second], [], 60)
        assert result.added == {second}
        assert bind.dig_tlsa(MX) == {first.rdata, second.rdata}

    def test_delete_one_keeps_the_others(self, bind: BindServer, key: TsigKey) -> None:
        by_hand = record(MX, "by hand", usage=2)
        bind.add_record(MX, "TLSA", by_hand.rdata)
        old, new = record(MX, "old"), record(MX, "new")
        send_tlsa_update(server(bind), ZONE, key, [old, new], [], 60)
        assert bind.dig_tlsa(MX) == {by_hand.rdata, old.rdata, new.rdata}

        result = send_tlsa_update(server(bind), ZONE, key, [], [old], 60)
        assert result.deleted == {old}
        assert bind.dig_tlsa(MX) == {by_hand.rdata, new.rdata}

        send_tlsa_update(server(bind), ZONE, key, [], [new], 60)
        assert bind.dig_tlsa(MX) == {by_hand.rdata}

    def test_add_and_delete_at_two_names_at_once(self, bind: BindServer, key: TsigKey) -> None:
        old, at_mx, at_mx2 = record(MX, "old"), record(MX, "a"), record(MX2, "b")
        send_tlsa_update(server(bind), ZONE, key, [old], [], 60)
        result = send_tlsa_update(server(bind), ZONE, key, [at_mx, at_mx2], [old], 60)
        assert (result.added, result.deleted, result.sends) == (
            frozenset({at_mx, at_mx2}),
            frozenset({old}),
            1,
        )
        assert bind.dig_tlsa(MX) == {at_mx.rdata}
        assert bind.dig_tlsa(MX2) == {at_mx2.rdata}

    def test_nothing_to_do_sends_nothing(self, bind: BindServer, key: TsigKey) -> None:
        present, absent = record(MX, "present"), record(MX, "absent")
        send_tlsa_update(server(bind), ZONE, key, [present], [], 60)
        result = send_tlsa_update(server(bind), ZONE, key, [present], [absent], 60)
        assert (result.added, result.deleted, result.sends) == (frozenset(), frozenset(), 0)
        assert bind.dig_tlsa(MX) == {present.rdata}

    def test_wrong_secret_is_badsig(self, bind: BindServer, key: TsigKey) -> None:
        wrong = TsigKey(key.name, key.algorithm, os.urandom(32))
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(bind), ZONE, wrong, [record(MX, 1)], [], 60)
        assert info.value.rcode == "BADSIG"
        assert info.value.zone == ZONE
        assert "bad signature" in str(info.value)
        assert f'TSIG key "{key.name}"' in str(info.value)
        assert bind.dig_tlsa(MX) == set()

    def test_unknown_key_is_badkey(self, bind: BindServer, key: TsigKey) -> None:
        stranger = TsigKey("stranger", key.algorithm, key.secret)
        with pytest.raises(DnsUpdateError, match=r'BADKEY: .* does not know TSIG key "stranger"'):
            send_tlsa_update(server(bind), ZONE, stranger, [record(MX, 1)], [], 60)

    def test_name_outside_update_policy_is_refused(self, bind: BindServer, key: TsigKey) -> None:
        name = "_25._tcp.other.example.test."
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(bind), ZONE, key, [record(name, 1)], [], 60)
        assert info.value.rcode == "REFUSED"
        assert (
            f"REFUSED: {bind.address} refused the update: its update-policy (or allow-update) "
            f'does not allow TSIG key "danesync" to change {name} TLSA'
        ) in str(info.value)
        assert bind.dig_tlsa(name) == set()

    def test_unsigned_update_is_refused(self, bind: BindServer) -> None:
        with pytest.raises(DnsUpdateError, match=r"REFUSED: .* unsigned updates"):
            send_tlsa_update(server(bind), ZONE, None, [record(MX, 1)], [], 60)

    def test_name_outside_zone_is_never_sent(self, bind: BindServer, key: TsigKey) -> None:
        with pytest.raises(DnsUpdateError, match=r"NOTZONE: _25._tcp.mx.other.test. is not in"):
            send_tlsa_update(
                server(bind), ZONE, key, [record("_25._tcp.mx.other.test.", 1)], [], 60
            )

    def test_zone_not_served(self, bind: BindServer, key: TsigKey) -> None:
        name = "_25._tcp.mx.other.test."
        # Reading the RRset first: BIND refuses to answer for a zone it does not serve.
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(server(bind), "other.test", key, [record(name, 1)], [], 60)
        assert info.value.rcode == "FAILED"
        assert f"{bind.address}: answered REFUSED to the TLSA query" in str(info.value)
        # Sending straight away: the update itself is answered NOTAUTH.
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(
                server(bind), "other.test", key, [record(name, 1)], [], 60, expected={}
            )
        assert info.value.rcode == "NOTAUTH"
        assert "is not authoritative for zone other.test" in str(info.value)

    def test_server_stopped_retries_then_fails_clearly(
        self, bind: BindServer, key: TsigKey
    ) -> None:
        sleeps = _Sleeps()
        retry = RetryPolicy(attempts=3, first_delay=0.5, factor=2.0)
        with bind.stopped(), pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(
                server(bind), ZONE, key, [record(MX, 1)], [], 60, retry=retry, sleep=sleeps
            )
        assert sleeps.delays == [0.5, 1.0]
        assert info.value.rcode == "UNREACHABLE"
        assert f"{bind.address}: connection refused" in str(info.value)
        assert "(3 attempts)" in str(info.value)
        # After the restart the same update goes through.
        new = record(MX, 1)
        assert send_tlsa_update(server(bind), ZONE, key, [new], [], 60).added == {new}
        assert bind.dig_tlsa(MX) == {new.rdata}

    def test_server_back_during_backoff(self, bind: BindServer, key: TsigKey) -> None:
        new = record(MX, "back")
        sleeps = _Sleeps(action=bind.start)
        with bind.stopped():
            result = send_tlsa_update(server(bind), ZONE, key, [new], [], 60, sleep=sleeps)
        assert (result.added, result.retries, len(sleeps.delays)) == (frozenset({new}), 1, 1)
        assert bind.dig_tlsa(MX) == {new.rdata}

    def test_server_that_never_answers_times_out(self, key: TsigKey) -> None:
        # A listening socket nobody reads: the TCP handshake completes, no answer comes.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sink:
            sink.bind(("127.0.0.1", 0))
            sink.listen(8)
            silent = Server("127.0.0.1", sink.getsockname()[1])
            sleeps = _Sleeps()
            started = time.monotonic()
            with pytest.raises(DnsUpdateError) as info:
                send_tlsa_update(
                    silent,
                    ZONE,
                    key,
                    [record(MX, 1)],
                    [],
                    60,
                    timeout=0.3,
                    retry=RetryPolicy(attempts=2),
                    sleep=sleeps,
                )
        assert info.value.rcode == "TIMEOUT"
        assert f"{silent}: no answer within 0.3 s (2 attempts)" in str(info.value)
        assert time.monotonic() - started < 3

    def test_lost_answer_still_counts_as_ours(self, bind: BindServer, key: TsigKey) -> None:
        # The first update reaches BIND, but its answer is lost on the way back.
        mine, theirs = record(MX, "mine"), record(MX, "theirs", usage=2)
        bind.add_record(MX, "TLSA", theirs.rdata)
        with _UpdateAnswerDropper(bind) as relay:
            result = send_tlsa_update(relay, ZONE, key, [mine], [], 60, sleep=_Sleeps())
        assert (result.added, result.sends, result.retries) == (frozenset({mine}), 1, 1)
        assert bind.dig_tlsa(MX) == {mine.rdata, theirs.rdata}
        with _UpdateAnswerDropper(bind) as relay:
            result = send_tlsa_update(relay, ZONE, key, [], [mine], 60, sleep=_Sleeps())
        assert (result.deleted, result.sends, result.retries) == (frozenset({mine}), 1, 1)
        assert bind.dig_tlsa(MX) == {theirs.rdata}

    def test_concurrent_add_is_detected_and_kept(self, bind: BindServer, key: TsigKey) -> None:
        mine, theirs = record(MX, "mine"), record(MX, "theirs", usage=2)
        seen = {MX: query_tlsa(server(bind), MX)}  # empty
        bind.add_record(MX, "TLSA", theirs.rdata)  # someone else, after our read
        result = send_tlsa_update(server(bind), ZONE, key, [mine], [], 60, expected=seen)
        assert (result.conflicts, result.sends, result.added) == (1, 2, frozenset({mine}))
        assert bind.dig_tlsa(MX) == {mine.rdata, theirs.rdata}

    def test_concurrent_delete_is_not_undone(self, bind: BindServer, key: TsigKey) -> None:
        mine, theirs = record(MX, "mine"), record(MX, "theirs", usage=2)
        send_tlsa_update(server(bind), ZONE, key, [mine], [], 60)
        bind.add_record(MX, "TLSA", theirs.rdata)
        seen = {MX: query_tlsa(server(bind), MX)}
        bind.delete_record(MX, "TLSA", theirs.rdata)  # removed by hand after our read
        result = send_tlsa_update(server(bind), ZONE, key, [], [mine], 60, expected=seen)
        assert (result.conflicts, result.deleted) == (1, frozenset({mine}))
        assert bind.dig_tlsa(MX) == set()

    def test_too_many_conflicts_give_up(self, bind: BindServer, key: TsigKey) -> None:
        theirs = record(MX, "theirs", usage=2)
        bind.add_record(MX, "TLSA", theirs.rdata)
        with pytest.raises(DnsUpdateError) as info:
            send_tlsa_update(
                server(bind),
                ZONE,
                key,
                [record(MX, "mine")],
                [],
                60,
                expected={MX: frozenset()},
                retry=RetryPolicy(conflicts=1),
            )
        assert info.value.rcode == "YXRRSET"
        assert "kept changing while danesync was updating them (1 attempts)" in str(info.value)
        assert bind.dig_tlsa(MX) == {theirs.rdata}


@pytest.mark.usefixtures("clean")
class TestVisibility:
    """query_visibility: visible means every server returns the record."""

    def test_visible_only_once_every_server_has_it(
        self, bind: BindServer, bind_b: BindServer, key: TsigKey
    ) -> None:
        new = record(MX, "visible")
        send_tlsa_update(server(bind), ZONE, key, [new], [], 60)
        servers = [server(bind), server(bind), server(bind_b)]
        view = query_visibility(servers, [MX, MX2])
        assert view.servers == (server(bind), server(bind_b))
        assert view.complete
        assert not view.visible_everywhere(new)
        assert view.missing_from(new) == (server(bind_b),)
        assert view.on_server(server(bind), MX) == {new}

        bind_b.add_record(MX, "TLSA", new.rdata)
        view = query_visibility(servers, [MX, MX2])
        assert view.visible_everywhere(new)
        assert view.visible_records() == {new}
        assert view.visible_records(MX2) == frozenset()

    def test_stopped_server_makes_nothing_visible(
        self, bind: BindServer, bind_b: BindServer
    ) -> None:
        new = record(MX, "stopped")
        for bind_server in (bind, bind_b):
            bind_server.add_record(MX, "TLSA", new.rdata)
        servers = [server(bind), server(bind), server(bind_b)]
        assert query_visibility(servers, [MX]).visible_everywhere(new)
        with bind_b.stopped():
            started = time.monotonic()
            view = query_visibility(servers, [MX, MX2, "_25._tcp.mx3.example.test"], timeout=1.0)
            # A dead server costs one timeout (1 s), not one per name (3 s).
            assert time.monotonic() - started < 2.5
        assert not view.visible_everywhere(new)
        assert not view.complete
        assert view.missing_from(new) == (server(bind_b),)
        assert view.on_server(server(bind), MX) == {new}
        assert f"{bind_b.address}: {MX}: no answer within 1 s" in view.problems()


class TestFindVerifyServers:
    """The default verify_servers: the primary plus the zone's NS set."""

    def test_ns_in_zone_is_the_primary(self, bind: BindServer) -> None:
        # ns1.example.test is 127.0.0.1: the same server as the primary.
        assert find_verify_servers(ZONE, server(bind)) == [server(bind)]

    def test_ns_set_resolved_by_primary_then_system(self, bind_b: BindServer) -> None:
        port = bind_b.port
        found = find_verify_servers(ZONE, Server("localhost", port))
        # ns2 from the primary (IPv4 only, as it has an A record); localhost.
        # (outside the zone) from the system resolver.
        assert found == [
            Server("localhost", port),
            Server("127.0.0.1", port),
            Server("127.0.0.2", port),
        ]

    def test_ns_without_address_is_an_error(self, bind_b: BindServer) -> None:
        bind_b.add_record(f"{ZONE}.", "NS", "nowhere.invalid.")
        try:
            with pytest.raises(DnsError, match=r"name server nowhere\.invalid\. .* no address"):
                find_verify_servers(ZONE, server(bind_b))
        finally:
            bind_b.delete_record(f"{ZONE}.", "NS", "nowhere.invalid.")

    def test_not_authoritative(self, bind: BindServer) -> None:
        with pytest.raises(DnsError, match=r"is not authoritative for zone other\.test\."):
            find_verify_servers("other.test", server(bind))

    def test_primary_down(self, bind: BindServer) -> None:
        with bind.stopped(), pytest.raises(DnsError, match=r"cannot ask .* for the NS set"):
            find_verify_servers(ZONE, server(bind), timeout=0.3)
