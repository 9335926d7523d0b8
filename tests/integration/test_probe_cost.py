"""What one STARTTLS probe costs, counted (not timed) against a real Postfix.

A cold start confirms every new leaf with its own handshake (10,000 at
10,000 lineages), so each probe must be cheap: one client SSLContext per key
algorithm for the life of the process (no context built and no default
certificates loaded per probe), the endpoint's name resolved once per batch,
and the shortest SMTP dialogue Postfix still counts as a clean session
(EHLO, STARTTLS, QUIT). Every probe is still a full handshake that returns
the leaf Postfix serves at that moment: a reused context never resumes a
session (which would send no certificate).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import socket
import ssl
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization

from danesync.actions import files, probe
from danesync.actions.postfix import (
    build_chain_files_value,
    read_parameters,
    reload_postfix,
    write_parameter_changes,
    write_parameters,
)
from danesync.adapters import RealPostfix
from danesync.config import Config
from danesync.ports import ProbeRequest
from tests.harness.certs import Hierarchy, Leaf
from tests.harness.postfix import PostfixInstance, postfix_fixture

pytestmark = pytest.mark.integration

postfix_server = postfix_fixture("postfix_server")
MX = "mx.example.test"


def _issue(hierarchy: Hierarchy) -> Leaf:
    now = dt.datetime.now(dt.UTC)
    return hierarchy.issue(
        [MX], not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=89)
    )


def _der(leaf: Leaf) -> bytes:
    return leaf.cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def served(postfix_server: PostfixInstance) -> bytes:
    """The default chain Postfix serves (ECDSA), as DER."""
    leaf = _issue(Hierarchy("Probe cost"))
    path = files.install_chain_file(
        postfix_server.deploy_dir, "mx", leaf.key_pem + leaf.fullchain_pem
    )
    write_parameter_changes(
        postfix_server.config_dir, {"smtpd_tls_chain_files": build_chain_files_value([path])}
    )
    reload_postfix(postfix_server.config_dir)
    der = _der(leaf)
    assert probe.wait_for_leaf(postfix_server.host, postfix_server.port, der)
    return der


def _adapter(server: PostfixInstance, host: str) -> RealPostfix:
    """RealPostfix with only what confirm_served reads of the configuration."""
    postfix = SimpleNamespace(
        deploy_dir=server.deploy_dir,
        config_dir=server.config_dir,
        probe=SimpleNamespace(host=host, port=server.port),
    )
    return RealPostfix(cast(Config, SimpleNamespace(postfix=postfix, certificates=())))


def test_one_client_context_per_key_algorithm(
    postfix_server: PostfixInstance, served: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []
    original = ssl.SSLContext.__new__

    def counting(cls: type[ssl.SSLContext], *args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "__new__", staticmethod(counting))
    for key_algorithm in (None, "ecdsa") * 4:
        der = probe.probe_starttls(
            postfix_server.host, postfix_server.port, key_algorithm=key_algorithm
        )
        assert der == served  # every probe a full handshake with the served leaf
    assert len(made) <= 2, f"{len(made)} client contexts for 8 probes"


def test_the_endpoint_name_is_resolved_once_a_batch(
    postfix_server: PostfixInstance, served: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`localhost` (Debian's /etc/hosts: ::1 first, where nothing listens)."""
    asked: list[object] = []
    real = socket.getaddrinfo

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "localhost":
            asked.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    fingerprint = hashlib.sha256(served).hexdigest()
    requests = [ProbeRequest(f"l{i}", fingerprint, None, "ecdsa") for i in range(8)]
    outcomes = _adapter(postfix_server, "localhost").confirm_served(requests)
    assert outcomes == {f"l{i}": True for i in range(8)}
    assert len(asked) == 1, f"{len(asked)} lookups of localhost for 8 probes"


def test_a_probe_is_a_clean_minimal_session(postfix_server: PostfixInstance, served: bytes) -> None:
    """Postfix logs each probe as EHLO, STARTTLS, QUIT and nothing lost."""
    mark = len(postfix_server.maillog)
    for _ in range(3):
        assert probe.probe_starttls(postfix_server.host, postfix_server.port) == served
    log = _wait_for_disconnects(postfix_server, mark, 3)
    sessions = re.findall(r"disconnect from \S+ (.*)", log)
    # An earlier probe's line may land after the mark: every session counts.
    assert len(sessions) >= 3, log
    assert set(sessions) == {"ehlo=1 starttls=1 quit=1 commands=3"}, log
    assert "lost connection" not in log


def _wait_for_disconnects(server: PostfixInstance, mark: int, count: int) -> str:
    end = time.monotonic() + 10
    while True:
        log = server.maillog[mark:]
        if log.count("disconnect from") >= count or time.monotonic() > end:
            return log
        time.sleep(0.1)


def test_the_context_is_kept_per_key_algorithm() -> None:
    """One object for the same ask; never verifying (the leaf is compared instead)."""
    assert probe.client_context("ecdsa") is probe.client_context("ecdsa")
    assert probe.client_context(None) is not probe.client_context("ecdsa")
    assert probe.client_context("ecdsa").verify_mode is ssl.CERT_NONE


class TestMainCfSettled:
    """Every Postfix program waits while main.cf is younger than about 2 s
    (mtime in whole seconds; 1.5-2 s for a reload right after `postconf -e`).
    danesync's own edits are complete when postconf returns (it writes a
    temporary file and renames it), so they leave main.cf looking settled."""

    def test_an_edit_leaves_main_cf_settled(self, postfix_server: PostfixInstance) -> None:
        main_cf = postfix_server.config_dir / "main.cf"
        before = main_cf.stat()
        previous = write_parameter_changes(
            postfix_server.config_dir, {"smtpd_tls_loglevel": "0", "smtpd_banner": None}
        )
        after = main_cf.stat()
        try:
            assert previous == {"smtpd_tls_loglevel": "1", "smtpd_banner": _banner()}
            # Postfix's test (dict_load_file_xt): settled once mtime < time() - 1.
            assert int(after.st_mtime) < int(time.time()) - 1
            assert after.st_mtime_ns != before.st_mtime_ns  # still seen as changed
            values = read_parameters(postfix_server.config_dir, ["smtpd_tls_loglevel"])
            assert values == {"smtpd_tls_loglevel": "0"}
            assert "smtpd_banner =" not in main_cf.read_text()
        finally:
            write_parameters(postfix_server.config_dir, previous)
        assert int(main_cf.stat().st_mtime) < int(time.time()) - 1
        reload_postfix(postfix_server.config_dir)


def _banner() -> str:
    return "$myhostname ESMTP danesync test instance"
