"""The configuration file: TOML in, frozen values out.

Every problem in the file is collected and reported at once, each naming the
key. The schema below is the single description of the keys: it drives
validation and the defaults, and the sample `config/danesync.toml` is tested
against it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danesync import config_values as checks

# Re-exported: the rest of danesync imports these from here.
from danesync.config_values import DnsMode as DnsMode  # noqa: PLC0414
from danesync.config_values import Endpoint as Endpoint  # noqa: PLC0414
from danesync.config_values import is_lineage_name as is_lineage_name  # noqa: PLC0414
from danesync.config_values import lineage_name_problem as lineage_name_problem  # noqa: PLC0414
from danesync.config_values import parse_endpoint as parse_endpoint  # noqa: PLC0414
from danesync.errors import ConfigError
from danesync.families import (
    AUTO,
    Families,
    merge_families,
    read_families,
    read_shipped_families,
)
from danesync.tlsa import Usage, absolute_name
from danesync.tomlfile import read_toml_file

DEFAULT_PATH = Path("/etc/danesync/danesync.toml")


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


@dataclass(frozen=True, slots=True)
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

# section -> key -> (check, default). A default of None means "optional, no value".
_Schema = Mapping[str, Mapping[str, tuple[Callable[[Any], Any], Any]]]
SCHEMA: _Schema = {
    "certbot": {"config_dir": (checks.check_path, CertbotConfig.config_dir)},
    "postfix": {
        "config_dir": (checks.check_path, PostfixConfig.config_dir),
        "deploy_dir": (checks.check_path, PostfixConfig.deploy_dir),
        "reload": (checks.check_bool, True),
        "probe": (checks.check_endpoint(25), None),
    },
    "dns": {
        "mode": (checks.check_choice(DnsMode), DnsMode.CHECK),
        "server": (checks.check_string, None),
        "port": (checks.check_integer(1, 65535), 53),
        "zone": (checks.check_domain, None),
        "tsig_key_file": (checks.check_path, None),
        "ttl": (checks.check_integer(1, 86400 * 7), 3600),
        "rollover_wait": (checks.check_integer(0, 86400 * 30), None),
        "verify_servers": (checks.check_list_of(checks.check_endpoint(53)), ()),
    },
    "state": {"dir": (checks.check_path, StateConfig.dir)},
    "daemon": {
        "reconcile_interval": (checks.check_seconds(1, 86400), 3600.0),
        "settle": (checks.check_seconds(0, 60), 0.25),
    },
    "families": {"file": (checks.check_path, None)},
    "monitor": {
        "textfile": (checks.check_path, None),
        "check_interval": (checks.check_seconds(1, 86400), 300.0),
        "resolver": (checks.check_resolver, "system"),
    },
}
CERTIFICATE_SCHEMA: Mapping[str, tuple[Callable[[Any], Any], Any]] = {
    "lineage": (checks.check_lineage, None),
    "hostnames": (checks.check_list_of(checks.check_hostname), None),
    "tlsa": (checks.check_list_of(checks.check_tlsa_name), None),
    "usages": (checks.check_list_of(checks.check_usage), ("2 1 1",)),
    "sni": (checks.check_bool, False),
    "issuers": (checks.check_string, None),
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
            except checks.Invalid as error:
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
        except checks.Invalid as error:
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


_DEFAULT_USAGES = (Usage.DANE_TA,)  # one tuple for every certificate that does not say


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
        # Interned: the state, the read cache and the leaves' names hold the
        # same strings, one object each instead of four (10,000 lineages: MiBs).
        lineage: str = sys.intern(values["lineage"])
        if lineage in seen:
            problems.append(f"{prefix}lineage: {lineage!r} is configured twice")
            continue
        seen.add(lineage)
        hostnames: tuple[str, ...] = values.get("hostnames", (sys.intern(lineage.lower()),))
        try:
            checks.check_hostname(hostnames[0])
        except checks.Invalid as error:
            problems.append(f"{prefix}hostnames: default from lineage: {error}")
            continue
        if "tlsa" in values:  # interned as the state's records' names
            tlsa: tuple[str, ...] = tuple(sys.intern(name) for name in values["tlsa"])
        else:
            tlsa = (sys.intern(absolute_name(f"_25._tcp.{hostnames[0].lstrip('*.')}")),)
        usages: tuple[Usage, ...] = values.get("usages", _DEFAULT_USAGES)
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
    document = read_toml_file(path)
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
