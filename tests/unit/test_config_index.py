"""Config.certificate(): the index built once answers as the linear search did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from danesync.config import CertificateConfig, Config


def _cert(lineage: str, sni: bool = False) -> CertificateConfig:
    return CertificateConfig(lineage, (lineage,), (f"_25._tcp.{lineage}.",), sni=sni)


def test_lookup() -> None:
    certs = tuple(_cert(f"mx{i}.example.test", sni=i > 0) for i in range(1000))
    config = Config(path=Path("/x"), certificates=certs)
    for cert in certs:
        assert config.certificate(cert.lineage) is cert
    assert config.certificate("missing.example.test") is None


def test_first_of_duplicates_wins() -> None:
    first, second = _cert("a.example.test"), _cert("a.example.test", sni=True)
    config = Config(path=Path("/x"), certificates=(first, second))
    assert config.certificate("a.example.test") is first


def test_replace_rebuilds_and_equality_ignores_the_index() -> None:
    config = Config(path=Path("/x"), certificates=(_cert("a.example.test"),))
    replaced = dataclasses.replace(config, certificates=(_cert("b.example.test"),))
    assert replaced.certificate("a.example.test") is None
    assert replaced.certificate("b.example.test") is not None
    assert config == Config(path=Path("/x"), certificates=(_cert("a.example.test"),))
    assert "_by_lineage" not in repr(config)
