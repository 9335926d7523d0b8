"""Chain files hold RSA and EC keys in their own format, which a real Postfix
loads for the default chain and for SNI names; files an earlier danesync
wrote (keys in PKCS#8) are kept as they are, with no deploy and no reload.

OpenSSL 3.0 (Debian 12) decodes a PKCS#8 key through its generic decoders,
about 0.6 ms more of smtpd's CPU at every SNI handshake (chain.key_pem).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.harness.certs import Hierarchy, Leaf, make_key
from tests.harness.certs import key_pem as pkcs8_pem
from tests.harness.danesync import json_events, run_danesync, write_config
from tests.harness.lineage import make_lineage
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

postfix = postfix_fixture()
MX = "mx.example.test"
RSA_SNI = "mail.example.net"
EC384_SNI = "mail.example.org"
LABELS = {MX: b"EC PRIVATE KEY", RSA_SNI: b"RSA PRIVATE KEY", EC384_SNI: b"EC PRIVATE KEY"}


def der(leaf: Leaf) -> bytes:
    return leaf.cert.public_bytes(serialization.Encoding.DER)


def named(events: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("event") == name]


def served(postfix: PostfixInstance, name: str) -> bytes:
    options = () if name == MX else ("-servername", name)
    return postfix.served_certificate(*options).public_bytes(serialization.Encoding.DER)


def test_own_format_served_and_earlier_files_kept(tmp_path: Path, postfix: PostfixInstance) -> None:
    ca = Hierarchy("Key format")
    letsencrypt = tmp_path / "letsencrypt"
    deploy = tmp_path / "deploy"
    config = write_config(
        tmp_path / "danesync.toml",
        {
            "certbot": {"config_dir": letsencrypt},
            "postfix": {
                "config_dir": postfix.config_dir,
                "deploy_dir": deploy,
                "probe": f"127.0.0.1:{postfix.port}",
            },
            "dns": {"mode": "off"},
            "state": {"dir": tmp_path / "state"},
        },
        [{"lineage": MX}, {"lineage": RSA_SNI, "sni": True}, {"lineage": EC384_SNI, "sni": True}],
    )

    def sync() -> list[dict[str, object]]:
        result = run_danesync("sync", "-c", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        return json_events(result.stdout)

    leaves = {
        MX: ca.issue([MX], key=make_key("ec256")),
        RSA_SNI: ca.issue([RSA_SNI], key=make_key("rsa")),
        EC384_SNI: ca.issue([EC384_SNI], key=make_key("ec384")),
    }
    for name, leaf in leaves.items():
        make_lineage(letsencrypt, name, leaf)
    events = sync()
    assert sorted(e["lineage"] for e in named(events, "chain.deployed")) == sorted(leaves)
    for name, leaf in leaves.items():
        assert (deploy / f"{name}.pem").read_bytes().startswith(b"-----BEGIN " + LABELS[name])
        assert served(postfix, name) == der(leaf)  # Postfix loaded the key

    # As an earlier danesync left the host: keys in PKCS#8, the SNI table built
    # from those files, Postfix reloaded; its read cache is not taken.
    earlier: dict[str, bytes] = {}
    for name, leaf in leaves.items():
        path = deploy / f"{name}.pem"
        rest = path.read_bytes().split(b"-----END " + LABELS[name] + b"-----\n", 1)[1]
        earlier[name] = pkcs8_pem(leaf.key) + rest
        path.write_bytes(earlier[name])
    maps = postfix.postconf("-h", "tls_server_sni_maps")
    for table in re.findall(r"hash:\S+?(?=,|\s|$)", maps):
        subprocess.run(["postmap", "-c", str(postfix.config_dir), "-F", table], check=True)
    postfix.reload()
    shutil.rmtree(tmp_path / "state" / "readcache")  # an earlier schema's is dropped whole

    events = sync()
    assert not named(events, "chain.deployed")
    assert not named(events, "postfix.reloaded")
    for name, leaf in leaves.items():
        assert (deploy / f"{name}.pem").read_bytes() == earlier[name]
        assert served(postfix, name) == der(leaf)
