"""The configuration file: TOML in, frozen values out.

Every problem in the file is collected and reported at once, each naming the
key. The schema below is the single description of the keys: it drives
validation and the defaults, and the sample `config/danesync.toml` is tested
against it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from danesync.errors import ConfigError
from danesync.families import (
    AUTO,
    Families,
    merge_families,
    read_families,
    read_shipped_families,
)
from danesync.tlsa import Usage, absolute_name

DEFAULT_PATH = Path("/etc/danesync/danesync.toml")


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


@dataclass(frozen=True)
class CertbotConfig:
    config_dir: Path = Path("/etc/letsencrypt")

    @property
    def live_dir(self) -> Path:
        return self.config_dir / "live"


@dataclass(frozen=True)
class PostfixConfig:
    config_dir: Path = Path("/etc/postfix")
    deploy_dir: Path = Path("/etc/postfix/danesync")
    reload: bool = True
    probe: Endpoint | None = None


@dataclass(frozen=True)
class DnsConfig:
    mode: DnsMode = DnsMode.CHECK
    server: Endpoint | None = None
    zone: str | None = None
    tsig_key_file: Path | None = None
    ttl: int = 3600
    rollover_wait: int = 7200
    verify_servers: tuple[Endpoint, ...] = ()


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("/var/lib/danesync")


@dataclass(frozen=True)
class DaemonConfig:
    reconcile_interval: float = 3600.0
    settle: float = 0.25


@dataclass(frozen=True)
class MonitorConfig:
    """Watching danesync: the Prometheus textfile and the DANE self-check."""

    textfile: Path | None = None  # written atomically after each pass and self-check
    check_interval: float = 300.0  # seconds between DANE self-checks (the light check)
    # Where the self-check also asks, trusting only answers with the AD bit:
    # "system" (/etc/resolv.conf), "off", or a validating resolver's "host:port".
    resolver: str = "system"


@dataclass(frozen=True)
class CertificateConfig:
    lineage: str
    hostnames: tuple[str, ...]
    tlsa: tuple[str, ...]
    usages: tuple[Usage, ...] = (Usage.DANE_TA,)
    sni: bool = False
    # Whether `hostnames` was written: an SNI certificate then serves only those
    # names, otherwise every DNS name of its leaf (`sni.build_served_names`).
    hostnames_set: bool = False
    # A family name, "auto" or None: pre-publish 2 1 1 for the issuer's family.
    issuers: str | None = None

    @classmethod
    def default_for(cls, lineage: str) -> CertificateConfig:
        """What an unconfigured lineage would get: used by `check NAME`."""
        return cls(lineage, (lineage,), (absolute_name(f"_25._tcp.{lineage}"),))


@dataclass(frozen=True)
class Config:
    path: Path
    certbot: CertbotConfig = field(default_factory=CertbotConfig)
    postfix: PostfixConfig = field(default_factory=PostfixConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    certificates: tuple[CertificateConfig, ...] = ()
    # The issuer families: the package's, extended by [families] file.
    families: Families = field(default_factory=read_shipped_families)
    families_file: Path | None = None
    # lineage -> its certificate, built once: a pass at 10,000 lineages asks
    # tens of thousands of times (a linear search was seconds of every pass).
    _by_lineage: dict[str, CertificateConfig] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        index: dict[str, CertificateConfig] = {}
        for cert in self.certificates:
            index.setdefault(cert.lineage, cert)  # the first wins, as the search did
        object.__setattr__(self, "_by_lineage", index)

    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def certificate(self, lineage: str) -> CertificateConfig | None:
        return self._by_lineage.get(lineage)


# --- the schema ------------------------------------------------------------

# Used with fullmatch: `$` would also accept a trailing newline.
_HOSTNAME = re.compile(
    r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.?"
)
_LINEAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Invalid(ValueError):
    """A value failed its check; the message completes 'key: ...'."""


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_type_name(value)}")
    if not value:
        raise _Invalid("must not be empty")
    return value


def _path(value: Any) -> Path:
    text = _string(value)
    if not text.startswith("/"):
        raise _Invalid(f"must be an absolute path, not {text!r}")
    if "\0" in text:
        raise _Invalid("must not contain a NUL character")
    return Path(text)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {_type_name(value)}")
    return value


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, not {_type_name(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, not {value}")
        return value

    return check


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"must be a number of seconds, not {_type_name(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low:g} and {high:g} seconds, not {value}")
        return float(value)

    return check


def _endpoint(default_port: int) -> Callable[[Any], Endpoint]:
    def check(value: Any) -> Endpoint:
        return parse_endpoint(_string(value), default_port)

    return check


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """ "192.0.2.1", "192.0.2.1:53", "[2001:db8::1]:53", "ns.example.com:53"."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Invalid(f"{text!r} has '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _Invalid(f"{text!r}: expected ':port' after ']'")
            port = _port_number(rest[1:], text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port_number(port_text, text)
    if not host:
        raise _Invalid(f"{text!r} has no host")
    return Endpoint(host, port)


def _port_number(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise _Invalid(f"{whole!r}: port must be a number from 1 to 65535")
    return int(text)


def _resolver(value: Any) -> str:
    text = _string(value).strip()
    if text in ("system", "off"):
        return text
    endpoint = parse_endpoint(text, 53)
    return str(endpoint)


def _choice(enum: type[DnsMode]) -> Callable[[Any], DnsMode]:
    def check(value: Any) -> DnsMode:
        text = _string(value)
        try:
            return enum(text)
        except ValueError:
            options = ", ".join(f'"{m.value}"' for m in enum)
            raise _Invalid(f"must be one of {options}, not {text!r}") from None

    return check


def _domain(value: Any) -> str:
    text = _string(value).lower()
    if not _HOSTNAME.fullmatch(text) or text.startswith("*"):
        raise _Invalid(f"{text!r} is not a valid DNS name")
    return text.rstrip(".")


def _list_of(
    item: Callable[[Any], Any], allow_empty: bool = False
) -> Callable[[Any], tuple[Any, ...]]:
    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"must be a list, not {_type_name(value)}")
        if not value and not allow_empty:
            raise _Invalid("must not be empty")
        items = []
        for index, element in enumerate(value):
            try:
                items.append(item(element))
            except _Invalid as error:
                raise _Invalid(f"item {index + 1}: {error}") from None
        if len(set(items)) != len(items):
            raise _Invalid("has duplicate entries")
        return tuple(items)

    return check


def _hostname(value: Any) -> str:
    text = _string(value).lower()
    if not _HOSTNAME.fullmatch(text):
        raise _Invalid(f"{text!r} is not a valid host name")
    return text.rstrip(".")


def _tlsa_name(value: Any) -> str:
    text = _string(value).lower()
    if not re.match(r"_\d{1,5}\._(tcp|udp|sctp)\.", text) or not _HOSTNAME.fullmatch(
        text.split(".", 2)[2]
    ):
        raise _Invalid(f"{text!r} is not a TLSA owner name like _25._tcp.mx.example.com")
    return absolute_name(text)


def _usage(value: Any) -> Usage:
    text = " ".join(_string(value).split())
    try:
        return Usage(text)
    except ValueError:
        raise _Invalid(f'{text!r} is not supported; use "2 1 1" or "3 1 1"') from None


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


def _lineage(value: Any) -> str:
    text = _string(value)
    problem = lineage_name_problem(text)
    if problem is not None:
        raise _Invalid(problem)
    return text


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# section -> key -> (check, default). A default of None means "optional, no value".
_Schema = Mapping[str, Mapping[str, tuple[Callable[[Any], Any], Any]]]
SCHEMA: _Schema = {
    "certbot": {"config_dir": (_path, CertbotConfig.config_dir)},
    "postfix": {
        "config_dir": (_path, PostfixConfig.config_dir),
        "deploy_dir": (_path, PostfixConfig.deploy_dir),
        "reload": (_bool, True),
        "probe": (_endpoint(25), None),
    },
    "dns": {
        "mode": (_choice(DnsMode), DnsMode.CHECK),
        "server": (_string, None),
        "port": (_integer(1, 65535), 53),
        "zone": (_domain, None),
        "tsig_key_file": (_path, None),
        "ttl": (_integer(1, 86400 * 7), 3600),
        "rollover_wait": (_integer(0, 86400 * 30), None),
        "verify_servers": (_list_of(_endpoint(53)), ()),
    },
    "state": {"dir": (_path, StateConfig.dir)},
    "daemon": {
        "reconcile_interval": (_seconds(1, 86400), 3600.0),
        "settle": (_seconds(0, 60), 0.25),
    },
    "families": {"file": (_path, None)},
    "monitor": {
        "textfile": (_path, None),
        "check_interval": (_seconds(1, 86400), 300.0),
        "resolver": (_resolver, "system"),
    },
}
CERTIFICATE_SCHEMA: Mapping[str, tuple[Callable[[Any], Any], Any]] = {
    "lineage": (_lineage, None),
    "hostnames": (_list_of(_hostname), None),
    "tlsa": (_list_of(_tlsa_name), None),
    "usages": (_list_of(_usage), ("2 1 1",)),
    "sni": (_bool, False),
    "issuers": (_string, None),
}


def _check_table(
    prefix: str,
    table: Mapping[str, Any],
    schema: Mapping[str, tuple[Callable[[Any], Any], Any]],
    problems: list[str],
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in table:
        if key not in schema:
            problems.append(f"{prefix}{key}: unknown key")
    for key, (check, _default) in schema.items():
        if key in table:
            try:
                values[key] = check(table[key])
            except _Invalid as error:
                problems.append(f"{prefix}{key}: {error}")
    return values


def build_config(
    document: Mapping[str, Any], path: Path, families: Families | None = None
) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem.

    `families` are the issuer families `issuers` may name (default: the
    package's own; `load_config` adds the operator's `[families] file`).
    """
    problems: list[str] = []
    if families is None:
        families = read_shipped_families()
    for section in document:
        if section not in SCHEMA and section != "certificate":
            problems.append(f"[{section}]: unknown section")
    sections: dict[str, dict[str, Any]] = {}
    given: dict[str, Mapping[str, Any]] = {}  # the raw tables: which keys were written
    for section, schema in SCHEMA.items():
        table = document.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"{section}: must be a table ([{section}])")
            table = {}
        given[section] = table
        sections[section] = _check_table(f"{section}.", table, schema, problems)

    certificates = _build_certificates(document.get("certificate", []), problems)
    _check_issuers(document.get("certificate", []), certificates, families, problems)

    dns_values = sections["dns"]
    mode: DnsMode = dns_values.get("mode", DnsMode.CHECK)
    ttl: int = dns_values.get("ttl", 3600)
    port: int = dns_values.get("port", 53)
    server: Endpoint | None = None
    if "server" in dns_values:
        try:
            server = parse_endpoint(dns_values["server"], port)
        except _Invalid as error:
            problems.append(f"dns.server: {error}")
    zone: str | None = dns_values.get("zone")
    if mode is DnsMode.RFC2136:
        for key in ("server", "zone", "tsig_key_file"):
            if key not in given["dns"]:  # a key written but invalid is reported already
                problems.append(f'dns.{key}: required when dns.mode is "rfc2136"')
    if (
        mode is DnsMode.CHECK
        and certificates
        and not any(key in given["dns"] for key in ("server", "verify_servers"))
    ):
        problems.append(
            'dns.server: required when dns.mode is "check" and dns.verify_servers is not set: '
            "danesync must know which authoritative servers to ask for the TLSA records"
        )
    deploy_dir = sections["postfix"].get("deploy_dir")
    if deploy_dir is not None and re.search(r"[\s,]", str(deploy_dir)):
        problems.append(
            f"postfix.deploy_dir: {str(deploy_dir)!r} contains whitespace or a comma, which "
            "Postfix cannot take in smtpd_tls_chain_files (its lists have no quoting)"
        )
    if zone is not None and mode is DnsMode.RFC2136:
        for cert in certificates:
            for name in cert.tlsa:
                if not _in_zone(name, zone):
                    problems.append(
                        f"certificate {cert.lineage!r}: tlsa: {name} is not in dns.zone {zone}"
                    )

    if problems:
        raise ConfigError(str(path), problems)

    return Config(
        path=path,
        certbot=CertbotConfig(**sections["certbot"]),
        postfix=PostfixConfig(**sections["postfix"]),
        dns=DnsConfig(
            mode=mode,
            server=server,
            zone=zone,
            tsig_key_file=dns_values.get("tsig_key_file"),
            ttl=ttl,
            rollover_wait=dns_values.get("rollover_wait", 2 * ttl),
            verify_servers=dns_values.get("verify_servers", ()),
        ),
        state=StateConfig(**sections["state"]),
        daemon=DaemonConfig(**sections["daemon"]),
        certificates=tuple(certificates),
        families=families,
        families_file=sections["families"].get("file"),
        monitor=MonitorConfig(**sections["monitor"]),
    )


def _in_zone(name: str, zone: str) -> bool:
    name, zone = name.rstrip("."), zone.rstrip(".")
    return name == zone or name.endswith("." + zone)


def _build_certificates(raw: Any, problems: list[str]) -> list[CertificateConfig]:
    if not isinstance(raw, list):
        problems.append("certificate: must be an array of tables ([[certificate]])")
        return []
    certificates: list[CertificateConfig] = []
    seen: set[str] = set()
    for index, table in enumerate(raw):
        prefix = f"certificate[{index + 1}]."
        if not isinstance(table, dict):
            problems.append(f"certificate[{index + 1}]: must be a table")
            continue
        before = len(problems)
        values = _check_table(prefix, table, CERTIFICATE_SCHEMA, problems)
        if "lineage" not in table:
            problems.append(f"{prefix}lineage: required")
        if len(problems) > before:
            continue
        lineage: str = values["lineage"]
        if lineage in seen:
            problems.append(f"{prefix}lineage: {lineage!r} is configured twice")
            continue
        seen.add(lineage)
        hostnames: tuple[str, ...] = values.get("hostnames", (lineage.lower(),))
        try:
            _hostname(hostnames[0])
        except _Invalid as error:
            problems.append(f"{prefix}hostnames: default from lineage: {error}")
            continue
        tlsa: tuple[str, ...] = values.get(
            "tlsa", (absolute_name(f"_25._tcp.{hostnames[0].lstrip('*.')}"),)
        )
        usages: tuple[Usage, ...] = values.get("usages", (Usage.DANE_TA,))
        certificates.append(
            CertificateConfig(
                lineage,
                hostnames,
                tlsa,
                usages,
                values.get("sni", False),
                hostnames_set="hostnames" in values,
                issuers=values.get("issuers"),
            )
        )
    return certificates


def _check_issuers(
    raw: Any, certificates: list[CertificateConfig], families: Families, problems: list[str]
) -> None:
    """`issuers` names a known family (or "auto") and goes with "2 1 1"."""
    if not isinstance(raw, list):
        return
    index_of = {
        table["lineage"]: index
        for index, table in enumerate(raw)
        if isinstance(table, dict) and isinstance(table.get("lineage"), str)
    }
    known = ", ".join(f'"{name}"' for name in sorted(families)) or "none"
    for certificate in certificates:
        if certificate.issuers is None:
            continue
        prefix = f"certificate[{index_of.get(certificate.lineage, 0) + 1}].issuers"
        if certificate.issuers != AUTO and certificate.issuers not in families:
            problems.append(
                f"{prefix}: unknown issuer family {certificate.issuers!r}; "
                f'use "{AUTO}" or one of {known} (or define it in [families] file)'
            )
        if Usage.DANE_TA not in certificate.usages:
            problems.append(
                f'{prefix}: pre-publishes "2 1 1" records, but usages of '
                f'{certificate.lineage!r} has no "2 1 1"'
            )


def config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    if cli_value:
        return Path(cli_value)
    if environ.get("DANESYNC_CONFIG"):
        return Path(environ["DANESYNC_CONFIG"])
    return DEFAULT_PATH


def load_config(path: Path) -> Config:
    """Read and validate the file; ConfigError names the file and each key."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read: {error.strerror}"]) from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), [f"not valid TOML: {error}"]) from None
    return build_config(document, path, _read_operator_families(document))


def _read_operator_families(document: Mapping[str, Any]) -> Families | None:
    """The package's families plus [families] file's; None if no file is named.

    A file that cannot be read or is invalid raises ConfigError naming it.
    An invalid `file` value is left for build_config to report.
    """
    table = document.get("families")
    value = table.get("file") if isinstance(table, dict) else None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        return None
    return merge_families(read_shipped_families(), read_families(Path(value)))
