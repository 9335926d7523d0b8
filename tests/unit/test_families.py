"""Issuer families (danesync.families): the shipped data, the records, the judgement."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from danesync.__main__ import EX_CONFIG, main
from danesync.config import CertificateConfig, build_config, load_config
from danesync.errors import ConfigError
from danesync.families import (
    AUTO,
    MAX_RECORDS_PER_NAME,
    Family,
    Member,
    Role,
    build_families,
    build_family_records,
    plan_family_records,
    read_shipped_families,
)
from danesync.family_report import IssuerVerdict, judge_issuer
from danesync.tlsa import TlsaRecord, Usage, spki_sha256
from tests.harness.certs import NOW
from tests.harness.families import family_toml, make_test_family

DATA = Path(__file__).resolve().parents[1] / "data" / "letsencrypt"
NAME = "_25._tcp.mx.example.test."
OTHER = "_465._tcp.mx.example.test."
DAY = dt.timedelta(days=1)


def load(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((DATA / f"{name}.pem").read_bytes())


def utc(cert: x509.Certificate, attribute: str) -> dt.datetime:
    value: dt.datetime | None = getattr(cert, f"{attribute}_utc", None)
    return value or getattr(cert, attribute).replace(tzinfo=dt.UTC)


def certificate(
    issuers: str | None = "testca",
    usages: tuple[Usage, ...] = (Usage.DANE_TA,),
    tlsa: tuple[str, ...] = (NAME,),
) -> CertificateConfig:
    return CertificateConfig(
        "mx.example.test", ("mx.example.test",), tlsa, usages, False, issuers=issuers
    )


def member(
    name: str,
    key_type: str = "ecdsa",
    role: Role = Role.ACTIVE,
    not_before: dt.datetime = NOW - 300 * DAY,
    not_after: dt.datetime = NOW + 300 * DAY,
) -> Member:
    spki = f"{sum(map(ord, name)):02x}{name.encode().hex()}".ljust(64, "0")[:64]
    return Member(name, key_type, spki, not_before, not_after, role)


def ta(name: str, member_: Member) -> TlsaRecord:
    return TlsaRecord(name, 2, 1, 1, member_.spki_sha256)


E1, E2, E3 = member("E1"), member("E2"), member("E3", role=Role.BACKUP)
R1, R2 = member("R1", "rsa"), member("R2", "rsa", Role.BACKUP)
TESTCA = Family("testca", (E1, E2, E3, R1, R2))
FAMILIES = {"testca": TESTCA}


class TestShippedData:
    """data/families.toml holds exactly what Let's Encrypt's certificates say."""

    @pytest.mark.parametrize(
        ("name", "key_type", "role"),
        [
            ("YE1", "ecdsa", Role.ACTIVE),
            ("YE2", "ecdsa", Role.ACTIVE),
            ("YE3", "ecdsa", Role.BACKUP),
            ("YR1", "rsa", Role.ACTIVE),
            ("YR2", "rsa", Role.ACTIVE),
            ("YR3", "rsa", Role.BACKUP),
        ],
    )
    def test_member_matches_the_real_certificate(
        self, name: str, key_type: str, role: Role
    ) -> None:
        cert = load(f"int-{name.lower()}")
        shipped = read_shipped_families()["letsencrypt"]
        (found,) = [m for m in shipped.members if m.name == name]
        assert found.spki_sha256 == spki_sha256(cert)
        assert found.key_type == key_type
        assert found.role is role
        assert found.not_before == utc(cert, "not_valid_before")
        assert found.not_after == utc(cert, "not_valid_after")
        assert cert.subject.rfc4514_string() == f"CN={name},O=Let's Encrypt,C=US"

    def test_the_family_is_exactly_the_six(self) -> None:
        shipped = read_shipped_families()["letsencrypt"]
        assert sorted(m.name for m in shipped.members) == [
            "YE1",
            "YE2",
            "YE3",
            "YR1",
            "YR2",
            "YR3",
        ]

    @pytest.mark.parametrize("name", ["ye1", "ye2", "ye3"])
    def test_fixtures_are_signed_by_root_ye(self, name: str) -> None:
        """The fixtures are the real certificates, not copies with a typo."""
        root = load("root-ye-by-x2").public_key()
        cert = load(f"int-{name}")
        assert isinstance(root, ec.EllipticCurvePublicKey)
        assert cert.signature_hash_algorithm is not None
        root.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )

    def test_a_letsencrypt_certificate_validates(self) -> None:
        config = build_config(
            {"dns": {"mode": "off"}, "certificate": [{"lineage": "mx", "issuers": "letsencrypt"}]},
            Path("/t.toml"),
        )
        assert config.certificates[0].issuers == "letsencrypt"


class TestFamilyFile:
    """A families file is validated like the config: every problem at once, named."""

    def test_own_family_round_trip(self) -> None:
        family = make_test_family()
        parsed = build_families(tomllib.loads(family_toml(family)), "/etc/f.toml")["testca"]
        assert [(m.name, m.key_type, m.role.value) for m in parsed.members] == [
            ("E1", "ecdsa", "active"),
            ("E2", "ecdsa", "active"),
            ("E3", "ecdsa", "backup"),
            ("R1", "rsa", "active"),
            ("R2", "rsa", "active"),
        ]
        assert parsed.members[0].spki_sha256 == family.members[0].spki

    def test_every_problem_is_reported(self) -> None:
        text = """
