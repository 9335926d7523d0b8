"""The DANE-safe rollover against a real BIND and a real Postfix.

A renewal from a new intermediate is held until its `2 1 1` record has been
visible on every server for `rollover_wait`; the old record is retired only
after the new chain is served. What is served is checked with
`openssl s_client`, what is published with `dig`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from danesync.tlsa import spki_sha256
from tests.harness.bind import BindServer, bind_fixture
from tests.harness.certs import Hierarchy
from tests.harness.danesync import json_events, run_danesync, start_danesync, write_config
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
bind = bind_fixture(scope="function")

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}"
TTL, WAIT = 2, 3


def ta(hierarchy: Hierarchy) -> str:
    return f"2 1 1 {spki_sha256(hierarchy.intermediate)}"


class Host:
    def __init__(
        self,
        root: Path,
        postfix: PostfixInstance,
        bind: BindServer,
        mode: str = "rfc2136",
        key_file: Path | None = None,
        tlsa: str = NAME,
    ) -> None:
        self.root = root
        self.letsencrypt = root / "letsencrypt"
        self.postfix = postfix
        dns: dict[str, Any] = {
            "mode": mode,
            "server": bind.address,
            "zone": "example.test",
            "ttl": TTL,
            "rollover_wait": WAIT,
        }
        if mode == "rfc2136":
            dns["tsig_key_file"] = key_file or bind.key_path
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
                "daemon": {"settle": 0.1},
            },
            [{"lineage": MX, "tlsa": [tlsa]}],
        )

    def sync(self) -> tuple[int, list[dict[str, Any]]]:
        result = run_danesync("sync", "-c", str(self.config))
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json_events(result.stdout)

    def status(self) -> dict[str, Any]:
        result = run_danesync("status", "--json", "-c", str(self.config))
        # 0, 1 or 2 by the monitoring verdict (no daemon runs here: critical).
        assert result.returncode in (0, 1, 2) and "Traceback" not in result.stderr, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def served_issuer(self) -> str:
        cert = self.postfix.served_certificate()
        return cert.issuer.rfc4514_string()

    def served_issuer_or_none(self) -> str | None:
        try:
            return self.served_issuer()
        except AssertionError:
            return None  # nothing served yet

    def sync_until(self, event: str, limit: float = 20) -> list[dict[str, Any]]:
        """Run passes until one logs `event`; the events of that pass."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            _, events = self.sync()
            if any(e["event"] == event for e in events):
                return events
            time.sleep(0.5)
        raise AssertionError(f"no {event} within {limit}s")


def issuer_of(hierarchy: Hierarchy) -> str:
    return hierarchy.intermediate.subject.rfc4514_string()


def names(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in events]


@pytest.fixture
def old() -> Hierarchy:
    # Unique names: the module's Postfix may still serve an earlier test's chain.
    return Hierarchy(f"Old {uuid.uuid4().hex[:8]}")


@pytest.fixture
def new() -> Hierarchy:
    return Hierarchy(f"New {uuid.uuid4().hex[:8]}")


class TestRolloverWithSync:
    """One pass at a time, so every intermediate state can be looked at."""

    def test_adopt_then_roll_to_a_new_intermediate(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        bind: BindServer,
        old: Hierarchy,
        new: Hierarchy,
    ) -> None:
        host = Host(tmp_path, postfix, bind)
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        bind.add_record(NAME, "TLSA", "3 1 1 " + "ab" * 32)  # by hand: never touched

        code, events = host.sync()
        assert code == 0
        assert "tlsa.published" in names(events) and "chain.held" in names(events)
        assert "chain.deployed" not in names(events)
        assert ta(old) in bind.dig_tlsa(NAME)

        host.sync_until("chain.deployed")
        assert host.served_issuer() == issuer_of(old)

        renew(host.letsencrypt, MX, new.issue([MX]))
        code, events = host.sync()
        assert code == 0 and "tlsa.published" in names(events)
        assert bind.dig_tlsa(NAME) >= {ta(old), ta(new)}
        assert host.served_issuer() == issuer_of(old)  # held
        status = host.status()["lineages"][MX]
        assert status["pending"]["tlsa"] == [ta(new)]

        events = host.sync_until("chain.deployed")
        assert "tlsa.retired" in names(events)
        assert host.served_issuer() == issuer_of(new)
        assert bind.dig_tlsa(NAME) == {ta(new), "3 1 1 " + "ab" * 32}
        ok, output = postfix.dane_verify(MX, ta(new))
        assert ok, output

    def test_deleted_record_is_republished(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
    ) -> None:
        host = Host(tmp_path, postfix, bind)
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        host.sync_until("chain.deployed")
        bind.delete_record(NAME, "TLSA", ta(old))
        assert bind.dig_tlsa(NAME) == set()
        code, events = host.sync()
        assert code == 0
        assert "tlsa.published" in names(events)
        assert bind.dig_tlsa(NAME) == {ta(old)}

    def test_wrong_tsig_secret_holds(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
    ) -> None:
        bad_key = tmp_path / "bad.key"
        text = bind.key_path.read_text()
        bad_key.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "QUFB" * 11 + '"', text))
        bad_key.chmod(0o600)
        host = Host(tmp_path, postfix, bind, key_file=bad_key)
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        code, events = host.sync()
        assert code == 1
        (failed,) = [e for e in events if e["event"] == "dns.failed"]
        assert "BADSIG" in str(failed["reason"])
        # No TLSA record exists, so nothing asks anything of the chain: it is
        # deployed first (DESIGN.md), and its record is not published.
        assert bind.dig_tlsa(NAME) == set()

    def test_loose_key_file_is_refused(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
    ) -> None:
        loose = tmp_path / "loose.key"
        loose.write_text(bind.key_path.read_text())
        loose.chmod(0o644)
        host = Host(tmp_path, postfix, bind, key_file=loose)
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        code, events = host.sync()
        assert code == 1
        (failed,) = [e for e in events if e["event"] == "dns.failed"]
        assert "0644" in str(failed["reason"]) and str(loose) in str(failed["reason"])
        assert "secret" not in json.dumps(events).replace("TSIG secret", "")

    def test_name_outside_update_policy_is_refused(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
    ) -> None:
        host = Host(tmp_path, postfix, bind, tlsa="_25._tcp.other.example.test")
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        code, events = host.sync()
        assert code == 1
        (failed,) = [e for e in events if e["event"] == "dns.failed"]
        assert "REFUSED" in str(failed["reason"])

    def test_server_stopped_mid_rollover(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        bind: BindServer,
        old: Hierarchy,
        new: Hierarchy,
    ) -> None:
        host = Host(tmp_path, postfix, bind)
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        host.sync_until("chain.deployed")
        renew(host.letsencrypt, MX, new.issue([MX]))
        assert "tlsa.published" in names(host.sync()[1])
        with bind.stopped():
            time.sleep(WAIT + 1)
            code, events = host.sync()
            assert code == 1 and "dns.failed" in names(events)
            assert "chain.deployed" not in names(events)
            assert host.served_issuer() == issuer_of(old)
        host.sync_until("chain.deployed")
        assert host.served_issuer() == issuer_of(new)

    def test_check_mode_reports_and_waits_for_the_operator(
        self, tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
    ) -> None:
        host = Host(tmp_path, postfix, bind, mode="check")
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        code, events = host.sync()
        assert code == 0
        missing = [e for e in events if e["event"] == "tlsa.missing"]
        assert missing and f"{NAME}. {TTL} IN TLSA {ta(old)}" in str(missing[0]["tlsa"])
        assert bind.dig_tlsa(NAME) == set()  # check mode publishes nothing
        # No record asks anything of the chain yet: it is deployed first.
        assert "chain.deployed" in names(events)
        assert host.served_issuer() == issuer_of(old)
        bind.add_record(NAME, "TLSA", ta(old))
        code, events = host.sync()
        assert code == 0 and "tlsa.missing" not in names(events)


