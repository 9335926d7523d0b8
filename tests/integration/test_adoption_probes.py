"""Adoption (no state yet): what Postfix serves, asked once per chain it can serve.

Without `tls_server_sni_maps` Postfix ignores the SNI name a client sends
and serves every name its default chain (checked here against a real
Postfix, name by name, wildcard included), so one probe tells what every
SNI lineage is served. With an SNI map in effect (the operator's own, or
danesync's from a state that was lost) each name may be served its own
chain, and each is asked by name as before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization

from danesync.actions import files, probe
from danesync.actions.postfix import (
    build_chain_files_value,
    build_sni_maps_value,
    reload_postfix,
    write_parameters,
    write_sni_table,
)
from danesync.adapters import RealPostfix
from danesync.config import CertificateConfig, Config, DnsMode
from danesync.observe import observe_served
from danesync.ports import Offer
from danesync.runtime import Runtime
from danesync.state import ChainInfo
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = pytest.mark.integration

postfix_server = postfix_fixture("postfix_server")
DEFAULT = "mx.example.test"
SNI = [f"mx{i}.example.net" for i in range(6)]
WILDCARD = "*.example.org"


def _issue(hierarchy: Hierarchy, names: list[str]) -> Leaf:
    now = dt.datetime.now(dt.UTC)
    return hierarchy.issue(
        names, not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=89)
    )


def _fingerprint(leaf: Leaf) -> str:
    return hashlib.sha256(leaf.cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture(scope="module")
def default_leaf(postfix_server: PostfixInstance) -> Iterator[Leaf]:
    """Postfix serves a default chain and has no tls_server_sni_maps."""
    leaf = _issue(Hierarchy("Adoption"), [DEFAULT])
    path = files.install_chain_file(
        postfix_server.deploy_dir, "mx", leaf.key_pem + leaf.fullchain_pem
    )
    write_parameters(
        postfix_server.config_dir,
        {"smtpd_tls_chain_files": build_chain_files_value([path]), "tls_server_sni_maps": None},
    )
    reload_postfix(postfix_server.config_dir)
    assert probe.wait_for_leaf(
        postfix_server.host,
        postfix_server.port,
        leaf.cert.public_bytes(serialization.Encoding.DER),
    )
    yield leaf


class _Counting(RealPostfix):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.asked: list[str | None] = []

    def probe_served(self, servername: str | None) -> str | None:
        self.asked.append(servername)
        return super().probe_served(servername)


def _runtime(server: PostfixInstance) -> tuple[Runtime, _Counting]:
    postfix_section = SimpleNamespace(
        deploy_dir=server.deploy_dir,
        config_dir=server.config_dir,
        probe=SimpleNamespace(host=server.host, port=server.port),
    )
    config = cast(
        Config,
        SimpleNamespace(
            postfix=postfix_section, certificates=(), dns=SimpleNamespace(mode=DnsMode.RFC2136)
        ),
    )
    port = _Counting(config)
    rt = SimpleNamespace(
        config=config,
        postfix=port,
        state=SimpleNamespace(lineages={}),
        progress=lambda *args: None,
    )
    return cast(Runtime, rt), port


def _certificates() -> list[CertificateConfig]:
    certificates: list[Any] = [SimpleNamespace(lineage="mx", sni=False, hostnames=(DEFAULT,))]
    for name in [*SNI, WILDCARD]:
        certificates.append(SimpleNamespace(lineage=name, sni=True, hostnames=(name,)))
    return cast(list[CertificateConfig], certificates)


def _offers(certificates: list[CertificateConfig]) -> dict[str, object]:
    return {c.lineage: Offer(cast(ChainInfo, None), b"") for c in certificates}


def test_without_sni_maps_every_name_gets_the_default_chain(
    postfix_server: PostfixInstance, default_leaf: Leaf
) -> None:
    """The fact the shortcut rests on, asked of Postfix name by name."""
    served = probe.probe_starttls(postfix_server.host, postfix_server.port)
    for name in [*SNI, WILDCARD, "unknown.example.com"]:
        by_name = probe.probe_starttls(postfix_server.host, postfix_server.port, name)
        assert by_name == served, name


def test_without_sni_maps_one_probe_answers_for_every_lineage(
    postfix_server: PostfixInstance, default_leaf: Leaf
) -> None:
    rt, port = _runtime(postfix_server)
    certificates = _certificates()
    served = observe_served(rt, certificates, _offers(certificates))
    assert served == {c.lineage: _fingerprint(default_leaf) for c in certificates}
    assert port.asked == [None]


def test_with_the_operators_sni_map_each_name_is_asked(
    postfix_server: PostfixInstance, default_leaf: Leaf
) -> None:
    own = _issue(Hierarchy("Operator"), [SNI[2]])
    table_dir = postfix_server.root / "operator-sni"
    path = files.install_chain_file(table_dir, "own", own.key_pem + own.fullchain_pem)
    table = write_sni_table(
        table_dir, {SNI[2]: path}, config_dir=postfix_server.config_dir, name="own"
    )
    write_parameters(
        postfix_server.config_dir, {"tls_server_sni_maps": build_sni_maps_value(table)}
    )
    reload_postfix(postfix_server.config_dir)
    try:
        assert probe.wait_for_leaf(
            postfix_server.host,
            postfix_server.port,
            own.cert.public_bytes(serialization.Encoding.DER),
            SNI[2],
        )
        rt, port = _runtime(postfix_server)
        certificates = _certificates()
        served = observe_served(rt, certificates, _offers(certificates))
        expected = {c.lineage: _fingerprint(default_leaf) for c in certificates}
        expected[SNI[2]] = _fingerprint(own)
        assert served == expected
        assert sorted(port.asked, key=str) == sorted([None, *SNI, WILDCARD], key=str)
    finally:
        write_parameters(postfix_server.config_dir, {"tls_server_sni_maps": None})
        reload_postfix(postfix_server.config_dir)
