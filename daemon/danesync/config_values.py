"""The values of the configuration file, each checked on its own: pure.

Each check takes what TOML gave and returns the value danesync uses, or
raises `Invalid` with a message that completes "key: ...". `config.py`
puts them together in its schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from danesync.tlsa import Usage, absolute_name


class DnsMode(Enum):
    RFC2136 = "rfc2136"
    CHECK = "check"
    OFF = "off"


@dataclass(frozen=True)
class Endpoint:
    """A host and port, from "host:port" or "[v6]:port"."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# Used with fullmatch: `$` would also accept a trailing newline.
_HOSTNAME = re.compile(
    r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?"
)
_LINEAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Invalid(ValueError):
    """A value failed its check; the message completes 'key: ...'."""


def check_string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {type_name(value)}")
    if not value:
        raise Invalid("must not be empty")
    return value


def check_path(value: Any) -> Path:
    text = check_string(value)
    if not text.startswith("/"):
        raise Invalid(f"must be an absolute path, not {text!r}")
    if "\0" in text:
        raise Invalid("must not contain a NUL character")
    return Path(text)


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, not {type_name(value)}")
    return value


def check_integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, not {type_name(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be between {low} and {high}, not {value}")
        return value

    return check


def check_seconds(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"must be a number of seconds, not {type_name(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be between {low:g} and {high:g} seconds, not {value}")
        return float(value)

    return check


def check_endpoint(default_port: int) -> Callable[[Any], Endpoint]:
    def check(value: Any) -> Endpoint:
        return parse_endpoint(check_string(value), default_port)

    return check


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """ "192.0.2.1", "192.0.2.1:53", "[2001:db8::1]:53", "ns.example.com:53"."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise Invalid(f"{text!r} has '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise Invalid(f"{text!r}: expected ':port' after ']'")
            port = _port_number(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port_number(port_text, text)
    if not host:
        raise Invalid(f"{text!r} has no host")
    return Endpoint(host, port)


def _port_number(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise Invalid(f"{whole!r}: port must be a number from 1 to 65535")
    return int(text)


def check_resolver(value: Any) -> str:
    text = check_string(value).strip()
    if text in ("system", "off"):
        return text
    endpoint = parse_endpoint(text, 53)
    return str(endpoint)


def check_choice(enum: type[DnsMode]) -> Callable[[Any], DnsMode]:
    def check(value: Any) -> DnsMode:
        text = check_string(value)
        try:
            return enum(text)
        except ValueError:
            options = ", ".join(f'"{m.value}"' for m in enum)
            raise Invalid(f"must be one of {options}, not {text!r}") from None

    return check


def check_domain(value: Any) -> str:
    text = check_string(value).lower()
    if not _HOSTNAME.fullmatch(text) or text.startswith("*"):
        raise Invalid(f"{text!r} is not a valid DNS name")
    return text.rstrip(".")


def check_list_of(
    item: Callable[[Any], Any], allow_empty: bool = False
) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid(f"must be a list, not {type_name(value)}")
        if not value and not allow_empty:
            raise Invalid("must not be empty")
        items = []
        for index, element in enumerate(value):
            try:
                items.append(item(element))
            except Invalid as error:
                raise Invalid(f"item {index + 1}: {error}") from None
        if len(set(items)) != len(items):
            raise Invalid("has duplicate entries")
        return tuple(items)

    return check


def check_hostname(value: Any) -> str:
    text = check_string(value).lower()
    if not _HOSTNAME.fullmatch(text):
        raise Invalid(f"{text!r} is not a valid host name")
    return text.rstrip(".")


def check_tlsa_name(value: Any) -> str:
    text = check_string(value).lower()
    if not re.match(r"_\d{1,5}\._(tcp|udp|sctp)\.", text) or not _HOSTNAME.fullmatch(
        text.split(".", 2)[2]
    ):
        raise Invalid(f"{text!r} is not a TLSA owner name like _25._tcp.mx.example.com")
    return absolute_name(text)


def check_usage(value: Any) -> Usage:
    text = " ".join(check_string(value).split())
    try:
        return Usage(text)
    except ValueError:
        raise Invalid(f'{text!r} is not supported; use "2 1 1" or "3 1 1"') from None


def is_lineage_name(text: str) -> bool:
    """A plain directory name under live/ that danesync supports (see `lineage_name_problem`)."""
    return bool(_LINEAGE.fullmatch(text)) and ".." not in text


def lineage_name_problem(text: str) -> str | None:
    """Why danesync cannot take `text` as a lineage name; None when it can.

    certbot accepts almost any directory name (spaces, commas, non-ASCII), but
    the name becomes the chain file `<deploy_dir>/<lineage>.pem`, listed in
    main.cf's smtpd_tls_chain_files and as a value in the SNI table: Postfix
    splits both lists on spaces and commas and has no quoting.
    """
    if is_lineage_name(text):
        return None
    if "/" in text or ".." in text or text in (".", ""):
        return f"{text!r} is not a lineage name (a directory under live/: no '/' or '..')"
    return (
        f"{text!r}: danesync supports lineage names of ASCII letters, digits, '.', '_' and"
        " '-' (starting with a letter or digit), because the name goes into main.cf's"
        " smtpd_tls_chain_files list and the SNI table as <deploy_dir>/<lineage>.pem, which"
        " Postfix splits on spaces and commas; certbot accepts it, so issue the certificate"
        " again under a supported name (certbot --cert-name NAME)"
    )


def check_lineage(value: Any) -> str:
    text = check_string(value)
    problem = lineage_name_problem(text)
    if problem is not None:
        raise Invalid(problem)
    return text


def type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)
