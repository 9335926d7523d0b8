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
with fsync, 40 ms for `postmap -F`, 2.1 s for the reload). Since then
danesync dates main.cf back after its own edits (`settle_main_cf`), so the
reload that follows no longer waits.

After the reload returns, the master re-reads its configuration; new
connections got the new chain within 20 ms in every measurement, but a
session already running keeps the old one, hence `probe.wait_for_leaf`.

`build_*` functions are pure; the others run Postfix commands and raise
`PostfixError`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
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

# An SNI table value: one chain file or several (str or Path: os.fspath is written).
ChainFiles = str | Path | Sequence[str | Path]


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


def read_explicit_parameters(config_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """Those of `names` that main.cf sets, with their values as written (`postconf -n`)."""
    names = list(names)
    for name in names:
        _check_name(name)
    if not names:
        return {}
    return build_parameters_from_output(_run([POSTCONF, "-c", str(config_dir), "-n", *names]))


def build_parameter_changes(
    current: Mapping[str, str],
    wanted: Mapping[str, str | None],
    explicit: Collection[str] = (),
) -> dict[str, str | None]:
    """The entries of `wanted` that differ from `current`.

    A string value is compared as a list ("a, b" equals "a b"), as Postfix
    reads it, with `current` (the values in effect, defaults included); a
    parameter missing from `current` always differs. None means "not in
    main.cf": it differs when the parameter is among `explicit` (set there).
    """
    changes: dict[str, str | None] = {}
    for name, value in wanted.items():
        if value is None:
            if name in explicit:
                changes[name] = None
        elif name not in current or _list_items(current[name]) != _list_items(value):
            changes[name] = value
    return changes


def _list_items(value: str) -> list[str]:
    return [item for item in _LIST_SEPARATORS.split(value) if item]


def write_parameters(config_dir: Path, values: Mapping[str, str | None]) -> None:
    """Set the string values in one `postconf -e`, remove the None ones in one `postconf -X`.

    Nothing to do, no call.
    """
    assignments = []
    removals = []
    for name, value in values.items():
        _check_name(name)
        if value is None:
            removals.append(name)
            continue
        if "\n" in value or "\r" in value:
            raise ValueError(f"value of {name} spans lines: {value!r}")
        assignments.append(f"{name}={value}")
    if assignments:
        _run([POSTCONF, "-c", str(config_dir), "-e", *assignments])
        settle_main_cf(config_dir)
    if removals:
        _run([POSTCONF, "-c", str(config_dir), "-X", *removals])
        settle_main_cf(config_dir)


def settle_main_cf(config_dir: Path) -> None:
    """Date main.cf back, just enough that Postfix does not wait for it to cool down.

    Postfix programs re-read a main.cf whose mtime is not older than the
    second before they started, every 0.3 s, until it is: the guard against
    reading a file an editor is still writing. `postconf -e`/`-X` write a
    temporary file and rename it, so when they return main.cf is complete;
    without this the reload after them (and a second postconf) waited
    1.5-2.4 s, on every deploy that changed a parameter (a cold start, a new
    lineage). The mtime still moves (to 2 s before now), so tools that look
    for a change still see one.
    """
    path = config_dir / "main.cf"
    try:
        st = path.stat()
        # Postfix compares whole seconds; keeping now's nanoseconds keeps two
        # edits in one second apart for tools that compare mtimes.
        settled = time.time_ns() - 2_000_000_000
        if st.st_mtime_ns > settled:
            os.utime(path, ns=(st.st_atime_ns, settled))
    except OSError:
        pass  # the programs will wait as before


def write_parameter_changes(
    config_dir: Path, wanted: Mapping[str, str | None]
) -> dict[str, str | None]:
    """Read, compare and change only what differs; returns what it replaced.

    In `wanted`, None removes the parameter from main.cf (`postconf -X`).
    The result maps each changed parameter to its previous main.cf value, or
    None where main.cf did not set it: given to `write_parameters`, it puts
    main.cf back exactly (setting the old values, removing what was absent).
    """
    current = read_parameters(config_dir, wanted)
    explicit = read_explicit_parameters(config_dir, wanted)
    changes = build_parameter_changes(current, wanted, explicit)
    write_parameters(config_dir, changes)
    return {name: explicit.get(name) for name in changes}


# The certificate parameters that smtpd_tls_chain_files replaces; Postfix
# warns at every smtpd start while one of them is still set beside it.
LEGACY_CERTIFICATE_PARAMETERS = (
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_dcert_file",
    "smtpd_tls_dkey_file",
)


def build_legacy_removals(wanted: Mapping[str, str | None]) -> dict[str, None]:
    """The legacy certificate parameters to take out of main.cf along with `wanted`.

    Only when `wanted` sets smtpd_tls_chain_files (Debian's stock main.cf
    names the snakeoil certificate with smtpd_tls_cert_file/key_file); give
    the result to `write_parameter_changes` together with `wanted`, so the
    returned previous values restore them on a rollback.
    """
    if not wanted.get("smtpd_tls_chain_files"):
        return {}
    return dict.fromkeys(LEGACY_CERTIFICATE_PARAMETERS)


def build_removed_parameters_notice(previous: Mapping[str, str | None]) -> str | None:
    """A log line's reason for the legacy parameters a change took out, or None."""
    removed = [
        f"{name} = {previous[name]}"
        for name in LEGACY_CERTIFICATE_PARAMETERS
        if previous.get(name) is not None
    ]
    if not removed:
        return None
    return (
        f"removed from main.cf: {'; '.join(removed)} (Postfix ignores them once"
        " smtpd_tls_chain_files is set and warns at every smtpd start; a rollback restores them)"
    )


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


def build_sni_table_source(entries: Mapping[str, ChainFiles]) -> bytes:
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
    entries: Mapping[str, ChainFiles],
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
