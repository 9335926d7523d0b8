"""Issue 10, findings 3, 4, 7 and 8: deploys, rollbacks and the environment.

A real Postfix (and, for check mode, a real BIND); danesync only through its
user contract: the config file, ``danesync run|sync|check``, exit codes and
the JSON log events of DESIGN.md.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.invariant_host import MX, Host, names
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, free_port, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
bind = bind_fixture()

SNI = "sni.example.test"
COOL_DOWN = 2.2  # postfix commands sleep while main.cf is younger than about 2 s


def leaf(label: str, hostnames: list[str] | None = None) -> Leaf:
    return Hierarchy(f"{label} {uuid.uuid4().hex[:8]}").issue(hostnames or [MX])


def chain_files(postfix: PostfixInstance) -> str:
    return postfix.postconf("-h", "smtpd_tls_chain_files").strip()


def served_serial(postfix: PostfixInstance) -> int | None:
    try:
        return postfix.served_certificate().serial_number
    except AssertionError:
        return None


@pytest.fixture
def host(tmp_path: Path, postfix: PostfixInstance) -> Iterator[Host]:
    # The module's Postfix may name an earlier test's chain file: start clean.
    postfix.postconf("-X", "smtpd_tls_chain_files", "tls_server_sni_maps")
    time.sleep(COOL_DOWN)
    postfix.reload()
    h = Host(tmp_path, postfix)
    try:
        yield h
    finally:
        h.close()


# --- finding 3: a rolled-back first deploy stays rolled back ---------------------------


@pytest.mark.parametrize("cause", ["postfix-down", "probe-fails"])
def test_rolled_back_first_deploy_does_not_come_back(
    host: Host, postfix: PostfixInstance, cause: str
) -> None:
    """The first deploy is rolled back (Postfix down, or the probe never sees the
    new leaf). The next `danesync sync` runs must not adopt the leftover file as
    an interrupted deploy (`deploy.resumed`) and point main.cf at it, and no
    later pass reloads Postfix for it (reload_pending must not stick)."""
    make_lineage(host.letsencrypt, MX, leaf("First"))
    if cause == "probe-fails":
        host.probe = f"127.0.0.1:{free_port()}"  # nobody there: the probe never confirms
        host.write()
        code, events, stderr = host.sync()
    else:
        with postfix.stopped():
            code, events, stderr = host.sync()
    assert code == 1, stderr
    assert "chain.rolled_back" in names(events), names(events)
    assert str(host.chain_file()) not in chain_files(postfix)

    deployed = False  # a real deploy (probe-confirmed, logged) may name the file
    for attempt in range(3):
        mark = len(postfix.maillog)
        code, events, stderr = host.sync()
        assert "Traceback" not in stderr, stderr
        assert "deploy.resumed" not in names(events), (attempt, names(events))
        deployed = deployed or "chain.deployed" in names(events)
        if not deployed:
            assert str(host.chain_file()) not in chain_files(postfix), (attempt, names(events))
        if attempt > 0:
            reloaded = "postfix.reloaded" in names(events) or "reload --" in postfix.maillog[mark:]
            assert not reloaded or "chain.deployed" in names(events), (attempt, names(events))


# --- finding 4: a rollback restores only what its own operation changed -----------------


def failing_postmap(directory: Path, marker: Path) -> dict[str, str]:
    """A PATH whose `postmap` fails while `marker` exists (else the real one runs)."""
    directory.mkdir()
    script = directory / "postmap"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{marker}" ]; then\n'
        '  echo "postmap: fatal: injected failure (test)" >&2\n'
        "  exit 1\n"
        "fi\n"
        'exec /usr/sbin/postmap "$@"\n'
    )
    script.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def test_failed_postmap_leaves_main_cf_naming_the_served_chains(
    host: Host, postfix: PostfixInstance, tmp_path: Path
) -> None:
    """The default chain is deployed; later an SNI lineage's table build fails.
    The rollback must not restore the parameters an earlier deploy replaced
    (main.cf would end with an empty smtpd_tls_chain_files)."""
    host.write([{"lineage": MX}, {"lineage": SNI, "sni": True, "hostnames": [SNI]}])
    marker = tmp_path / "postmap-fails"
    env = failing_postmap(tmp_path / "bin", marker)
    default = leaf("Default")
    make_lineage(host.letsencrypt, MX, default)
    daemon = host.start(env=env)
    daemon.wait_for("chain.deployed")
    assert chain_files(postfix) == str(host.chain_file())

    marker.touch()
    make_lineage(host.letsencrypt, SNI, leaf("Sni", [SNI]))
    daemon.wait_until(
        lambda: bool(daemon.events("chain.rolled_back") or daemon.events("pass.failed")),
        "a failed SNI deploy",
    )
    time.sleep(1)  # let the rollback finish its postconf and reload
    assert daemon.alive, daemon.text()[-3000:]
    assert chain_files(postfix) == str(host.chain_file()), daemon.text()[-3000:]
    assert postfix.postconf("-h", "tls_server_sni_maps").strip() in ("", "$smtpd_tls_sni_maps")
    assert served_serial(postfix) == default.cert.serial_number


# --- finding 7: one danesync per state directory ---------------------------------------


def test_sync_while_the_daemon_runs_exits_75(host: Host, postfix: PostfixInstance) -> None:
    make_lineage(host.letsencrypt, MX, leaf("Locked"))
    daemon = host.start()
    daemon.wait_for("chain.deployed")
    daemon.wait_for("daemon.ready")
    time.sleep(0.5)
    mark = len(postfix.maillog)
    code, stdout, stderr = host.run("sync")
    assert code == 75, (code, stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert (stdout + stderr).strip(), "exit 75 needs a plain message"
    assert "deploy.resumed" not in stdout + stderr
    time.sleep(1)
    assert "reload --" not in postfix.maillog[mark:], postfix.maillog[mark:]
    assert daemon.alive


# --- finding 8: no environment error kills the daemon -----------------------------------


def mount(*arguments: str) -> None:
    subprocess.run(["mount", *arguments], check=True, capture_output=True)


def fill(directory: Path) -> None:
    """Write until the file system is full."""
    try:
        with open(directory / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC, error


@pytest.mark.parametrize("failure", ["ENOSPC", "EROFS"])
def test_full_or_read_only_deploy_dir_does_not_kill_the_daemon(
    tmp_path: Path, postfix: PostfixInstance, failure: str
) -> None:
    postfix.postconf("-X", "smtpd_tls_chain_files")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    mount("-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(deploy))
    host = Host(tmp_path, postfix, deploy_dir=deploy)
    try:
        first = leaf("Before")
        make_lineage(host.letsencrypt, MX, first)
        daemon = host.start()
        daemon.wait_for("chain.deployed")
        if failure == "ENOSPC":
            fill(deploy)
        else:
            mount("-o", "remount,ro", str(deploy))
        renew(host.letsencrypt, MX, leaf("After"))
        failed = daemon.wait_for("pass.failed")
        assert str(deploy) in json.dumps(failed), failed
        time.sleep(2)
        assert daemon.alive, daemon.text()[-3000:]
        assert served_serial(postfix) == first.cert.serial_number
    finally:
        host.close()
        subprocess.run(["umount", "-l", str(deploy)], check=False, capture_output=True)


@pytest.mark.parametrize("directory", ["deploy dir", "deploy,dir"])
def test_deploy_dir_postconf_cannot_take_is_a_config_error(
    tmp_path: Path, postfix: PostfixInstance, directory: str
) -> None:
    host = Host(tmp_path, postfix, deploy_dir=tmp_path / directory)
    make_lineage(host.letsencrypt, MX, leaf("Spaced"))
    code, stdout, stderr = host.run("check")
    assert code == 78, (code, stdout, stderr)
    assert "deploy_dir" in stdout + stderr
    assert "Traceback" not in stderr


def test_check_mode_with_server_and_no_zone(
    tmp_path: Path, postfix: PostfixInstance, bind: BindServer
) -> None:
    """The shipped config says `server` is enough for check mode: no AssertionError."""
    host = Host(tmp_path, postfix, bind, mode="check")
    del host.dns["zone"]
    host.write()
    make_lineage(host.letsencrypt, MX, leaf("Checked"))
    code, stdout, stderr = host.run("check")
    assert "Traceback" not in stderr, stderr
    assert code in (0, 78), (code, stdout, stderr)
    if code == 78:
        assert "zone" in stdout + stderr
        return
    code, events, stderr = host.sync()
    assert "Traceback" not in stderr and "AssertionError" not in stderr, stderr
    # The zone is found by an SOA lookup: the needed record is reported, not published.
    assert "tlsa.missing" in names(events), names(events)
    assert bind.dig_tlsa(f"_25._tcp.{MX}") == set()


def test_state_file_of_another_schema_does_not_crash_loop(
    host: Host, postfix: PostfixInstance
) -> None:
    first = leaf("Schema")
    make_lineage(host.letsencrypt, MX, first)
    host.state_dir.mkdir()
    (host.state_dir / "state.json").write_text(
        json.dumps({"version": 999, "lineages": {}, "records": []})
    )
    daemon = host.start()
    daemon.wait_until(
        lambda: not daemon.alive or bool(daemon.events("daemon.ready")), "daemon.ready"
    )
    time.sleep(2)
    assert daemon.alive, daemon.text()[-3000:]
    assert "state" in daemon.text().lower()
    daemon.wait_until(lambda: served_serial(postfix) == first.cert.serial_number, "the chain")
