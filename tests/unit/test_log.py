"""Logging: JSON lines, journald fields, format choice and redaction of secrets."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from danesync import log as danesync_log
from danesync.log import (
    REDACTED,
    build_format_choice,
    build_journal_fields,
    build_message,
    configure_logging,
    get_logger,
    journal_field_name,
    redact_secrets,
    redact_text,
)
from tests.conftest import require_root
from tests.harness.certs import Hierarchy, key_pem, make_key

TSIG_FILE = 'key "danesync" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0c2VjcmV0c2VjcmV0";\n};\n'


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture(scope="module")
def pems() -> dict[str, bytes]:
    rsa = make_key("rsa", slot=1)
    ec = make_key("ec256")
    return {
        "pkcs8": key_pem(ec),
        "rsa-traditional": key_pem(rsa, traditional=True),
        "ec-traditional": key_pem(ec, traditional=True),
        "encrypted": key_pem(ec, password=b"pw"),
        "certificate": Hierarchy().issue().cert_pem,
    }


class TestRedaction:
    """No private key or TSIG secret survives, whatever field it hides in."""

    @pytest.mark.parametrize("kind", ["pkcs8", "rsa-traditional", "ec-traditional", "encrypted"])
    def test_private_key_pem_in_any_field(self, pems: dict[str, bytes], kind: str) -> None:
        pem = pems[kind].decode()
        body = pem.splitlines()[1]
        event = redact_secrets(None, "info", {"event": "x", "reason": f"bad file:\n{pem}end"})
        assert body not in event["reason"]
        assert "PRIVATE KEY" not in event["reason"]
        assert event["reason"] == f"bad file:\n{REDACTED}end"

    def test_truncated_pem_is_redacted_to_the_end(self, pems: dict[str, bytes]) -> None:
        half = pems["pkcs8"].decode()[:80]
        assert redact_text(f"read {half}") == f"read {REDACTED}"

    def test_bytes_value(self, pems: dict[str, bytes]) -> None:
        event = redact_secrets(None, "info", {"event": "x", "data": pems["rsa-traditional"]})
        assert event["data"] == REDACTED

    def test_certificate_is_kept(self, pems: dict[str, bytes]) -> None:
        cert = pems["certificate"].decode()
        event = redact_secrets(None, "info", {"event": "x", "pem": cert})
        assert event["pem"] == cert

    def test_secret_names_stay_redacted_record_after_record(self) -> None:
        """The names' verdicts are remembered (issue 15, coldread): never the other way round."""
        for _ in range(3):
            event = redact_secrets(
                None, "info", {"event": "x", "tsig_secret": "c2VjcmV0", "lineage": "mx", "n": 1}
            )
            assert event == {"event": "x", "tsig_secret": REDACTED, "lineage": "mx", "n": 1}

    def test_a_key_inside_a_scalar_subclass_is_still_redacted(self, pems: dict[str, bytes]) -> None:
        class Text(str):
            pass

        event = redact_secrets(None, "info", {"event": "x", "reason": Text(pems["pkcs8"].decode())})
        assert event["reason"] == REDACTED

    def test_bind_secret(self) -> None:
        event = redact_secrets(None, "info", {"event": "x", "reason": f"cannot parse {TSIG_FILE}"})
        assert "c2VjcmV0" not in event["reason"]
        assert f'secret "{REDACTED}";' in event["reason"]
        assert "algorithm hmac-sha256" in event["reason"]

    @pytest.mark.parametrize(
        "name",
        [
            "key",
            "privkey",
            "private_key",
            "tsig_secret",
            "secret",
            "password",
            "tsig_key",
            "Key_PEM",
        ],
    )
    def test_secret_names(self, name: str) -> None:
        event = redact_secrets(None, "info", {"event": "x", name: "anything"})
        assert event[name] == REDACTED

    @pytest.mark.parametrize("name", ["key_file", "tsig_key_file", "key_type", "lineage", "keys"])
    def test_harmless_names(self, name: str) -> None:
        event = redact_secrets(None, "info", {"event": "x", name: "/etc/danesync/tsig.key"})
        assert event[name] == "/etc/danesync/tsig.key"

    def test_nested(self, pems: dict[str, bytes]) -> None:
        event = redact_secrets(
            None,
            "info",
            {"event": "x", "detail": {"secret": "s", "files": [pems["pkcs8"].decode(), "ok"]}},
        )
        assert event["detail"] == {"secret": REDACTED, "files": [REDACTED, "ok"]}

    def test_exception_text_in_json_output(
        self, pems: dict[str, bytes], capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("json")
        pem = pems["pkcs8"].decode()
        try:
            raise ValueError(f"unexpected {pem}")
        except ValueError:
            get_logger().exception("lineage.invalid", lineage="mx.example.test")
        out = capsys.readouterr().out
        assert "PRIVATE KEY" not in out
        assert pem.splitlines()[1] not in out
        (record,) = json_lines(out)
        assert "ValueError: unexpected [redacted]" in record["exception"]

    def test_console_output(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("console")
        get_logger().warning("dns.failed", tsig_secret="c2VjcmV0", reason=TSIG_FILE)
        err = capsys.readouterr().err
        assert "dns.failed" in err
        assert "c2VjcmV0" not in err


class TestJsonOutput:
    """`--log-format json`: one object per line on stdout."""

    def test_shape(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert configure_logging("json", "info") == "json"
        not_after = dt.datetime(2027, 2, 21, 12, 0, tzinfo=dt.UTC)
        get_logger().info(
            "chain.deployed", lineage="mx.example.test", serial="04AB", not_after=not_after
        )
        get_logger(lineage="b.example.test").warning("chain.held", tlsa=["2 1 1 aa", "3 1 1 bb"])
        captured = capsys.readouterr()
        assert captured.err == ""
        first, second = json_lines(captured.out)
        assert list(first)[:3] == ["timestamp", "level", "event"]
        assert first["event"] == "chain.deployed"
        assert first["level"] == "info"
        assert first["lineage"] == "mx.example.test"
        assert first["serial"] == "04AB"
        assert first["not_after"] == "2027-02-21T12:00:00+00:00"
        stamp = dt.datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
        assert abs(stamp - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
        assert second == {
            "lineage": "b.example.test",
            "tlsa": ["2 1 1 aa", "3 1 1 bb"],
            "event": "chain.held",
            "level": "warning",
            "timestamp": second["timestamp"],
        }

    def test_level_filter(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json", "warning")
        get_logger().info("lineage.changed", lineage="a")
        get_logger().debug("lineage.changed", lineage="a")
        get_logger().error("postfix.failed", reason="exit 1")
        assert [r["event"] for r in json_lines(capsys.readouterr().out)] == ["postfix.failed"]

    def test_debug_level(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json", "debug")
        get_logger().debug("lineage.changed", lineage="a")
        assert json_lines(capsys.readouterr().out)[0]["level"] == "debug"

    def test_unknown_level(self) -> None:
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging("json", "loud")

    def test_library_warnings_join_the_stream(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json")
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue %s", "overflowed")
        logging.getLogger("chatty").info("not shown")
        (record,) = json_lines(capsys.readouterr().out)
        assert record["event"] == "library.message"
        assert record["logger"] == "watchdog.observers.inotify_c"
        assert record["text"] == "Inotify queue overflowed"
        assert record["level"] == "warning"

    def test_reconfiguring_does_not_duplicate(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("json")
        configure_logging("json")
        logging.getLogger("x").warning("once")
        assert len(json_lines(capsys.readouterr().out)) == 1

    def test_journal_without_journald_falls_back_and_says_so(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        if os.path.exists(danesync_log.JOURNAL_SOCKET):
            pytest.skip("journald runs here")
        assert configure_logging("journal") == "json"
        (record,) = json_lines(capsys.readouterr().out)
        assert record["event"] == "log.journal_unavailable"
        assert record["level"] == "warning"


class TestCaptureLogs:
    """Callers can assert on events with structlog.testing.capture_logs."""

    def test_events_and_fields(self) -> None:
        configure_logging("json")
        with capture_logs() as logs:
            get_logger().info("tlsa.published", lineage="a", tlsa="2 1 1 ab")
        assert logs == [
            {"event": "tlsa.published", "lineage": "a", "tlsa": "2 1 1 ab", "log_level": "info"}
        ]


class TestMessage:
    """The readable sentence journald shows."""

    def test_known_event(self) -> None:
        message = build_message(
            {
                "event": "chain.held",
                "lineage": "mx.example.test",
                "reason": "2 1 1 ab not visible on 192.0.2.53",
                "serial": "04AB",
                "level": "warning",
                "timestamp": "t",
            }
        )
        assert message == (
            "mx.example.test: new chain held back until its TLSA records are visible and aged: "
            "2 1 1 ab not visible on 192.0.2.53 (serial=04AB)"
        )

    def test_unknown_event_and_extra_fields(self) -> None:
        assert (
            build_message({"event": "odd.thing", "b": 2, "a": [1, 2]}) == "odd.thing (a=1, 2, b=2)"
        )


class TestJournalFields:
    """Fields as journald stores them: `journalctl DANESYNC_EVENT=chain.held` finds them."""

    EVENT: dict[str, Any] = {  # noqa: RUF012
        "event": "chain.held",
        "lineage": "mx.example.test",
        "serial": "04AB",
        "not_after": dt.datetime(2027, 2, 21, tzinfo=dt.UTC),
        "tlsa": ["2 1 1 aa", "3 1 1 bb"],
        "reason": "not yet visible",
        "dns_server": "192.0.2.53:53",
        "level": "warning",
        "timestamp": "2026-11-23T12:00:00Z",
    }

    def test_fields(self) -> None:
        fields = build_journal_fields(self.EVENT)
        assert fields[0] == ("MESSAGE", build_message(self.EVENT))
        assert fields[1:] == [
            ("PRIORITY", "4"),
            ("SYSLOG_IDENTIFIER", "danesync"),
            ("DANESYNC_EVENT", "chain.held"),
            ("LINEAGE", "mx.example.test"),
            ("SERIAL", "04AB"),
            ("NOT_AFTER", "2027-02-21T00:00:00+00:00"),
            ("TLSA", "2 1 1 aa"),
            ("TLSA", "3 1 1 bb"),
            ("REASON", "not yet visible"),
            ("DNS_SERVER", "192.0.2.53:53"),
        ]

    @pytest.mark.parametrize(
        ("level", "priority"),
        [("critical", "2"), ("error", "3"), ("warning", "4"), ("info", "6"), ("debug", "7")],
    )
    def test_priority(self, level: str, priority: str) -> None:
        assert ("PRIORITY", priority) in build_journal_fields({"event": "x", "level": level})

    @pytest.mark.parametrize(
        ("key", "name"),
        [
            ("message", "DANESYNC_MESSAGE"),
            ("priority", "DANESYNC_PRIORITY"),
            ("_hidden", "HIDDEN"),
            ("2fa", "DANESYNC_2FA"),
            ("dns-server.port", "DNS_SERVER_PORT"),
            ("x" * 80, "X" * 64),
        ],
    )
    def test_names(self, key: str, name: str) -> None:
        assert journal_field_name(key) == name

    def test_none_is_left_out(self) -> None:
        names = [n for n, _ in build_journal_fields({"event": "x", "serial": None})]
        assert "SERIAL" not in names


class TestFormatChoice:
    """`auto`: journal when stderr is the journal stream, console on a TTY, else JSON."""

    def test_journal_stream_matches(self) -> None:
        assert build_format_choice("64769:1234", (64769, 1234), False, True) == "journal"

    def test_journal_stream_of_another_fd(self) -> None:
        # systemd sets JOURNAL_STREAM for stdout too; a redirected stderr is not the journal.
        assert build_format_choice("64769:1234", (64769, 999), False, True) == "json"

    def test_journal_unavailable(self) -> None:
        assert build_format_choice("64769:1234", (64769, 1234), False, False) == "json"

    def test_tty(self) -> None:
        assert build_format_choice(None, (1, 2), True, True) == "console"

    @pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "a:b"])
    def test_malformed(self, value: str) -> None:
        assert build_format_choice(value, (1, 2), False, True) == "json"

    def test_auto_in_a_pipe_is_json(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert configure_logging("auto") == ("console" if sys.stderr.isatty() else "json")


def _parse_native(datagram: bytes) -> list[tuple[str, str]]:
    """journald's native protocol: `KEY=value\\n` or `KEY\\n<le64 size>value\\n`."""
    fields = []
    rest = datagram
    while rest:
        newline = rest.index(b"\n")
        equals = rest.find(b"=", 0, newline)
        if equals >= 0:
            fields.append((rest[:equals].decode(), rest[equals + 1 : newline].decode()))
            rest = rest[newline + 1 :]
        else:
            name = rest[:newline].decode()
            (size,) = struct.unpack("<Q", rest[newline + 1 : newline + 9])
            value = rest[newline + 9 : newline + 9 + size]
            fields.append((name, value.decode()))
            rest = rest[newline + 9 + size + 1 :]
    return fields


@pytest.fixture
def journal_socket() -> Iterator[socket.socket]:
    require_root()
    path = Path(danesync_log.JOURNAL_SOCKET)
    if path.exists():
        pytest.skip(f"{path} exists: a journald (or another test) owns it")
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(str(path))
        except OSError as error:
            pytest.skip(f"cannot bind {path}: {error}")
        sock.settimeout(2)
        try:
            yield sock
        finally:
            path.unlink()
            if created:
                path.parent.rmdir()


class TestJournalOutput:
    """systemd-python's sendv delivers our fields to a socket where journald would listen."""

    def test_fields_arrive(self, journal_socket: socket.socket) -> None:
        pytest.importorskip("systemd.journal")
        assert configure_logging("journal") == "journal"
        get_logger().error(
            "chain.held",
            lineage="mx.example.test",
            tlsa=["2 1 1 aa", "3 1 1 bb"],
            reason="line one\nline two",
            privkey="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        fields = _parse_native(journal_socket.recv(65536))
        assert ("DANESYNC_EVENT", "chain.held") in fields
        assert ("LINEAGE", "mx.example.test") in fields
        assert ("PRIORITY", "3") in fields
        assert [v for n, v in fields if n == "TLSA"] == ["2 1 1 aa", "3 1 1 bb"]
        assert ("REASON", "line one\nline two") in fields
        assert ("PRIVKEY", REDACTED) in fields
        message = dict(fields)["MESSAGE"]
        assert message.startswith("mx.example.test: new chain held back")
        assert "AAAA" not in message
