"""What `check` says about a Postfix's TLS settings: main.cf and master.cf.

Warnings about settings mail operators commonly get wrong, and the master.cf
services that serve certificates of their own (`-o smtpd_tls_cert_file=...`
on submission and smtps, as the common TLS guides set them up): danesync
does not manage those, so they keep serving the old certificate.

`build_*` functions are pure; `read_*` run `postconf`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from danesync.actions.postfix import (
    _LIST_SEPARATORS,
    LEGACY_CERTIFICATE_PARAMETERS,
    POSTCONF,
    _list_items,
    _run,
    read_parameters,
)

# --- TLS audit ------------------------------------------------------------------

# What `build_tls_audit` looks at; `read_tls_audit` reads exactly these.
TLS_AUDIT_PARAMETERS = (
    "inet_interfaces",
    "smtpd_use_tls",
    "smtpd_enforce_tls",
    "smtpd_tls_security_level",
    "smtpd_tls_mandatory_protocols",
    "smtpd_tls_chain_files",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file",
)
_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# RFC 8996 deprecates TLS 1.0 and 1.1; SSL is broken.
_WEAK_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")
_PROTOCOL_SEPARATORS = re.compile(r"[\s,:]+")


@dataclass(frozen=True)
class Service:
    """One master.cf service, as `postconf -M` prints it."""

    name: str  # "smtp", "127.0.0.1:2525", "[::1]:smtp"
    type: str  # "inet", "unix", ...
    command: str  # "smtpd", "postscreen", ...
    overrides: tuple[tuple[str, str], ...] = field(default=())  # its -o name=value

    def parameter(self, name: str) -> str | None:
        """The value this service's `-o` gives `name`, if any."""
        for key, value in self.overrides:
            if key == name:
                return value
        return None

    @property
    def host(self) -> str | None:
        host, _, port = self.name.rpartition(":")
        del port
        return host.strip("[]") or None

    @property
    def port(self) -> str:
        return self.name.rpartition(":")[2]


def build_services_from_output(output: str) -> tuple[Service, ...]:
    """Parse `postconf -M` output (one unfolded line per service)."""
    services = []
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 8 or fields[0].startswith("#"):
            continue
        name, kind, command, arguments = fields[0], fields[1], fields[7], fields[8:]
        services.append(Service(name, kind, command, _build_overrides(arguments)))
    return tuple(services)


def _build_overrides(arguments: list[str]) -> tuple[tuple[str, str], ...]:
    overrides: list[tuple[str, str]] = []
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if argument == "-o" and index < len(arguments):
            argument = arguments[index]
            index += 1
            if argument.startswith("{"):  # "-o { name = value with spaces }"
                words = [argument]
                while not words[-1].endswith("}") and index < len(arguments):
                    words.append(arguments[index])
                    index += 1
                argument = " ".join(words)[1:-1]
        elif argument.startswith("-o") and len(argument) > 2:
            argument = argument[2:]
        else:
            continue
        name, separator, value = argument.partition("=")
        if separator:
            overrides.append((name.strip(), value.strip()))
    return tuple(overrides)


