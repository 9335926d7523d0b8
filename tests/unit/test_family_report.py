"""What `check`, `tlsa` and `status` say about issuer families and `3 1 1`."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from danesync.chain import LineageFiles, validate_chain
from danesync.commands import run_check, run_tlsa
from danesync.config import Config, build_config
from danesync.families import build_families, read_shipped_families
from danesync.family_report import (
    build_family_warnings,
    build_name_report,
    explain_dane_ee,
    log_family_warnings,
    read_reuse_key,
)
from danesync.history import NameHistory
from danesync.state import ChainInfo, State, StateStore
from danesync.status import build_status, print_status
from danesync.tlsa import TlsaRecord, Usage, spki_sha256
from tests.harness.certs import NOW, Hierarchy
from tests.harness.families import CaFamily, CaMember, family_toml, make_test_family
from tests.harness.lineage import make_lineage

MX = "mx.example.test"
NAME = f"_25._tcp.{MX}."


@pytest.fixture(scope="module")
def family() -> CaFamily:
    return make_test_family()


def make_config(
    tmp_path: Path, family: CaFamily, issuers: str | None = "testca", usages: tuple[str, ...] = ()
) -> Config:
    certificate: dict[str, object] = {"lineage": MX}
    if issuers:
        certificate["issuers"] = issuers
    if usages:
        certificate["usages"] = list(usages)
    families = {
        **read_shipped_families(),
        **build_families(tomllib.loads(family_toml(family)), "/t/families.toml"),
    }
    document = {
        "certbot": {"config_dir": str(tmp_path / "letsencrypt")},
        "postfix": {"config_dir": str(tmp_path / "no-postfix")},
        "dns": {"mode": "off"},  # check would ask DNS servers: none here
        "state": {"dir": str(tmp_path / "state")},
        "certificate": [certificate],
    }
    return build_config(document, tmp_path / "danesync.toml", families)


def ta(member: CaMember | Hierarchy) -> TlsaRecord:
    hierarchy = member.hierarchy if isinstance(member, CaMember) else member
    return TlsaRecord(NAME, 2, 1, 1, spki_sha256(hierarchy.intermediate))


def served_by(member: CaMember, *published: TlsaRecord) -> State:
    leaf = member.issue([MX])
    files = LineageFiles(MX, 1, leaf.key_pem, leaf.cert_pem, leaf.chain_pem, leaf.fullchain_pem)
    chain = validate_chain(files, (MX,), (NAME,), (Usage.DANE_TA,), NOW)
    state = State()
    state.lineage(MX).deployed = ChainInfo.from_chain(chain)
    if published:
        state.names[NAME] = NameHistory(NAME, owned=frozenset(published))
    return state


class TestNameReport:
    """Per owner name: current, family, retiring."""

    def test_current_family_retiring(self, tmp_path: Path, family: CaFamily) -> None:
        e1, e2, e3 = family.of_type("ecdsa")
        gone = TlsaRecord(NAME, 2, 1, 1, "ab" * 32)
        state = served_by(e2, ta(e1), ta(e2), ta(e3), gone)
        (report,) = build_name_report(make_config(tmp_path, family), state, {}, NOW)
        assert report.name == NAME
        assert report.current == (ta(e2),)
        assert dict(report.family) == {
            ta(e1): "E1 of testca, active",
            ta(e3): "E3 of testca, backup",
        }
        assert report.retiring == (gone,)
        assert report.lines()[0] == f"current   2 1 1 {ta(e2).data}"

    def test_without_issuers_the_other_members_are_retiring(
        self, tmp_path: Path, family: CaFamily
    ) -> None:
        e1, e2, e3 = family.of_type("ecdsa")
        state = served_by(e2, ta(e1), ta(e2), ta(e3))
        (report,) = build_name_report(make_config(tmp_path, family, None), state, {}, NOW)
        assert report.family == ()
        assert set(report.retiring) == {ta(e1), ta(e3)}

    def test_status_shows_names(self, tmp_path: Path, family: CaFamily) -> None:
        e1, e2, e3 = family.of_type("ecdsa")
        state = served_by(e1, ta(e1), ta(e2), ta(e3))
        document = build_status(make_config(tmp_path, family), state, NOW)
        names = document["names"][NAME]
        assert names["current"] == [ta(e1).rdata]
        assert {f["member"] for f in names["family"]} == {
            "E2 of testca, active",
            "E3 of testca, backup",
        }
        json.dumps(document)  # serialisable
        out = io.StringIO()
        print_status(document, out)
        assert "TLSA records per name:" in out.getvalue()
        assert f"family    {ta(e3).rdata}  (E3 of testca, backup)" in out.getvalue()

    def test_status_warns_about_the_cap(self, tmp_path: Path) -> None:
        names = tuple(f"A{i:02}" for i in range(13))
        big = make_test_family("testca", ecdsa=names, rsa=(), backups=names[10:])
        state = served_by(big.member("A00"))
        warnings = build_family_warnings(make_config(tmp_path, big), state, NOW)
        (warning,) = warnings
        assert warning.startswith(f"{MX}: family testca: at most 12 TLSA records per name")
        assert "A12 (ecdsa, backup)" in warning
        with capture_logs() as logs:
            log_family_warnings(make_config(tmp_path, big), state, NOW)
        (event,) = logs
        assert event["event"] == "family.capped" and event["log_level"] == "warning"
        assert event["lineage"] == MX and "A12 (ecdsa, backup)" in event["reason"]


class TestCheckAndTlsa:
    """`danesync check` judges the issuer; `danesync tlsa` prints the family's records too."""

    def test_check_names_the_member(self, tmp_path: Path, family: CaFamily) -> None:
        _, e2, e3 = family.of_type("ecdsa")
        make_lineage(tmp_path / "letsencrypt", MX, e2.issue([MX]))
        out = io.StringIO()
        assert run_check(make_config(tmp_path, family), [], NOW, out=out) == 0
        text = out.getvalue()
        assert "  issuers   E2 (ecdsa, active) of family testca" in text
        assert f"  current   {ta(e2).rdata}" in text
        assert f"  family    {ta(e3).rdata}  (E3 of testca, backup)" in text

    def test_check_says_the_data_is_out_of_date(self, tmp_path: Path, family: CaFamily) -> None:
        stranger = Hierarchy("Stranger")
        make_lineage(tmp_path / "letsencrypt", MX, stranger.issue([MX]))
        out = io.StringIO()
        assert run_check(make_config(tmp_path, family), [], NOW, out=out) == 0
        assert "is not a member of family testca: the family data is out of date" in out.getvalue()

    def test_check_reports_retiring_from_the_state(self, tmp_path: Path, family: CaFamily) -> None:
        e1 = family.member("E1")
        make_lineage(tmp_path / "letsencrypt", MX, e1.issue([MX]))
        gone = TlsaRecord(NAME, 2, 1, 1, "cd" * 32)
        StateStore(tmp_path / "state").save(served_by(e1, gone))
        out = io.StringIO()
        run_check(make_config(tmp_path, family), [], NOW, out=out)
        assert f"  retiring  {gone.rdata}" in out.getvalue()

    def test_tlsa_prints_the_family(self, tmp_path: Path, family: CaFamily) -> None:
        r1, r2 = family.of_type("rsa")
        make_lineage(tmp_path / "letsencrypt", MX, r1.issue([MX], slot=1))
        out = io.StringIO()
        assert run_tlsa(make_config(tmp_path, family), [], NOW, out=out) == 0
        assert out.getvalue().splitlines() == [
            ta(r1).zone_line(3600),
            ta(r2).zone_line(3600),
        ]


