"""Postfix configuration: read and set main.cf parameters, the SNI table, reload.

Every Postfix program that reads a main.cf changed less than about two
seconds ago (mtime in whole seconds) waits for it to "cool down", re-reading
it every 0.3 s. Measured on Debian 12's Postfix 3.7.11: `postconf -h` takes
10 ms on a settled main.cf, and 1.51 s / 1.21 s / 0.91 s / 0.6 s when called
0 / 0.9 / 1.1 / 1.9 s after a change; `postfix reload` right after
`postconf -e` takes 1.8-2.4 s (40 ms otherwise). `postfix -c DIR` also reads
/etc/postfix/main.cf, so a change there delays it too. So a pass makes all
its edits in one `postconf -e` and then one reload, whatever the number of
certificates, builds the SNI table before it touches main.cf, and skips
`postconf -e` when nothing changes (a renewal keeps the same file name, so
it changes no parameter and its reload takes 40 ms). Measured pass with 1
SNI certificate: 2.2 s; with 1,000: 3.1 s (0.9 s writing 1,000 chain files
with fsync, 40 ms for `postmap -F`, 2.1 s for the reload).

After the reload returns, the master re-reads its configuration; new
connections got the new chain within 20 ms in every measurement, but a
session already running keeps the old one, hence `probe.wait_for_leaf`.

`build_*` functions are pure; the others run Postfix commands and raise
`PostfixError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from danesync.actions.execute import run_command, run_command_full
from danesync.actions.files import ensure_deploy_dir, sync_directory, write_atomic
from danesync.errors import CommandError, PostfixError
from danesync.sni import build_sni_key

POSTCONF = "postconf"
POSTFIX = "postfix"
POSTMAP = "postmap"

# Debian 12's default_database_type; lmdb is a separate package (postfix-lmdb).
SNI_TABLE_TYPE = "hash"
SNI_TABLE_NAME = "sni"
_SNI_TABLE_SUFFIX = ".db"  # what postmap adds for hash:

_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_]+")
_LIST_SEPARATORS = re.compile(r"[\s,]+")


def _run(argv: Sequence[str], timeout: float = 60, *, stderr_tty: bool = False) -> str:
    try:
        return run_command(argv, timeout, stderr_tty=stderr_tty)
    except CommandError as error:
        raise PostfixError(error.argv, error.returncode, error.stderr) from error


# --- main.cf parameters -------------------------------------------------------


def read_parameters(
    config_dir: Path, names: Iterable[str], *, expand: bool = False
) -> dict[str, str]:
    """The values of `names` in one `postconf` call (defaults included).

    Unknown parameter names are left out of the result. `expand` replaces
    `$name` references by their values (`postconf -x`).
    """
    names = list(names)
    for name in names:
        _check_name(name)
    if not names:
        return {}
    argv = [POSTCONF, "-c", str(config_dir)]
    if expand:
        argv.append("-x")
    return build_parameters_from_output(_run([*argv, *names]))


def build_parameters_from_output(output: str) -> dict[str, str]:
    """Parse `postconf` output, "name = value" lines, into a dict."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        name, separator, value = line.partition(" =")
        if not separator or not _PARAMETER_NAME.fullmatch(name):
            continue
        values[name] = value.removeprefix(" ")
    return values


def build_parameter_changes(
    current: Mapping[str, str], wanted: Mapping[str, str]
) -> dict[str, str]:
    """The entries of `wanted` that differ from `current`.

    Values compare as lists ("a, b" equals "a b"), as Postfix reads them; a
    parameter missing from `current` always differs.
    """
    changes: dict[str, str] = {}
    for name, value in wanted.items():
        if name not in current or _list_items(current[name]) != _list_items(value):
            changes[name] = value
    return changes


def _list_items(value: str) -> list[str]:
    return [item for item in _LIST_SEPARATORS.split(value) if item]


def write_parameters(config_dir: Path, values: Mapping[str, str]) -> None:
    """Set every parameter in one `postconf -c DIR -e` call; nothing to set, no call."""
    if not values:
        return
    assignments = []
    for name, value in values.items():
        _check_name(name)
        if "\n" in value or "\r" in value:
            raise ValueError(f"value of {name} spans lines: {value!r}")
        assignments.append(f"{name}={value}")
    _run([POSTCONF, "-c", str(config_dir), "-e", *assignments])


def write_parameter_changes(config_dir: Path, wanted: Mapping[str, str]) -> dict[str, str]:
    """Read, compare and set only what differs; returns the old values of what changed.

    The returned mapping is what `write_parameters` needs to undo the change.
    """
    current = read_parameters(config_dir, wanted)
    changes = build_parameter_changes(current, wanted)
    write_parameters(config_dir, changes)
    return {name: current.get(name, "") for name in changes}


def _check_name(name: str) -> None:
    if not _PARAMETER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a Postfix parameter name")


def build_chain_files_value(paths: Iterable[Path | str]) -> str:
    """The `smtpd_tls_chain_files` value for these files, in order, without repeats."""
    items: list[str] = []
    for path in paths:
        text = os.fspath(path)
        _check_listable_path(text)
        if text not in items:
            items.append(text)
    return ", ".join(items)


