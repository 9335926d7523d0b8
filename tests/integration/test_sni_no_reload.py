"""An SNI renewal is served without `postfix reload`; the probe still confirms it.

smtpd restarts by itself once the SNI table it opened has been replaced
("table ... has changed -- restarting"), so a pass that changes only SNI
chains (main.cf untouched) skips the reload and its tlsmgr restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.harness.certs import Hierarchy, Leaf
from tests.harness.danesync import json_events, run_danesync, write_config
from tests.harness.lineage import make_lineage, renew
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
MX = "mx.example.test"
SNI = "mail.example.net"


def der(leaf: Leaf) -> bytes:
    return leaf.cert.public_bytes(serialization.Encoding.DER)


def named(events: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == name]


def test_sni_renewal_without_reload(tmp_path: Path, postfix: PostfixInstance) -> None:
    ca = Hierarchy("SNI reload")
    letsencrypt = tmp_path / "letsencrypt"
    config = write_config(
        tmp_path / "danesync.toml",
        {
            "certbot": {"config_dir": letsencrypt},
            "postfix": {
                "config_dir": postfix.config_dir,
                "deploy_dir": tmp_path / "deploy",
                "probe": f"127.0.0.1:{postfix.port}",
            },
            "dns": {"mode": "off"},
            "state": {"dir": tmp_path / "state"},
        },
        [{"lineage": MX}, {"lineage": SNI, "sni": True}],
    )

    def sync() -> list[dict[str, object]]:
        result = run_danesync("sync", "-c", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        return json_events(result.stdout)

    make_lineage(letsencrypt, MX, ca.issue([MX]))
    make_lineage(letsencrypt, SNI, ca.issue([SNI]))
    events = sync()
    assert named(events, "postfix.reloaded")  # main.cf changed: a reload

    renewed = ca.issue([SNI])
    renew(letsencrypt, SNI, renewed)
    events = sync()
    assert [e["lineage"] for e in named(events, "chain.deployed")] == [SNI]
    assert [e["lineage"] for e in named(events, "probe.ok")] == [SNI]
    assert not named(events, "postfix.reloaded")
    served = postfix.served_certificate("-servername", SNI)
    assert served.public_bytes(serialization.Encoding.DER) == der(renewed)

    default = ca.issue([MX])
    renew(letsencrypt, MX, default)
    events = sync()
    assert named(events, "postfix.reloaded")  # the default chain needs one
    served = postfix.served_certificate()
    assert served.public_bytes(serialization.Encoding.DER) == der(default)