def build_protocols_allowed(value: str) -> tuple[str, ...]:
    """The protocols a Postfix protocol list ("!SSLv3", ">=TLSv1.2", "TLSv1.2 TLSv1.3") allows."""
    known = {p.lower(): p for p in _PROTOCOLS}
    order = {p: i for i, p in enumerate(_PROTOCOLS)}
    allowed = set(_PROTOCOLS)
    items = [item for item in _PROTOCOL_SEPARATORS.split(value.strip()) if item]
    included = [known[i.lower()] for i in items if i.lower() in known]
    if included:
        allowed = set(included)
    for item in items:
        lowered = item.lower()
        if lowered.startswith("!") and lowered[1:] in known:
            allowed.discard(known[lowered[1:]])
        elif lowered.startswith(">=") and lowered[2:] in known:
            floor = order[known[lowered[2:]]]
            allowed = {p for p in allowed if order[p] >= floor}
        elif lowered.startswith("<=") and lowered[2:] in known:
            ceiling = order[known[lowered[2:]]]
            allowed = {p for p in allowed if order[p] <= ceiling}
    return tuple(sorted(allowed, key=order.__getitem__))


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "loopback-only"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_tls_audit(
    params: Mapping[str, str], services: Sequence[Service] | None = None
) -> list[str]:
    """Warnings about TLS settings mail operators commonly get wrong; [] when fine.

    `params` are main.cf values (`TLS_AUDIT_PARAMETERS`, as `read_parameters`
    gives them), `services` the master.cf entries; None means unknown, and
    main.cf's settings are then taken to apply to a port-25 smtpd.
    """
    warnings: list[str] = []

    def value(name: str) -> str:
        return params.get(name, "").strip()

    if value("smtpd_use_tls").lower() == "yes":
        warnings.append(
            "smtpd_use_tls is deprecated: remove it and set smtpd_tls_security_level = may"
        )
    if value("smtpd_enforce_tls").lower() == "yes":
        warnings.append(
            "smtpd_enforce_tls is deprecated: remove it and set smtpd_tls_security_level"
            " (may on port 25, encrypt only on submission)"
        )

    main_level = value("smtpd_tls_security_level")
    if not main_level:  # Postfix falls back to the deprecated parameters
        if value("smtpd_enforce_tls").lower() == "yes":
            main_level = "encrypt"
        elif value("smtpd_use_tls").lower() == "yes":
            main_level = "may"
        else:
            main_level = "none"
    interfaces = [i for i in _LIST_SEPARATORS.split(value("inet_interfaces") or "all") if i]
    local_only = all(_is_loopback(i) for i in interfaces)
    if services is None:
        port25 = [Service("smtp", "inet", "smtpd")]
    else:
        port25 = [
            s
            for s in services
            if s.type == "inet"
            and s.port in ("25", "smtp")
            and s.command in ("smtpd", "postscreen")
        ]
    for service in port25:
        level = service.parameter("smtpd_tls_security_level")
        if service.command == "postscreen":
            level = service.parameter("postscreen_tls_security_level") or level
        level = (level or main_level).lower()
        public = not (_is_loopback(service.host) if service.host else local_only)
        if level == "encrypt" and public:
            warnings.append(
                f"smtpd_tls_security_level = encrypt on the public port-25 service"
                f" {service.name!r}: RFC 3207 forbids a publicly-referenced SMTP server"
                " to require STARTTLS (mail from servers without TLS is refused); use may"
            )
        elif level in ("none", ""):
            warnings.append(
                f"the port-25 service {service.name!r} does not offer STARTTLS"
                " (smtpd_tls_security_level is none or empty): DANE needs it; use may"
            )

    # The mandatory protocols apply only where TLS is required (level encrypt,
    # or smtps's wrapper mode): not on port 25 at `may`, a stock Debian host,
    # whose Postfix default (>=TLSv1) is no one's mistake there.
    if services is None:
        mandating = [Service("smtp", "inet", "smtpd")] if main_level == "encrypt" else []
    else:
        mandating = [
            s
            for s in services
            if s.command == "smtpd"
            and (
                (s.parameter("smtpd_tls_security_level") or main_level).lower() == "encrypt"
                or (s.parameter("smtpd_tls_wrappermode") or "").lower() == "yes"
            )
        ]
    reported: set[str] = set()
    for service in mandating:
        mandatory = service.parameter("smtpd_tls_mandatory_protocols")
        if mandatory is None:
            mandatory = value("smtpd_tls_mandatory_protocols")
        weak = [p for p in build_protocols_allowed(mandatory) if p in _WEAK_PROTOCOLS]
        if weak and mandatory not in reported:
            reported.add(mandatory)
            warnings.append(
                f"smtpd_tls_mandatory_protocols = {mandatory or '(empty)'} allows"
                f" {', '.join(weak)} on {service.name!r}, which requires TLS: use >=TLSv1.2"
            )

    if value("smtpd_tls_chain_files"):
        legacy = [name for name in LEGACY_CERTIFICATE_PARAMETERS if value(name)]
        if legacy:
            warnings.append(
                f"{', '.join(legacy)} {'is' if len(legacy) == 1 else 'are'} set but Postfix"
                " ignores them because smtpd_tls_chain_files is set: remove them"
            )
    return warnings


def read_services(config_dir: Path) -> tuple[Service, ...]:
    """The master.cf services, from one `postconf -M` call."""
    return build_services_from_output(_run([POSTCONF, "-c", str(config_dir), "-M"]))


def read_tls_audit_parameters(config_dir: Path) -> dict[str, str]:
    """The main.cf values `build_tls_audit` needs, expanded, in one `postconf` call."""
    return read_parameters(config_dir, TLS_AUDIT_PARAMETERS, expand=True)


def read_tls_audit(
    config_dir: Path, deploy_dir: Path | None = None, *, chain_files_in_main: bool | None = None
) -> list[str]:
    """`build_tls_audit` on this Postfix, every chain file that cannot be read, and
    `build_service_tls_notices` (`chain_files_in_main` None: as main.cf is now)."""
    params = read_tls_audit_parameters(config_dir)
    warnings = build_tls_audit(params, read_services(config_dir))
    warnings += read_service_tls_notices(
        config_dir,
        deploy_dir,
        chain_files_in_main=chain_files_in_main
        if chain_files_in_main is not None
        else bool(params.get("smtpd_tls_chain_files", "").strip()),
    )
    for item in _list_items(params.get("smtpd_tls_chain_files", "")):
        try:
            with open(item, "rb") as chain_file:
                chain_file.read(1)
        except OSError as error:
            warnings.append(f"smtpd_tls_chain_files: {item}: cannot be read: {error.strerror}")
    return warnings