class TestDaneEe:
    """`3 1 1` waits at every renewal unless certbot reuses the key."""

    def test_reuse_key_read_from_certbot(self, tmp_path: Path, family: CaFamily) -> None:
        make_lineage(tmp_path, MX, family.member("E1").issue([MX]))
        assert read_reuse_key(tmp_path, MX) is False
        conf = tmp_path / "renewal" / f"{MX}.conf"
        conf.write_text(conf.read_text() + "reuse_key = True\n")
        assert read_reuse_key(tmp_path, MX) is True
        assert read_reuse_key(tmp_path, "nothing") is None

    def test_explanations(self) -> None:
        new_key = " ".join(explain_dane_ee(False, MX, 7200))
        assert "every renewal" in new_key and "7200 s" in new_key
        assert f"certbot reconfigure --cert-name {MX} --reuse-key" in new_key
        assert "deploy without waiting" in " ".join(explain_dane_ee(True, MX, 7200))

    def test_check_explains_3_1_1(self, tmp_path: Path, family: CaFamily) -> None:
        make_lineage(tmp_path / "letsencrypt", MX, family.member("E1").issue([MX]))
        config = make_config(tmp_path, family, None, ("2 1 1", "3 1 1"))
        out = io.StringIO()
        run_check(config, [], NOW, out=out)
        assert "  3 1 1     certbot makes a new key at every renewal unless --reuse-key" in (
            out.getvalue()
        )
