"""Which SNI name gets which chain (danesync.sni), without Postfix."""

from __future__ import annotations

from pathlib import Path

import pytest

from danesync.sni import (
    SniCertificate,
    build_concrete_name,
    build_probe_names,
    build_served_names,
    build_sni_entries,
    build_sni_table,
    leaf_dns_names,
)
from tests.harness.certs import Hierarchy

D = Path("/etc/postfix/danesync")


def sni(lineage: str, algorithm: str, *names: str) -> SniCertificate:
    return SniCertificate(lineage, algorithm, names, D / f"{lineage}.pem")


class TestServedNames:
    """An SNI certificate serves every DNS name of its leaf unless hostnames narrows it."""

    def test_leaf_names_when_hostnames_is_not_set(self) -> None:
        leaf = ("a.hosted.test", "b.hosted.test")
        assert build_served_names(("a.hosted.test",), False, leaf) == leaf

    def test_hostnames_narrow_when_set(self) -> None:
        leaf = ("a.hosted.test", "b.hosted.test")
        assert build_served_names(("b.hosted.test",), True, leaf) == ("b.hosted.test",)

    def test_leaf_names_from_the_certificate(self) -> None:
        names = [f"n{i}.hosted.test" for i in range(100)] + ["*.Hosted.TEST", "N1.hosted.test."]
        leaf = Hierarchy("SNI names").issue(names).cert
        found = leaf_dns_names(leaf)
        assert len(found) == 101
        assert found[:2] == ("n0.hosted.test", "n1.hosted.test")
        assert found[-1] == "*.hosted.test"


class TestEntries:
    """The tls_server_sni_maps entries: keys and chain files."""

    def test_every_name_of_a_100_san_certificate_is_a_key(self) -> None:
        names = tuple(f"n{i}.hosted.test" for i in range(100))
        entries = build_sni_entries([sni("hosted", "ecdsa", *names)])
        assert sorted(entries) == sorted(names)
        assert set(entries.values()) == {(D / "hosted.pem",)}

    def test_wildcard_is_keyed_by_its_parent_domain(self) -> None:
        entries = build_sni_entries([sni("wild", "ecdsa", "*.hosted.test", "hosted.test")])
        assert entries == {".hosted.test": (D / "wild.pem",), "hosted.test": (D / "wild.pem",)}

    def test_rsa_and_ecdsa_for_one_name_are_one_entry(self) -> None:
        table = build_sni_table(
            [sni("mx-rsa", "rsa", "mx.hosted.test"), sni("mx-ec", "ecdsa", "mx.hosted.test")]
        )
        assert table.problems == ()
        (entry,) = table.entries
        assert entry.key == "mx.hosted.test"
        assert set(entry.lineages) == {"mx-rsa", "mx-ec"}
        assert set(entry.files) == {D / "mx-rsa.pem", D / "mx-ec.pem"}

    def test_same_algorithm_twice_keeps_the_first_and_says_so(self) -> None:
        table = build_sni_table(
            [sni("first", "rsa", "mx.hosted.test"), sni("second", "rsa", "mx.hosted.test")]
        )
        assert table.files() == {"mx.hosted.test": (D / "first.pem",)}
        (problem,) = table.problems
        assert "first and second both have an rsa key" in problem
        assert "first serves it" in problem

    def test_exact_entry_also_lists_a_covering_wildcard_of_another_algorithm(self) -> None:
        # Postfix stops at the exact key: an RSA-only client asking for
        # a.hosted.test must still find the RSA wildcard there.
        entries = build_sni_entries(
            [sni("wild-rsa", "rsa", "*.hosted.test"), sni("a-ec", "ecdsa", "a.hosted.test")]
        )
        assert set(entries["a.hosted.test"]) == {D / "wild-rsa.pem", D / "a-ec.pem"}
        assert entries[".hosted.test"] == (D / "wild-rsa.pem",)

    def test_exact_entry_wins_over_a_wildcard_of_the_same_algorithm(self) -> None:
        table = build_sni_table(
            [sni("wild", "ecdsa", "*.hosted.test"), sni("a", "ecdsa", "a.hosted.test")]
        )
        assert table.problems == ()
        assert table.files()["a.hosted.test"] == (D / "a.pem",)

    def test_wildcard_covers_one_label_only(self) -> None:
        entries = build_sni_entries(
            [sni("wild-rsa", "rsa", "*.hosted.test"), sni("deep", "ecdsa", "x.y.hosted.test")]
        )
        assert entries["x.y.hosted.test"] == (D / "deep.pem",)

    def test_name_that_cannot_be_a_key_is_reported_and_left_out(self) -> None:
        table = build_sni_table([sni("idn", "ecdsa", "bücher.test", "ok.test")])
        assert list(table.files()) == ["ok.test"]
        assert table.problems and "idn: 'bücher.test' is not an SNI name" in table.problems[0]


class TestProbeNames:
    """The probe asks for a concrete name that the table answers with the lineage's chain."""

    @pytest.mark.parametrize(
        ("name", "concrete"),
        [
            ("*.hosted.test", "danesync-probe.hosted.test"),
            (".hosted.test", "danesync-probe.hosted.test"),
            ("MX.hosted.test.", "mx.hosted.test"),
        ],
    )
    def test_concrete_name(self, name: str, concrete: str) -> None:
        assert build_concrete_name(name) == concrete

    def test_wildcard_only_lineage_is_probed_under_it(self) -> None:
        certificates = [sni("wild", "ecdsa", "*.hosted.test")]
        assert build_probe_names(certificates) == {"wild": "danesync-probe.hosted.test"}

    def test_a_concrete_name_is_preferred(self) -> None:
        certificates = [sni("wild", "ecdsa", "*.hosted.test", "a.hosted.test")]
        assert build_probe_names(certificates) == {"wild": "a.hosted.test"}

    def test_names_another_lineage_took_are_not_probed(self) -> None:
        certificates = [
            sni("first", "rsa", "mx.hosted.test"),
            sni("second", "rsa", "mx.hosted.test", "other.hosted.test"),
            sni("third", "rsa", "mx.hosted.test"),
        ]
        assert build_probe_names(certificates) == {
            "first": "mx.hosted.test",
            "second": "other.hosted.test",
        }

    def test_rsa_and_ecdsa_lineages_share_the_name(self) -> None:
        certificates = [
            sni("mx-rsa", "rsa", "mx.hosted.test"),
            sni("mx-ec", "ecdsa", "mx.hosted.test"),
        ]
        assert build_probe_names(certificates) == {
            "mx-rsa": "mx.hosted.test",
            "mx-ec": "mx.hosted.test",
        }
