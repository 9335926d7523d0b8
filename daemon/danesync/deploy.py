"""The deploy step: chain files, one parameter change, one reload, the probes.

Its rollback checkpoint belongs to one operation (as certbot's reverter): the
previous parameter values `write_parameter_changes` returns and the `.prev`
chain files, taken at its start and applied or dropped at its end. A lineage
whose file or probe fails is rolled back alone; the others stay deployed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from danesync import snicerts
from danesync.chain import format_time
from danesync.config import Config
from danesync.errors import DanesyncError
from danesync.needs import build_config_index
from danesync.plan import DeployItem, DeployKind
from danesync.ports import PostfixPort, ProbeRequest
from danesync.runtime import PassResult, Runtime
from danesync.sni import SniCertificate, build_probe_names, build_sni_table
from danesync.state import ChainInfo

log = structlog.get_logger("danesync")


def build_sni_certificates(
    config: Config, chains: Mapping[str, ChainInfo], path_of: PostfixPort
) -> tuple[SniCertificate, ...]:
    """The SNI lineages among `chains`, each with the names it serves (snicerts.py:
    only the lineages whose chain changed since the last call are built again)."""
    return snicerts.build_sni_certificates(config.certificates, chains, path_of.chain_path, path_of)


def build_sni_entries(
    config: Config, chains: Mapping[str, ChainInfo], path_of: PostfixPort
) -> Mapping[str, tuple[str, ...]]:
    """The SNI table: table key -> the chain files served for it (one per algorithm)."""
    return build_sni_table(build_sni_certificates(config, chains, path_of)).files()


def build_wanted_parameters(
    config: Config, chains: Mapping[str, ChainInfo], port: PostfixPort
) -> dict[str, str | None]:
    """Postfix's parameters for these deployed chains: defaults, then SNI.

    With default chains, the legacy smtpd_tls_cert_file & co. (Debian's
    snakeoil) go: Postfix ignores them beside smtpd_tls_chain_files and warns
    at every smtpd start; the checkpoint's previous values restore them.
    """
    from danesync.actions.postfix import build_chain_files_value, build_legacy_removals

    wanted: dict[str, str | None] = {}
    index = build_config_index(config)
    defaults = [port.chain_path(c.lineage) for c in index.defaults if c.lineage in chains]
    if defaults:
        wanted["smtpd_tls_chain_files"] = build_chain_files_value(defaults)
        wanted |= build_legacy_removals(wanted)
    if build_sni_table(build_sni_certificates(config, chains, port)).entries:  # any entry
        wanted["tls_server_sni_maps"] = port.sni_maps_value()
    return wanted


@dataclass
class _Checkpoint:
    """What one deploy changed, to undo it: scoped to that deploy, never kept."""

    parameters: dict[str, str | None] | None = None
    files: tuple[str, ...] = ()  # lineages whose chain file this deploy replaced


def _deployed(rt: Runtime, items: Iterable[DeployItem] = ()) -> dict[str, ChainInfo]:
    """The deployed chains, with `items` as if deployed."""
    chains = {name: s.deployed for name, s in rt.state.lineages.items() if s.deployed is not None}
    chains.update({item.lineage: item.chain for item in items})
    return chains


def _sni_touched(rt: Runtime, lineages: Iterable[str]) -> bool:
    return build_config_index(rt.config).any_sni(lineages)


def _dropped(rt: Runtime) -> set[str]:
    """The lineages in the state that are no longer configured."""
    return rt.state.lineages.keys() - build_config_index(rt.config).lineages


def _sni_only(rt: Runtime, items: list[DeployItem], checkpoint: _Checkpoint) -> bool:
    """Only SNI chains changed and main.cf did not: no reload is needed.

    smtpd restarts by itself once an SNI table it opened was replaced ("table
    has changed"), without the reload's tlsmgr restart that stalls handshakes
    for about a second (docs/benchmarks.md); the probe still confirms the new
    leaf. A resumed deploy may have changed main.cf before the restart: reload.
    """
    if checkpoint.parameters or any(i.kind is DeployKind.RESUMED for i in items):
        return False
    return all(
        (certificate := rt.config.certificate(i.lineage)) is not None and certificate.sni
        for i in items
    )


def run_deploy(
    rt: Runtime, items: tuple[DeployItem, ...], pems: Mapping[str, bytes], result: PassResult
) -> set[str]:
    """Deploy `items` (pems: fingerprint -> bytes); returns the lineages now deployed."""
    for item in items:
        rt.state.lineage(item.lineage).inflight = item.chain
        if item.kind is DeployKind.REPAIR:
            log.warning(
                "chain.damaged",
                lineage=item.lineage,
                serial=item.chain.serial,
                reason=f"{rt.postfix.chain_path(item.lineage)}: {item.reason}",
            )
    rt.save()
    rt.crash("before-files")
    # One batch, one flush (two fsyncs a file were seconds of a cold start);
    # if it fails, one file at a time below says which lineage it was.
    batch = {
        item.lineage: pems[item.chain.fingerprint]
        for item in items
        if item.kind is not DeployKind.RESUMED and item.chain.fingerprint in pems
    }
    try:
        rt.postfix.install_chain_files(batch)
        installed = set(batch)
    except (OSError, ValueError):
        installed = set()
    written: list[DeployItem] = []
    for done, item in enumerate(items, 1):
        rt.progress("writing chain files", done, len(items))
        if item.kind is not DeployKind.RESUMED:
            try:
                if item.lineage not in installed:
                    rt.postfix.install_chain_file(item.lineage, pems[item.chain.fingerprint])
            except (OSError, ValueError, KeyError) as error:
                rt.state.lineage(item.lineage).inflight = None
                rt.fail(
                    result,
                    "deploy",
                    str(rt.postfix.chain_path(item.lineage)),
                    _why(error),
                    item.lineage,
                )
                continue
            rt.crash("after-file")
            rt.succeeded("deploy", str(rt.postfix.chain_path(item.lineage)), item.lineage)
        written.append(item)
    if len(written) < len(items):
        rt.save()
    if not written:
        return set()
    checkpoint = _Checkpoint(
        files=tuple(i.lineage for i in written if i.kind is not DeployKind.REPAIR)
    )
    lineages = [i.lineage for i in written]
    try:
        # A lineage dropped from the config leaves the table with this deploy.
        dropped = bool(_dropped(rt))
        chains = _deployed(rt, written)  # once: a walk over every lineage's state
        if _sni_touched(rt, lineages) or dropped or not rt.postfix.sni_table_exists():
            for problem in build_sni_table(
                build_sni_certificates(rt.config, chains, rt.postfix)
            ).problems:
                log.warning("sni.conflict", reason=problem)
            entries = build_sni_entries(rt.config, chains, rt.postfix)
            if entries:  # main.cf must never name a table that is not there
                rt.postfix.write_sni_table(entries, None if dropped else set(lineages))
                rt.progress("writing the SNI table", 1, 1)
        wanted = build_wanted_parameters(rt.config, chains, rt.postfix)
        checkpoint.parameters = rt.postfix.write_parameter_changes(wanted)
        _log_removed_parameters(checkpoint.parameters)
        rt.progress("setting Postfix parameters", 1, 1)
        rt.crash("after-postconf")
        if rt.config.postfix.reload and not _sni_only(rt, written, checkpoint):
            rt.postfix.reload()
            log.info("postfix.reloaded", reason=", ".join(lineages))
            rt.progress("reloading Postfix", 1, 1)
        rt.crash("after-reload")
        confirmed = _confirm(rt, written, chains)
    except (DanesyncError, OSError, ValueError) as error:
        log.error("postfix.failed", reason=_why(error))
        _roll_back(rt, written, checkpoint, _why(error), result, all_of_them=True)
        return set()
    ok = [i for i in written if confirmed.get(i.lineage, False)]
    failed = [i for i in written if not confirmed.get(i.lineage, False)]
    for item in ok:
        lineage_state = rt.state.lineage(item.lineage)
        lineage_state.deployed = item.chain
        lineage_state.inflight = None
        if (
            lineage_state.pending is not None
            and lineage_state.pending.fingerprint == item.chain.fingerprint
        ):
            lineage_state.pending = lineage_state.pending_since = lineage_state.proceed_at = None
        lineage_state.failed_fingerprint = lineage_state.failed_reason = None
        log_deployed(rt, item)
    # Lineages no longer configured are no longer named by Postfix's parameters:
    # nothing serves them now, so nothing needs their records.
    for name in _dropped(rt):
        del rt.state.lineages[name]
    rt.succeeded("deploy", "postfix")
    rt.save()
    if failed:
        endpoint = rt.config.postfix.probe
        _roll_back(
            rt,
            failed,
            checkpoint,
            f"{endpoint} does not serve the new leaf",
            result,
            all_of_them=False,
        )
    return {i.lineage for i in ok}


def _confirm(
    rt: Runtime, items: list[DeployItem], chains: Mapping[str, ChainInfo]
) -> dict[str, bool]:
    """The STARTTLS probe must see each new leaf (asking by name or key type)."""
    if rt.config.postfix.probe is None or not rt.config.postfix.reload:
        return {i.lineage: True for i in items}
    # An SNI lineage is asked for under a concrete name its table entry serves
    # (never "*.example.net"); the key algorithm picks its chain where an RSA
    # and an ECDSA lineage share the name.
    probe_names = build_probe_names(
        build_sni_certificates(rt.config, chains, rt.postfix),
        lineages={i.lineage for i in items},
    )
    requests = []
    for item in items:
        certificate = rt.config.certificate(item.lineage)
        sni = certificate is not None and certificate.sni
        requests.append(
            ProbeRequest(
                item.lineage,
                item.chain.fingerprint,
                probe_names.get(item.lineage) if sni else None,
                item.chain.key_algorithm,
            )
        )
    # Each outcome is logged (and the progress reported, which pings systemd's
    # watchdog) as soon as it is known, while the other probes go on.
    items_of = {item.lineage: item for item in items}
    endpoint = rt.config.postfix.probe
    reported: list[str] = []

    def record(lineage: str, ok: bool) -> None:
        item = items_of[lineage]
        if ok:
            log.info("probe.ok", lineage=lineage, serial=item.chain.serial)
        else:
            log.error(
                "probe.failed",
                lineage=lineage,
                serial=item.chain.serial,
                reason=f"{endpoint} does not serve the new leaf",
            )
        reported.append(lineage)
        rt.progress("confirming with the probe", len(reported), len(requests))

    outcomes = dict(rt.postfix.confirm_served(requests, record))
    done = set(reported)
    for item in items:  # any outcome a port did not report (none: not confirmed)
        if item.lineage not in done:
            outcomes[item.lineage] = outcomes.get(item.lineage, False)
            record(item.lineage, outcomes[item.lineage])
    return outcomes


def _roll_back(
    rt: Runtime,
    items: list[DeployItem],
    checkpoint: _Checkpoint,
    reason: str,
    result: PassResult,
    *,
    all_of_them: bool,
) -> None:
    """Undo `items` only: their files back from `.prev`, and the parameters as
    they were (everything failed) or as the lineages still deployed want them."""
    for item in items:
        if item.lineage in checkpoint.files:
            # A first deploy has no .prev: its file stays, but the parameters
            # below no longer name it, and the state does not adopt it.
            try:
                rt.postfix.restore_chain_file(item.lineage)
            except OSError as error:
                log.error("postfix.failed", lineage=item.lineage, reason=f"rollback: {error}")
    # The failed lineages' old chains (state.deployed) are back in their files.
    remaining = _deployed(rt)
    try:
        if _sni_touched(rt, [i.lineage for i in items]):
            entries = build_sni_entries(rt.config, remaining, rt.postfix)
            if entries:
                rt.postfix.write_sni_table(entries)
        if all_of_them and checkpoint.parameters is not None:
            rt.postfix.write_parameters(checkpoint.parameters)
        elif not all_of_them:
            wanted = build_wanted_parameters(rt.config, remaining, rt.postfix)
            # What the remaining lineages no longer want goes back to how it was
            # (no default chain left: smtpd_tls_chain_files and the legacy files).
            for name, value in (checkpoint.parameters or {}).items():
                wanted.setdefault(name, value)
            rt.postfix.write_parameter_changes(wanted)
        if rt.config.postfix.reload:
            rt.postfix.reload()
    except (DanesyncError, OSError, ValueError) as error:
        log.error("postfix.failed", reason=f"rollback: {_why(error)}")
    for item in items:
        lineage_state = rt.state.lineage(item.lineage)
        lineage_state.inflight = None
        if item.kind is not DeployKind.REPAIR:
            lineage_state.failed_fingerprint = item.chain.fingerprint
            lineage_state.failed_reason = reason
        log.error(
            "chain.rolled_back", lineage=item.lineage, serial=item.chain.serial, reason=reason
        )
        rt.fail(result, "deploy", "postfix", reason, item.lineage)
    rt.save()


def _log_removed_parameters(previous: Mapping[str, str | None]) -> None:
    from danesync.actions.postfix import build_removed_parameters_notice

    notice = build_removed_parameters_notice(previous)
    if notice is not None:
        log.info("postfix.legacy_removed", reason=notice)


def log_deployed(rt: Runtime, item: DeployItem) -> None:
    chain = item.chain
    ttl = rt.config.dns.ttl
    fields: dict[str, object] = {}
    if item.reason and item.kind is not DeployKind.NEW:
        fields["reason"] = item.reason
    log.info(
        "chain.deployed",
        lineage=item.lineage,
        serial=chain.serial,
        not_after=format_time(chain.not_after),
        issuer=chain.issuer,
        tlsa=[r.zone_line(ttl) for r in chain.tlsa],
        **fields,
    )


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return str(error) or type(error).__name__
