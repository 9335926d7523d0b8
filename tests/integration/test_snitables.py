"""SNI tables in shards against a real Postfix: every name served from its shard, and a
renewal rebuilds only the shard that holds it, served without a reload."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from danesync.actions import files, postfix
from danesync.actions.snitables import build_sni_maps_values, build_sni_shard, write_sni_tables
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = [pytest.mark.integration, pytest.mark.root]

fresh_postfix = postfix_fixture("fresh_postfix", scope="function")
SHARDS = 4
NAMES = [f"mx{i}.example.test" for i in range(12)]


def der(leaf: Leaf) -> bytes:
    return leaf.cert.public_bytes(serialization.Encoding.DER)


def served(instance: PostfixInstance, name: str) -> bytes:
    cert = instance.served_certificate("-servername", name)
    return cert.public_bytes(serialization.Encoding.DER)


def test_shards(tmp_path: Path, fresh_postfix: PostfixInstance) -> None:
    ca = Hierarchy("Shards")
    deploy = tmp_path / "deploy"
    leaves = {name: ca.issue([name]) for name in NAMES}
    entries = {
        name: files.install_chain_file(deploy, name, leaf.key_pem + leaf.fullchain_pem)
        for name, leaf in leaves.items()
    }
    assert len({build_sni_shard(name, SHARDS) for name in NAMES}) > 1
    written = write_sni_tables(deploy, entries, SHARDS)
    assert [p.name for p in written] == ["sni-000", "sni-001", "sni-002", "sni-003"]
    default = ca.issue(["mx.example.test"])
    default_file = files.install_chain_file(
        deploy, "mx.example.test", default.key_pem + default.fullchain_pem
    )
    fresh_postfix.set_parameters(
        {
            "smtpd_tls_chain_files": str(default_file),
            "tls_server_sni_maps": build_sni_maps_values(deploy, SHARDS),
        }
    )
    fresh_postfix.reload()
    for name in (NAMES[0], NAMES[5], NAMES[-1]):
        assert served(fresh_postfix, name) == der(leaves[name])

    renewed_name = NAMES[3]
    shard = build_sni_shard(renewed_name, SHARDS)
    before = {p.name: os.stat(f"{p}.db").st_ino for p in written}
    renewed = ca.issue([renewed_name])
    files.install_chain_file(deploy, renewed_name, renewed.key_pem + renewed.fullchain_pem)
    rewritten = write_sni_tables(deploy, entries, SHARDS, {entries[renewed_name]})
    assert [p.name for p in rewritten] == [f"sni-{shard:03d}"]
    after = {p.name: os.stat(f"{p}.db").st_ino for p in written}
    assert [n for n in before if before[n] != after[n]] == [f"sni-{shard:03d}"]
    # No reload: smtpd restarts by itself when a table it opened was replaced.
    assert served(fresh_postfix, renewed_name) == der(renewed)
    assert served(fresh_postfix, NAMES[0]) == der(leaves[NAMES[0]])


def test_empty_shard_is_written(tmp_path: Path) -> None:
    ca = Hierarchy("Empty shard")
    deploy = tmp_path / "deploy"
    leaf = ca.issue([NAMES[0]])
    path = files.install_chain_file(deploy, NAMES[0], leaf.key_pem + leaf.fullchain_pem)
    written = write_sni_tables(deploy, {NAMES[0]: path}, SHARDS)
    assert len(written) == SHARDS
    for table in written:
        assert Path(f"{table}.db").exists()
    assert postfix.SNI_TABLE_NAME == "sni"