# --- master.cf services with certificates of their own ---------------------------

# What a master.cf service can set to serve a certificate main.cf does not name.
SERVICE_CERTIFICATE_PARAMETERS = (
    "smtpd_tls_chain_files",
    *LEGACY_CERTIFICATE_PARAMETERS,
    "tls_server_sni_maps",
)


@dataclass(frozen=True)
class ServiceOverride:
    """One `-o name=value` of a master.cf service, as `postconf -P` prints it."""

    service: str  # "submission", "127.0.0.1:465"
    type: str  # "inet"
    name: str
    value: str

    @property
    def where(self) -> str:
        return f"{self.service}/{self.type}"


def build_service_overrides_from_output(output: str) -> tuple[ServiceOverride, ...]:
    """Parse `postconf -P` output: "service/type/name = value" lines."""
    overrides = []
    for line in output.splitlines():
        key, separator, value = line.partition(" =")
        parts = key.rsplit("/", 2)
        if not separator or len(parts) != 3:
            continue
        overrides.append(ServiceOverride(parts[0], parts[1], parts[2], value.strip()))
    return tuple(overrides)


def build_service_tls_notices(
    overrides: Sequence[ServiceOverride],
    deploy_dir: Path | None = None,
    *,
    chain_files_in_main: bool = True,
) -> list[str]:
    """One line per master.cf service whose certificate settings danesync does not manage.

    The common TLS guides give submission and smtps a certificate of their
    own (`-o smtpd_tls_cert_file=...`). Postfix ignores those legacy
    parameters wherever smtpd_tls_chain_files is non-empty (measured: the
    service then serves main.cf's chains and warns at every smtpd start), so
    with `chain_files_in_main` (danesync sets it in main.cf) they are only
    noise; a service's own `-o smtpd_tls_chain_files` (or
    tls_server_sni_maps) that does not list danesync's files in `deploy_dir`
    keeps serving those files whatever danesync deploys. An empty value
    overrides nothing.
    """
    by_service: dict[str, list[ServiceOverride]] = {}
    for override in overrides:
        if override.name in SERVICE_CERTIFICATE_PARAMETERS and override.value:
            by_service.setdefault(override.where, []).append(override)
    notices = []
    for where, items in by_service.items():
        own = [o for o in items if o.name not in LEGACY_CERTIFICATE_PARAMETERS]
        own = [o for o in own if not _is_managed(o, deploy_dir)]
        legacy = [o for o in items if o.name in LEGACY_CERTIFICATE_PARAMETERS]
        chain_files_set = chain_files_in_main or any(
            o.name == "smtpd_tls_chain_files" for o in items
        )
        if not chain_files_set:
            own += legacy
        elif legacy:
            notices.append(
                f"master.cf service {where} sets {_settings(legacy)}: Postfix ignores them"
                " because smtpd_tls_chain_files is set (the service serves those chains"
                " and warns at every smtpd start); remove these overrides"
            )
        if own:
            notices.append(
                f"master.cf service {where} serves a certificate of its own ({_settings(own)}):"
                " danesync does not update it, so it keeps serving those files; remove the"
                " override to serve main.cf's smtpd_tls_chain_files, and list its TLSA name"
                " (e.g. _587._tcp or _465._tcp) in the certificate's tlsa"
            )
    return notices


def _settings(overrides: Sequence[ServiceOverride]) -> str:
    return ", ".join(f"-o {o.name}={o.value}" for o in overrides)


def _is_managed(override: ServiceOverride, deploy_dir: Path | None) -> bool:
    items = _list_items(override.value)
    if override.name == "smtpd_tls_chain_files":
        if items in (["$smtpd_tls_chain_files"], ["${smtpd_tls_chain_files}"]):
            return True
        return deploy_dir is not None and all(Path(item).parent == deploy_dir for item in items)
    if override.name == "tls_server_sni_maps":
        return items in (["$tls_server_sni_maps"], ["${tls_server_sni_maps}"])
    return False


def read_service_overrides(config_dir: Path) -> tuple[ServiceOverride, ...]:
    """Every master.cf `-o` override, from one `postconf -P` call."""
    return build_service_overrides_from_output(_run([POSTCONF, "-c", str(config_dir), "-P"]))


def read_service_tls_notices(
    config_dir: Path, deploy_dir: Path | None = None, *, chain_files_in_main: bool | None = None
) -> list[str]:
    """`build_service_tls_notices` for this Postfix: for `check` and the daemon's start.

    `chain_files_in_main` None: whether main.cf sets smtpd_tls_chain_files now.
    """
    if chain_files_in_main is None:
        values = read_parameters(config_dir, ["smtpd_tls_chain_files"])
        chain_files_in_main = bool(values.get("smtpd_tls_chain_files", "").strip())
    return build_service_tls_notices(
        read_service_overrides(config_dir), deploy_dir, chain_files_in_main=chain_files_in_main
    )
