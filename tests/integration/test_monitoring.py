"""Watching danesync: `danesync status` exit codes, the textfile and the DANE self-check.

Each exit status is reached by a real situation against the real Postfix and
BIND with the daemon running: deployed and published (0), a rollover waiting
(0, then 1 once it waits too long), a record deleted or replaced by hand and a
chain changed by hand in main.cf (2, within one self-check interval), the
daemon killed or hung (2). The state file is never edited.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from danesync.tlsa import spki_sha256
from tests.conftest import require_program
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy, key_pem
from tests.harness.danesync import json_events, run_danesync, start_danesync, write_config
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
bind = bind_fixture(scope="function")

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}"
TTL, WAIT = 2, 3
CHECK = 1.0  # seconds between self-checks


def ta(hierarchy: Hierarchy) -> str:
    return f"2 1 1 {spki_sha256(hierarchy.intermediate)}"


class Host:
    """A config for the module's Postfix and this test's BIND; the daemon on it."""

    def __init__(
        self,
        root: Path,
        postfix: PostfixInstance,
        bind: BindServer,
        mode: str = "rfc2136",
        certificates: list[dict[str, Any]] | None = None,
    ) -> None:
        self.root = root
        self.mode = mode
        self.letsencrypt = root / "letsencrypt"
        self.textfile = root / "node-exporter" / "danesync.prom"
        self.textfile.parent.mkdir()
        self.log = root / "daemon.log"
        self.daemon: subprocess.Popen[str] | None = None
        dns: dict[str, Any] = {
            "mode": mode,
            "server": bind.address,
            "zone": "example.test",
            "ttl": TTL,
            "rollover_wait": WAIT,
        }
        if mode == "rfc2136":
            dns["tsig_key_file"] = bind.key_path
        self.config = write_config(
            root / "danesync.toml",
            {
                "certbot": {"config_dir": self.letsencrypt},
                "postfix": {
                    "config_dir": postfix.config_dir,
                    "deploy_dir": root / "deploy",
                    "probe": f"127.0.0.1:{postfix.port}",
                },
                "dns": dns,
                "state": {"dir": root / "state"},
                # Full passes out of the way: only the self-check may notice.
                "daemon": {"settle": 0.1, "reconcile_interval": 3600},
                # Loopback only: no system resolver in tests.
                "monitor": {"textfile": self.textfile, "check_interval": CHECK, "resolver": "off"},
            },
            certificates or [{"lineage": MX, "tlsa": [NAME]}],
        )

    def start(self, env: dict[str, str] | None = None) -> None:
        self.daemon = start_danesync(
            "run", "-c", str(self.config), "--log-format", "json", log=self.log, env=env
        )

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGCONT)
            self.daemon.terminate()
            assert self.daemon.wait(15) == 0
        self.daemon = None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events = json_events(self.log.read_text())
        return [e for e in events if name is None or e["event"] == name]

    def status(self) -> tuple[int, str, dict[str, Any]]:
        text = run_danesync("status", "-c", str(self.config))
        assert "Traceback" not in text.stderr, text.stderr
        document = run_danesync("status", "--json", "-c", str(self.config))
        return text.returncode, text.stdout, json.loads(document.stdout)

    def wait_status(self, code: int, limit: float = 30, contains: str = "") -> str:
        """Poll `danesync status` until it exits `code` (and says `contains`); its text."""
        end = time.monotonic() + limit
        seen = ""
        while time.monotonic() < end:
            result = run_danesync("status", "-c", str(self.config))
            seen = result.stdout + result.stderr
            if result.returncode == code and contains in seen:
                return result.stdout
            time.sleep(0.3)
        raise AssertionError(
            f"status never exited {code} with {contains!r}; last:\n{seen}\n"
            f"daemon log:\n{self.log.read_text()[-3000:]}"
        )

    def wait_for(self, condition: Callable[[], bool], limit: float = 30) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out; daemon log:\n{self.log.read_text()[-3000:]}")


@pytest.fixture
def host(tmp_path: Path, postfix: PostfixInstance, bind: BindServer) -> Iterator[Host]:
    """dns.mode = "check": the operator publishes, so a record changed by hand
    stays changed (in rfc2136 mode the light check would soon repair it)."""
    host = Host(tmp_path, postfix, bind, mode="check")
    yield host
    host.stop()


@pytest.fixture
def publishing_host(tmp_path: Path, postfix: PostfixInstance, bind: BindServer) -> Iterator[Host]:
    host = Host(tmp_path, postfix, bind, mode="rfc2136")
    yield host
    host.stop()


@pytest.fixture
def ca() -> Hierarchy:
    # Unique names: the module's Postfix may still serve an earlier test's chain.
    return Hierarchy(f"Mon {uuid.uuid4().hex[:8]}")


def deployed_and_published(host: Host, bind: BindServer, ca: Hierarchy) -> None:
    """The daemon runs, the chain is served and its record is visible: status 0."""
    make_lineage(host.letsencrypt, MX, ca.issue([MX]))
    if host.mode == "check":
        bind.add_record(NAME, "TLSA", ta(ca))  # published by the operator
    host.start()
    host.wait_for(lambda: bool(host.events("chain.deployed")))
    host.wait_for(lambda: ta(ca) in bind.dig_tlsa(NAME))
    host.wait_status(0, contains="DANESYNC OK")


class TestStatusCodes:
    """Each exit status of `danesync status`, reached by what it names."""

    def test_deployed_and_published_is_ok_and_the_textfile_passes_promtool(
        self, publishing_host: Host, bind: BindServer, ca: Hierarchy
    ) -> None:
        host = publishing_host
        deployed_and_published(host, bind, ca)
        code, text, document = host.status()
        assert code == 0
        assert text.splitlines()[0] == "DANESYNC OK - 1/1 deployed, records published"
        assert document["status"] == "OK" and document["daemon"]["last_check"]
        (check,) = [c for c in document["selfcheck"] if c["source"].startswith("verify")]
        assert check["outcome"] == "valid" and check["published"] == [ta(ca)]

        require_program("promtool")
        metrics = host.textfile.read_text()
        assert f'danesync_certificate_not_after_timestamp_seconds{{lineage="{MX}"}}' in metrics
        assert f'danesync_selfcheck_valid{{lineage="{MX}"' in metrics
        result = subprocess.run(
            ["promtool", "check", "metrics"],
            input=metrics.encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        assert oct(host.textfile.stat().st_mode & 0o777) == "0o644"

    def test_record_deleted_by_hand_is_critical_within_one_interval(
        self, host: Host, bind: BindServer, ca: Hierarchy
    ) -> None:
        deployed_and_published(host, bind, ca)
        bind.delete_record(NAME, "TLSA", ta(ca))
        deleted = time.monotonic()
        text = host.wait_status(2, contains="no TLSA record published")
        # One self-check interval, plus the probe and the status command's own start.
        assert time.monotonic() - deleted < CHECK + 15
        assert text.startswith("DANESYNC CRITICAL - ")

    def test_record_replaced_by_hand_is_dane_broken(
        self, host: Host, bind: BindServer, ca: Hierarchy
    ) -> None:
        deployed_and_published(host, bind, ca)
        checked = run_danesync("check", "-c", str(host.config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"dane {NAME}. serial" in checked.stdout and ": ok: DANE-TA" in checked.stdout
        # Today's first start may publish before it deploys (issue 10): the
        # self-check rightly reports that too; only what follows counts here.
        mark = len(host.events("dane.broken"))
        other = Hierarchy(f"Other {uuid.uuid4().hex[:8]}")
        bind.add_record(NAME, "TLSA", ta(other))
        bind.delete_record(NAME, "TLSA", ta(ca))
        text = host.wait_status(2, contains="dane.broken")
        assert MX in text.splitlines()[0]
        host.wait_for(lambda: len(host.events("dane.broken")) > mark)
        broken = host.events("dane.broken")[mark]
        checked = run_danesync("check", "-c", str(host.config))
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert ": BROKEN: " in checked.stdout and f"published {ta(other)}" in checked.stdout
        assert broken["level"] == "error" and broken["lineage"] == MX
        assert broken["published"] == [ta(other)]
        assert broken["serial"] and ca.intermediate.subject.rfc4514_string() == broken["issuer"]
        # Put back, the self-check says so and status is OK again.
        bind.add_record(NAME, "TLSA", ta(ca))
        host.wait_status(0, contains="DANESYNC OK")
        host.wait_for(lambda: bool(host.events("dane.ok")))

    def test_chain_changed_by_hand_in_main_cf_is_dane_broken(
        self, host: Host, bind: BindServer, ca: Hierarchy, postfix: PostfixInstance
    ) -> None:
        deployed_and_published(host, bind, ca)
        other = Hierarchy(f"Hand {uuid.uuid4().hex[:8]}")
        leaf = other.issue([MX])
        by_hand = host.root / "by-hand.pem"
        by_hand.write_bytes(key_pem(leaf.key) + leaf.fullchain_pem)
        by_hand.chmod(0o600)
        before = postfix.postconf("-h", "smtpd_tls_chain_files").strip()
        mark = len(host.events("dane.broken"))
        try:
            postfix.set_parameters({"smtpd_tls_chain_files": str(by_hand)})
            postfix.reload()
            text = host.wait_status(2, contains="dane.broken")
            serial = f"{leaf.cert.serial_number:X}"
            serial = serial if len(serial) % 2 == 0 else "0" + serial
            assert f"serves serial {serial}" in text
            host.wait_for(lambda: len(host.events("dane.broken")) > mark)
            broken = host.events("dane.broken")[mark]
            assert broken["issuer"] == other.intermediate.subject.rfc4514_string()
            assert broken["serial"] == serial
            assert broken["published"] == [ta(ca)]
        finally:
            postfix.set_parameters({"smtpd_tls_chain_files": before})
            postfix.reload()
        host.wait_status(0, contains="DANESYNC OK")

    def test_postfix_serving_nothing_is_critical(
        self, host: Host, bind: BindServer, ca: Hierarchy, postfix: PostfixInstance
    ) -> None:
        """The case that started it: state says deployed, Postfix serves nothing.

        `danesync status` and the unit's STATUS= (what `systemctl status` shows)
        both say so.
        """
        name = f"danesync-monitor-{uuid.uuid4().hex}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(b"\0" + name.encode())
        listener.settimeout(0.2)
        try:
            make_lineage(host.letsencrypt, MX, ca.issue([MX]))
            bind.add_record(NAME, "TLSA", ta(ca))
            host.start(env={"NOTIFY_SOCKET": "@" + name})
            host.wait_status(0, contains="DANESYNC OK")
            with postfix.stopped():
                text = host.wait_status(2, contains="serves no chain")
                assert text.startswith(f"DANESYNC CRITICAL - {MX}: Postfix serves no chain")
                assert "1/1 deployed" in text.splitlines()[0]  # what the state says, beside it
                statuses: list[str] = []
                end = time.monotonic() + 10
                while time.monotonic() < end and not any("CRITICAL" in s for s in statuses):
                    try:
                        data = listener.recv(65536).decode()
                    except TimeoutError:
                        continue
                    statuses += [
                        line[7:] for line in data.splitlines() if line.startswith("STATUS=")
                    ]
                assert any(
                    s.startswith(f"CRITICAL: {MX}: Postfix serves no chain") and "1/1 deployed" in s
                    for s in statuses
                ), statuses
            host.wait_status(0, contains="DANESYNC OK")
        finally:
            listener.close()

    def test_a_renewal_that_fails_to_deploy_is_critical(
        self, host: Host, bind: BindServer, ca: Hierarchy, postfix: PostfixInstance
    ) -> None:
        deployed_and_published(host, bind, ca)
        with postfix.stopped():  # the reload after the new chain is written fails
            renew(host.letsencrypt, MX, ca.issue([MX]))  # same issuer: no wait needed
            host.wait_for(lambda: bool(host.events("chain.rolled_back")), limit=60)
            text = host.wait_status(2, contains="deploy")
            critical = [line for line in text.splitlines() if line.startswith("  CRITICAL")]
            assert any("deploy" in line and MX in line for line in critical), text
            document = host.status()[2]
            assert document["daemon"]["failures"].get("chain.rolled_back", 0) >= 1

    def test_daemon_killed_is_critical(self, host: Host, bind: BindServer, ca: Hierarchy) -> None:
        deployed_and_published(host, bind, ca)
        assert host.daemon is not None
        host.daemon.kill()
        host.daemon.wait(15)
        host.daemon = None
        text = host.wait_status(2, limit=10, contains="not running")
        assert text.startswith("DANESYNC CRITICAL - the daemon is not running")
        document = host.status()[2]
        assert document["daemon"]["running"] is False and document["exit_code"] == 2

    def test_daemon_hung_is_critical_by_its_stale_heartbeat(
        self, host: Host, bind: BindServer, ca: Hierarchy
    ) -> None:
        deployed_and_published(host, bind, ca)
        assert host.daemon is not None
        os.kill(host.daemon.pid, signal.SIGSTOP)
        try:
            # Stale after 2 intervals + at least 10 s of grace.
            text = host.wait_status(2, limit=40, contains="stale")
            assert "last heartbeat" in text
        finally:
            os.kill(host.daemon.pid, signal.SIGCONT)
        host.wait_status(0, contains="DANESYNC OK")


class TestRolloverWaiting:
    """A rollover waiting is fine for as long as it should take, then a warning."""

    def test_waiting_ok_then_warning(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, ca: Hierarchy
    ) -> None:
        host = Host(tmp_path, postfix, bind, mode="check")
        try:
            make_lineage(host.letsencrypt, MX, ca.issue([MX]))
            bind.add_record(NAME, "TLSA", ta(ca))  # check mode: the operator publishes
            host.start()
            host.wait_for(lambda: bool(host.events("chain.deployed")))
            host.wait_status(0, contains="DANESYNC OK")
            new = Hierarchy(f"New {uuid.uuid4().hex[:8]}")
            renew(host.letsencrypt, MX, new.issue([MX]))  # its record never comes
            host.wait_for(lambda: bool(host.events("tlsa.missing")))
            code, text, document = host.status()
            assert code == 0, text  # waiting, but not for long yet
            assert document["lineages"][MX]["pending"] is not None
            # 2 * (rollover_wait + ttl + 10 s slack) + 2 intervals + 10 s grace: about 42 s.
            text = host.wait_status(1, limit=90, contains="waiting since")
            assert text.startswith("DANESYNC WARNING - ")
        finally:
            host.stop()


class TestBothKeyTypes:
    """RSA and ECDSA default chains: a sender may get either, so both are judged."""

    def test_only_the_broken_key_type_is_reported(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer
    ) -> None:
        ec_ca = Hierarchy(f"EC {uuid.uuid4().hex[:8]}")
        rsa_ca = Hierarchy(f"RSA {uuid.uuid4().hex[:8]}")
        host = Host(
            tmp_path,
            postfix,
            bind,
            mode="check",
            certificates=[
                {"lineage": "mx-ec", "hostnames": [MX], "tlsa": [NAME]},
                {"lineage": "mx-rsa", "hostnames": [MX], "tlsa": [NAME]},
            ],
        )
        try:
            make_lineage(host.letsencrypt, "mx-ec", ec_ca.issue([MX]))
            make_lineage(host.letsencrypt, "mx-rsa", rsa_ca.issue([MX], key_kind="rsa"))
            bind.add_record(NAME, "TLSA", ta(ec_ca))
            bind.add_record(NAME, "TLSA", ta(rsa_ca))
            host.start()
            host.wait_for(lambda: len(host.events("chain.deployed")) >= 2)
            host.wait_status(0, contains="2/2 deployed")
            document = host.status()[2]
            judged = {
                (c["lineage"], c["key_algorithm"], c["outcome"]) for c in document["selfcheck"]
            }
            assert judged == {("mx-ec", "ecdsa", "valid"), ("mx-rsa", "rsa", "valid")}

            mark = len(host.events("dane.broken"))
            bind.delete_record(NAME, "TLSA", ta(rsa_ca))  # the RSA chain loses its record
            text = host.wait_status(2, contains="dane.broken")
            assert text.splitlines()[0].startswith("DANESYNC CRITICAL - mx-rsa: ")
            problems = [line for line in text.splitlines() if line.startswith("  CRITICAL")]
            assert problems and all("mx-rsa" in line for line in problems), text
            host.wait_for(lambda: len(host.events("dane.broken")) > mark)
            broken = host.events("dane.broken")[mark:]
            assert {(e["lineage"], e["key_algorithm"]) for e in broken} == {("mx-rsa", "rsa")}
        finally:
            host.stop()
