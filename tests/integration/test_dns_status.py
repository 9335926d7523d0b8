"""`status --json` shows the last DNS failure per server and since when
(issue 13, finding 4), so a rollover held on `dns.failed` does not look like
a normal wait.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.bind import BindServer, bind_fixture, free_port
from tests.harness.certs import Hierarchy
from tests.harness.danesync import run_danesync, write_config
from tests.harness.lineage import make_lineage
from tests.harness.postfix import PostfixInstance, postfix_fixture
from tests.integration.test_rollover import MX, NAME, Host, names, ta

pytestmark = [pytest.mark.integration, pytest.mark.root]

bind = bind_fixture(scope="function")
postfix = postfix_fixture()


@pytest.fixture
def old() -> Hierarchy:
    return Hierarchy(f"Old {uuid.uuid4().hex[:8]}")


def failures(host: Host) -> list[dict[str, Any]]:
    """The DNS failures `status --json` shows."""
    return [f for f in host.status()["failures"] if f["step"] in ("publish", "retire", "observe")]


def test_update_failure_per_server_with_since(
    tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
) -> None:
    bad = tmp_path / "bad.key"
    good = bind.key_path.read_text()
    bad.write_text(re.sub(r'secret "[^"]+"', 'secret "' + "QUFB" * 11 + '"', good))
    bad.chmod(0o600)
    host = _host(tmp_path, postfix, bind, bad)
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    assert host.sync()[0] == 1
    (first,) = failures(host)
    assert (first["step"], first["target"], first["attempts"]) == ("publish", bind.address, 1)
    assert "BADSIG" in first["reason"] and first["since"]
    assert host.sync()[0] == 1
    (second,) = failures(host)
    assert second["since"] == first["since"] and second["attempts"] == 2
    text = run_danesync("status", "-c", str(host.config)).stdout
    assert f"failed    publish {bind.address}: update of zone example.test failed: BADSIG" in text
    assert f"(since {first['since']}, 2 attempt(s))" in text
    bad.write_text(good)  # fixed in place
    code, events = host.sync()
    assert code == 0 and "tlsa.published" in names(events), events
    assert failures(host) == []
    assert bind.dig_tlsa(NAME) == {ta(old)}


def test_dead_verify_server_is_named(
    tmp_path: Path, postfix: PostfixInstance, bind: BindServer, old: Hierarchy
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    host = _host(tmp_path, postfix, bind, bind.key_path, verify=[bind.address, dead])
    make_lineage(host.letsencrypt, MX, old.issue([MX]))
    host.sync()
    observed = [f for f in failures(host) if f["step"] == "observe"]
    assert [f["target"] for f in observed] == [dead], observed
    assert "connection refused" in observed[0]["reason"] or "no answer" in observed[0]["reason"]
    assert observed[0]["since"]


def _host(
    tmp_path: Path,
    postfix: PostfixInstance,
    bind: BindServer,
    key: Path,
    verify: list[str] | None = None,
) -> Host:
    """test_rollover's Host, with dns.verify_servers."""
    host = Host(tmp_path, postfix, bind, key_file=key)
    dns: dict[str, Any] = {
        "mode": "rfc2136",
        "server": bind.address,
        "zone": "example.test",
        "ttl": 2,
        "rollover_wait": 3,
        "tsig_key_file": key,
    }
    if verify is not None:
        dns["verify_servers"] = verify
    host.config = write_config(
        tmp_path / "danesync.toml",
        {
            "certbot": {"config_dir": host.letsencrypt},
            "postfix": {
                "config_dir": postfix.config_dir,
                "deploy_dir": tmp_path / "deploy",
                "probe": f"127.0.0.1:{postfix.port}",
            },
            "dns": dns,
            "state": {"dir": tmp_path / "state"},
            "daemon": {"settle": 0.1},
        },
        [{"lineage": MX, "tlsa": [NAME]}],
    )
    return host