def _check_listable_path(text: str) -> None:
    # Postfix splits lists on whitespace and commas and has no quoting for them.
    if not os.path.isabs(text) or _LIST_SEPARATORS.search(text):
        raise ValueError(f"{text!r} must be an absolute path without spaces or commas")


# --- reload -------------------------------------------------------------------


def reload_postfix(config_dir: Path, timeout: float = 60) -> None:
    """`postfix -c DIR reload`: fails if main.cf is broken or Postfix is not running.

    The reload itself is asynchronous: the master re-reads its configuration
    and smtpd processes are replaced as they finish their sessions.
    """
    _run([POSTFIX, "-c", str(config_dir), "reload"], timeout, stderr_tty=True)


# --- SNI ------------------------------------------------------------------------


def build_sni_maps_value(table: Path) -> str:
    """The `tls_server_sni_maps` value for a table written by `write_sni_table`."""
    return f"{SNI_TABLE_TYPE}:{os.fspath(table)}"


def build_sni_table_source(entries: Mapping[str, Path | Sequence[Path]]) -> bytes:
    """The `postmap -F` source: one line per name, its chain file(s) as the value.

    Keys are names or table keys (`sni.build_sni_entries`); several files for
    one key (one per key algorithm) are a comma-separated list, the syntax of
    smtpd_tls_chain_files that postconf(5) gives for tls_server_sni_maps, and
    `postmap -F` stores their concatenated contents.
    """
    lines: dict[str, str] = {}
    for hostname, value in entries.items():
        key = build_sni_key(hostname)
        if key in lines:
            raise ValueError(f"SNI name {hostname!r} is listed twice")
        paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        if not paths:
            raise ValueError(f"SNI name {hostname!r} has no chain file")
        lines[key] = build_chain_files_value(paths)
    body = "".join(f"{key} {lines[key]}\n" for key in sorted(lines))
    return ("# Written by danesync; compiled with postmap -F. Do not edit.\n" + body).encode()


def write_sni_table(
    deploy_dir: Path,
    entries: Mapping[str, Path | Sequence[Path]],
    *,
    config_dir: Path | None = None,
    name: str = SNI_TABLE_NAME,
) -> Path:
    """Write and compile `<deploy_dir>/<name>`; returns its path (the source's).

    `postmap -F` stores the chain files' contents (private keys included) in
    the table, so it must be rebuilt whenever one of them changes. postmap
    itself rewrites an existing table in place (open O_TRUNC under a lock),
    which a process that already has it open may see half-written; so this
    compiles a fresh `<name>.new.db` and renames it over `<name>.db`.
    smtpd notices the new file by itself (measured: the next connection got
    the rebuilt entry, no reload needed). The table files have mode 0600,
    like the chain files they contain. postmap only warns about (and leaves
    out) an entry whose chain file it cannot read: that is an error here,
    and the table in place stays as it was.
    """
    deploy_dir = Path(deploy_dir)
    ensure_deploy_dir(deploy_dir)
    source = build_sni_table_source(entries)
    table = deploy_dir / name
    staging = deploy_dir / f"{name}.new"
    staging_db = deploy_dir / f"{name}.new{_SNI_TABLE_SUFFIX}"
    staging_db.unlink(missing_ok=True)  # left by an interrupted run
    write_atomic(staging, source, 0o600)
    argv = [POSTMAP]
    if config_dir is not None:
        argv += ["-c", str(config_dir)]
    argv += ["-F", f"{SNI_TABLE_TYPE}:{staging}"]
    try:
        try:
            completed = run_command_full(argv)
        except CommandError as error:
            raise PostfixError(error.argv, error.returncode, error.stderr) from error
        # postmap skips an entry whose file it cannot read with only a warning.
        if "warning:" in completed.stderr:
            raise PostfixError(argv, 0, completed.stderr)
        os.chmod(staging_db, 0o600)
        os.replace(staging_db, deploy_dir / f"{name}{_SNI_TABLE_SUFFIX}")
        os.replace(staging, table)
    except BaseException:
        staging_db.unlink(missing_ok=True)
        staging.unlink(missing_ok=True)
        raise
    sync_directory(deploy_dir)
    return table


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
_LEGACY_CERTIFICATE_PARAMETERS = TLS_AUDIT_PARAMETERS[6:]
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

    mandatory = value("smtpd_tls_mandatory_protocols")
    weak = [p for p in build_protocols_allowed(mandatory) if p in _WEAK_PROTOCOLS]
    if weak:
        warnings.append(
            f"smtpd_tls_mandatory_protocols = {mandatory or '(empty)'} allows"
            f" {', '.join(weak)}: use >=TLSv1.2"
        )

    if value("smtpd_tls_chain_files"):
        legacy = [name for name in _LEGACY_CERTIFICATE_PARAMETERS if value(name)]
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


def read_tls_audit(config_dir: Path) -> list[str]:
    """`build_tls_audit` on this Postfix, plus every chain file that cannot be read."""
    params = read_tls_audit_parameters(config_dir)
    warnings = build_tls_audit(params, read_services(config_dir))
    for item in _list_items(params.get("smtpd_tls_chain_files", "")):
        try:
            with open(item, "rb") as chain_file:
                chain_file.read(1)
        except OSError as error:
            warnings.append(f"smtpd_tls_chain_files: {item}: cannot be read: {error.strerror}")
    return warnings