[[family]]
name = "auto"
colour = "red"

[[family.member]]
name = "X1"
key = "dsa"
spki_sha256 = "abc"
not_before = 2025-01-01T00:00:00
not_after = 2024-01-01T00:00:00Z
role = "spare"
"""
        with pytest.raises(ConfigError) as caught:
            build_families(tomllib.loads(text), "/etc/danesync/families.toml")
        assert caught.value.path == "/etc/danesync/families.toml"
        problems = "\n".join(caught.value.problems)
        for expected in (
            "family[1].colour: unknown key",
            "family[1].name: must be a lower-case name",
            'family[1].member[1].key: must be "ecdsa" or "rsa"',
            "family[1].member[1].spki_sha256: must be 64 hexadecimal digits",
            'family[1].member[1].role: must be "active" or "backup"',
            "family[1].member[1].not_before: must be a date and time with Z",
        ):
            assert expected in problems, problems

    def test_missing_keys_and_duplicates(self) -> None:
        text = family_toml(make_test_family()) + '\n[[family]]\nname = "testca"\n'
        text += '[[family.member]]\nname = "E1"\n'
        with pytest.raises(ConfigError) as caught:
            build_families(tomllib.loads(text), "f.toml")
        assert "family[2].member[1].key: required" in caught.value.problems

    def test_operator_file_extends_and_overrides(self, tmp_path: Path) -> None:
        family = make_test_family("letsencrypt", ecdsa=("P1",), rsa=(), backups=())
        (tmp_path / "families.toml").write_text(family_toml(family, make_test_family()))
        config_file = tmp_path / "danesync.toml"
        config_file.write_text(
            f'[families]\nfile = "{tmp_path / "families.toml"}"\n[dns]\nmode = "off"\n'
            '[[certificate]]\nlineage = "mx"\nissuers = "testca"\n'
        )
        config = load_config(config_file)
        assert config.families_file == tmp_path / "families.toml"
        assert [m.name for m in config.families["letsencrypt"].members] == ["P1"]
        assert set(config.families) == {"letsencrypt", "testca"}

    def test_broken_operator_file_names_that_file(self, tmp_path: Path) -> None:
        (tmp_path / "families.toml").write_text("[[family]]\nname = 3\n")
        config_file = tmp_path / "danesync.toml"
        config_file.write_text(f'[families]\nfile = "{tmp_path / "families.toml"}"\n')
        with pytest.raises(ConfigError) as caught:
            load_config(config_file)
        assert caught.value.path == str(tmp_path / "families.toml")


class TestConfigKey:
    """`issuers` names a known family or "auto"; anything else exits 78 naming the key."""

    def test_unknown_family_names_the_key(self) -> None:
        document = {
            "dns": {"mode": "off"},
            "certificate": [{"lineage": "a"}, {"lineage": "b", "issuers": "letsencrpyt"}],
        }
        with pytest.raises(ConfigError) as caught:
            build_config(document, Path("/t.toml"))
        (problem,) = caught.value.problems
        assert problem.startswith("certificate[2].issuers: unknown issuer family 'letsencrpyt'")
        assert '"letsencrypt"' in problem

    def test_needs_2_1_1(self) -> None:
        document = {
            "dns": {"mode": "off"},
            "certificate": [{"lineage": "a", "issuers": AUTO, "usages": ["3 1 1"]}],
        }
        with pytest.raises(ConfigError) as caught:
            build_config(document, Path("/t.toml"))
        assert caught.value.problems[0].startswith("certificate[1].issuers: pre-publishes")

    def test_exit_78(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "danesync.toml"
        path.write_text('[dns]\nmode = "off"\n[[certificate]]\nlineage = "a"\nissuers = "x"\n')
        assert main(["check", "-c", str(path)]) == EX_CONFIG
        assert "certificate[1].issuers: unknown issuer family 'x'" in capsys.readouterr().err


class TestFamilyRecords:
    """build_family_records: the 2 1 1 of every member of the key type, within the cap."""

    def test_every_member_of_the_key_type(self) -> None:
        records = build_family_records(certificate(), "ecdsa", FAMILIES, NOW)
        assert records == tuple(sorted(ta(NAME, m) for m in (E1, E2, E3)))
        rsa = build_family_records(certificate(), "rsa", FAMILIES, NOW)
        assert rsa == tuple(sorted(ta(NAME, m) for m in (R1, R2)))

    def test_every_owner_name(self) -> None:
        records = build_family_records(certificate(tlsa=(NAME, OTHER)), "rsa", FAMILIES, NOW)
        assert {r.name for r in records} == {NAME, OTHER} and len(records) == 4

    def test_no_family_no_records(self) -> None:
        assert build_family_records(certificate(None), "ecdsa", FAMILIES, NOW) == ()
        assert build_family_records(certificate(), "ed25519", FAMILIES, NOW) == ()

    def test_expired_dropped_future_published_early(self) -> None:
        old = member("E0", not_before=NOW - 900 * DAY, not_after=NOW - DAY)
        edge = member("E9", not_after=NOW)  # expires now: gone
        soon = member("E4", not_before=NOW + 30 * DAY, not_after=NOW + 900 * DAY)
        families = {"testca": Family("testca", (old, edge, E1, soon))}
        records = build_family_records(certificate(), "ecdsa", families, NOW)
        assert records == tuple(sorted([ta(NAME, E1), ta(NAME, soon)]))

    def test_auto_recognises_the_family_from_the_chain(self) -> None:
        needed = (ta(NAME, E2),)
        plan = plan_family_records(certificate(AUTO), "ecdsa", FAMILIES, NOW, needed)
        assert plan.family == TESTCA
        assert set(plan.records) == {ta(NAME, m) for m in (E1, E2, E3)}

    def test_auto_with_an_unknown_issuer_adds_nothing(self) -> None:
        needed = (TlsaRecord(NAME, 2, 1, 1, "ff" * 32),)
        plan = plan_family_records(certificate(AUTO), "ecdsa", FAMILIES, NOW, needed)
        assert plan.family is None and plan.records == ()

    def test_cap_leaves_out_backups_first_and_warns(self) -> None:
        actives = [member(f"A{i:02}") for i in range(8)]
        backups = [member(f"B{i:02}", role=Role.BACKUP) for i in range(4)]
        families = {"testca": Family("testca", (*backups, *actives))}
        leaf = TlsaRecord(NAME, 3, 1, 1, "ee" * 32)
        needed = (ta(NAME, actives[3]), leaf)  # the served chain: issuer + 3 1 1
        cert = certificate(usages=(Usage.DANE_TA, Usage.DANE_EE))
        plan = plan_family_records(cert, "ecdsa", families, NOW, needed)
        assert len(set(plan.records) | set(needed)) == MAX_RECORDS_PER_NAME
        assert plan.left_out == (backups[3],)  # backups go first, the last one first
        assert set(actives) <= set(plan.members)
        (warning,) = plan.warnings
        assert "at most 12 TLSA records per name" in warning and "B03" in warning

    def test_cap_can_leave_out_actives_but_never_the_chains_own(self) -> None:
        actives = [member(f"A{i:02}") for i in range(14)]
        families = {"testca": Family("testca", tuple(actives))}
        needed = (ta(NAME, actives[13]),)
        plan = plan_family_records(certificate(), "ecdsa", families, NOW, needed)
        assert len(plan.records) == MAX_RECORDS_PER_NAME
        assert ta(NAME, actives[13]) in plan.records
        assert len(plan.left_out) == 2 and plan.warnings


class TestJudgeIssuer:
    """`check`: is the chain's intermediate a known member, or is the data out of date?"""

    def test_member(self) -> None:
        judgement = judge_issuer("testca", E3.spki_sha256, "ecdsa", FAMILIES, NOW)
        assert judgement.verdict is IssuerVerdict.MEMBER
        assert judgement.member == E3
        assert judgement.message == "E3 (ecdsa, backup) of family testca"

    def test_outside_the_family(self) -> None:
        judgement = judge_issuer("testca", "ab" * 32, "ecdsa", FAMILIES, NOW)
        assert judgement.verdict is IssuerVerdict.OUTSIDE
        assert "the family data is out of date" in judgement.message
        assert "normal hold path" in judgement.message

    def test_a_member_of_the_other_key_type_is_outside(self) -> None:
        judgement = judge_issuer("testca", R1.spki_sha256, "ecdsa", FAMILIES, NOW)
        assert judgement.verdict is IssuerVerdict.OUTSIDE

    def test_auto(self) -> None:
        assert (
            judge_issuer(AUTO, R2.spki_sha256, "rsa", FAMILIES, NOW).verdict is IssuerVerdict.MEMBER
        )
        unknown = judge_issuer(AUTO, "ab" * 32, "rsa", FAMILIES, NOW)
        assert unknown.verdict is IssuerVerdict.UNRECOGNISED
        assert "out of date" in unknown.message

    def test_shipped_letsencrypt(self) -> None:
        families = read_shipped_families()
        judgement = judge_issuer(AUTO, spki_sha256(load("int-yr2")), "rsa", families, NOW)
        assert judgement.verdict is IssuerVerdict.MEMBER
        assert judgement.message == "YR2 (rsa, active) of family letsencrypt"
