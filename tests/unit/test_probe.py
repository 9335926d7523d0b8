"""Parsing the probe's "host:port"; the probe itself is tested against Postfix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from danesync.actions.probe import format_host_port
from danesync.config import parse_endpoint


def parse_host_port(text: str, default_port: int = 25) -> tuple[str, int]:
    """The config's one host:port parser, as the probe's `probe` key uses it."""
    endpoint = parse_endpoint(text, default_port)
    return endpoint.host, endpoint.port


class TestParseHostPort:
    """parse_host_port accepts what the config file's `probe` key holds."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("127.0.0.1:25", ("127.0.0.1", 25)),
            ("127.0.0.1", ("127.0.0.1", 25)),
            ("mx.example.com:2525", ("mx.example.com", 2525)),
            ("[::1]:25", ("::1", 25)),
            ("[2001:db8::1]", ("2001:db8::1", 25)),
            ("2001:db8::1", ("2001:db8::1", 25)),
            (" localhost:587 ", ("localhost", 587)),
        ],
    )
    def test_valid(self, text: str, expected: tuple[str, int]) -> None:
        assert parse_host_port(text) == expected

    def test_default_port(self) -> None:
        assert parse_host_port("mx", default_port=2526) == ("mx", 2526)

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("[::1", "without"),
            ("[::1]25", "expected ':port'"),
            (":25", "no host"),
            ("", "no host"),
            ("mx:0", "port must be"),
            ("mx:65536", "port must be"),
            ("mx:smtp", "port must be"),
            ("[::1]:x", "port must be"),
        ],
    )
    def test_invalid(self, text: str, reason: str) -> None:
        with pytest.raises(ValueError, match=reason):
            parse_host_port(text)

    @given(
        st.one_of(
            st.ip_addresses().map(str),
            st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
        ),
        st.integers(1, 65535),
    )
    def test_format_then_parse_round_trips(self, host: str, port: int) -> None:
        assert parse_host_port(format_host_port(host, port)) == (host, port)
