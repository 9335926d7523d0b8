"""The deploy step: chain files, one parameter change, one reload, the probes.

Its rollback checkpoint belongs to one operation (as certbot's reverter): the
previous parameter values `write_parameter_changes` returns and the `.prev`
chain files, taken at its start and applied or dropped at its end. A lineage
whose file or probe fails is rolled back alone; the others stay deployed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from danesync.chain import format_time
from danesync.config import Config
from danesync.errors import DanesyncError
from danesync.plan import DeployItem, DeployKind
from danesync.ports import PostfixPort, ProbeRequest
from danesync.runtime import PassResult, Runtime

log = structlog.get_logger("danesync")


def build_sni_entries(
    config: Config, deployed: Iterable[str], path_of: PostfixPort
) -> dict[str, list[Path]]:
    """The SNI table: hostname (table key) -> the chain files served for it."""
    wanted = set(deployed)
    entries: dict[str, list[Path]] = {}
    for certificate in config.certificates:
        if certificate.sni and certificate.lineage in wanted:
            for hostname in certificate.hostnames:
                entries.setdefault(hostname, []).append(path_of.chain_path(certificate.lineage))
    return entries


def build_wanted_parameters(
    config: Config, deployed: Iterable[str], port: PostfixPort
) -> dict[str, str | None]:
    """Postfix's parameters for these deployed lineages: defaults, then SNI."""
    from danesync.actions.postfix import build_chain_files_value

    wanted_lineages = set(deployed)
    wanted: dict[str, str | None] = {}
    defaults = [
        port.chain_path(c.lineage)
        for c in config.certificates
        if not c.sni and c.lineage in wanted_lineages
    ]
    if defaults:
        wanted["smtpd_tls_chain_files"] = build_chain_files_value(defaults)
    if build_sni_entries(config, wanted_lineages, port):
        wanted["tls_server_sni_maps"] = port.sni_maps_value()
    return wanted


@dataclass
class _Checkpoint:
    """What one deploy changed, to undo it: scoped to that deploy, never kept."""

    parameters: dict[str, str | None] | None = None
    files: tuple[str, ...] = ()  # lineages whose chain file this deploy replaced


def _deployed(rt: Runtime) -> set[str]:
    return {name for name, s in rt.state.lineages.items() if s.deployed is not None}


def _sni_touched(rt: Runtime, lineages: Iterable[str]) -> bool:
    sni = {c.lineage for c in rt.config.certificates if c.sni}
    return bool(sni & set(lineages))


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
    written: list[DeployItem] = []
    for item in items:
        if item.kind is not DeployKind.RESUMED:
            try:
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
        if _sni_touched(rt, lineages) or not rt.postfix.sni_table_exists():
            entries = build_sni_entries(rt.config, _deployed(rt) | set(lineages), rt.postfix)
            if entries:  # main.cf must never name a table that is not there
                rt.postfix.write_sni_table(entries)
        wanted = build_wanted_parameters(rt.config, _deployed(rt) | set(lineages), rt.postfix)
        checkpoint.parameters = rt.postfix.write_parameter_changes(wanted)
        rt.crash("after-postconf")
        if rt.config.postfix.reload:
            rt.postfix.reload()
            log.info("postfix.reloaded", reason=", ".join(lineages))
        rt.crash("after-reload")
        confirmed = _confirm(rt, written)
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


def _confirm(rt: Runtime, items: list[DeployItem]) -> dict[str, bool]:
    """The STARTTLS probe must see each new leaf (asking by name or key type)."""
    if rt.config.postfix.probe is None or not rt.config.postfix.reload:
        return {i.lineage: True for i in items}
    requests = []
    for item in items:
        certificate = rt.config.certificate(item.lineage)
        sni = certificate is not None and certificate.sni
        requests.append(
            ProbeRequest(
                item.lineage,
                item.chain.fingerprint,
                certificate.hostnames[0] if certificate is not None and sni else None,
                None if sni else item.chain.key_algorithm,
            )
        )
    outcomes = rt.postfix.confirm_served(requests)
    for item in items:
        if outcomes.get(item.lineage, False):
            log.info("probe.ok", lineage=item.lineage, serial=item.chain.serial)
        else:
            log.error(
                "probe.failed",
                lineage=item.lineage,
                serial=item.chain.serial,
                reason=f"{rt.config.postfix.probe} does not serve the new leaf",
            )
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
    remaining = _deployed(rt)
    try:
        if _sni_touched(rt, [i.lineage for i in items]):
            entries = build_sni_entries(rt.config, remaining, rt.postfix)
            if entries:
                rt.postfix.write_sni_table(entries)
        if all_of_them and checkpoint.parameters is not None:
            rt.postfix.write_parameters(checkpoint.parameters)
        elif not all_of_them:
            rt.postfix.write_parameter_changes(
                build_wanted_parameters(rt.config, remaining, rt.postfix)
            )
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