class TestRolloverUnderTheDaemon:
    """`danesync run` while a sampler watches Postfix and DNS several times a second."""

    def test_no_moment_without_a_matching_record(
        self,
        tmp_path: Path,
        postfix: PostfixInstance,
        bind: BindServer,
        old: Hierarchy,
        new: Hierarchy,
    ) -> None:
        host = Host(tmp_path, postfix, bind)
        make_lineage(host.letsencrypt, MX, old.issue([MX]))
        old_issuer, new_issuer = issuer_of(old), issuer_of(new)
        issuers = {old_issuer: ta(old), new_issuer: ta(new)}
        samples: list[tuple[float, set[str], str | None, set[str], float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                before = bind.dig_tlsa(NAME)
                connected = time.time()
                issuer = host.served_issuer_or_none()
                samples.append((time.monotonic(), before, issuer, bind.dig_tlsa(NAME), connected))
                time.sleep(0.1)

        log = tmp_path / "daemon.log"
        daemon = start_danesync("run", "-c", str(host.config), "--log-format", "json", log=log)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            wait_for(lambda: host.served_issuer_or_none() == old_issuer, 30, log)
            renew(host.letsencrypt, MX, new.issue([MX]))
            wait_for(lambda: host.served_issuer_or_none() == new_issuer, 30, log)
            wait_for(lambda: bind.dig_tlsa(NAME) == {ta(new)}, 15, log)
            # The sampler itself must have seen the new chain before it stops.
            wait_for(lambda: any(s[2] == new_issuer for s in samples), 15, log)
        finally:
            stop.set()
            sampler.join()
            daemon.terminate()
            assert daemon.wait(15) == 0
        events = names(json_events(log.read_text()))
        for expected in (
            "chain.held",
            "tlsa.published",
            "tlsa.visible",
            "rollover.waiting",
            "chain.deployed",
            "tlsa.retired",
            "daemon.stopping",
        ):
            assert expected in events, (expected, events)

        served = [s for s in samples if s[2] in issuers]
        assert len(served) > 5  # a loaded machine samples slowly; each sample counts
        # When danesync saw the new chain served. A session Postfix accepted
        # before that may still be handed the old chain by an smtpd of the old
        # configuration, its handshake slowed past the retire by the reload's
        # tlsmgr restart: its client looked the records up before it connected
        # (`before`). Every session that began later must match `after` too.
        records = json_events(log.read_text())
        retired = next(i for i, e in enumerate(records) if e.get("event") == "tlsa.retired")
        confirmed = max(
            dt.datetime.fromisoformat(e["timestamp"]).timestamp()
            for e in records[:retired]
            if e.get("event") == "probe.ok"
        )
        for _, before, issuer, after, connected in served:
            assert issuer is not None
            record = issuers[issuer]
            # An empty RRset asks nothing (the first deploy precedes its record).
            assert record in before or not before, (issuer, before, after)
            if connected >= confirmed:
                assert record in after or not after, (issuer, before, after)
        new_visible = min(t for t, before, _, _, _ in samples if ta(new) in before)
        switched = min(t for t, _, issuer, _, _ in served if issuer == new_issuer)
        assert switched - new_visible >= WAIT - 0.5


def wait_for(condition: Any, limit: float, log: Path) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out; daemon log:\n{log.read_text()[-4000:]}")
