"""`danesync check` and `danesync tlsa` as a person runs them: a subprocess.

The lineages are real certbot trees; the corpus of bad chains comes from
tests.harness.corpus. The TLSA values are compared with what the openssl
command line computes from the same files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from danesync.__main__ import main
from danesync.commands import run_check, run_tlsa
from danesync.config import load_config
from tests.conftest import require_program
from tests.harness.certs import Hierarchy, Leaf, make_key
from tests.harness.corpus import BadCase, build_corpus, write_lineage_files
from tests.harness.danesync import run_danesync
from tests.harness.lineage import make_lineage, write_version

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "danesync.toml"
NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
CORPUS = build_corpus(NOW)
HOST = "mx.example.test"
TTL = 1800


def danesync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line with this interpreter, so both test lanes test themselves."""
    environment = {k: v for k, v in os.environ.items() if k != "DANESYNC_CONFIG"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "daemon"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "danesync", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout
    return result


def openssl(*args: str, data: bytes) -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout


def openssl_tlsa_hash(pem: bytes) -> str:
    """The first certificate's SPKI SHA-256, the way DANE guides tell people to compute it."""
    public = openssl("x509", "-pubkey", "-noout", data=pem)
    return hashlib.sha256(openssl("pkey", "-pubin", "-outform", "DER", data=public)).hexdigest()


@dataclass(frozen=True)
class Site:
    """A certbot config dir with good and bad lineages, and a config naming them all."""

    config_dir: Path
    config: Path
    good: dict[str, Leaf]


def certificate_table(lineage: str, hostnames: tuple[str, ...], usages: tuple[str, ...]) -> str:
    def quoted(values: tuple[str, ...]) -> str:
        return ", ".join(f'"{v}"' for v in values)

    return (
        f'[[certificate]]\nlineage = "{lineage}"\n'
        f"hostnames = [{quoted(hostnames)}]\nusages = [{quoted(usages)}]\n"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("cli")
    config_dir = base / "letsencrypt"
    hierarchy = Hierarchy("Cli")

    def issue(**kwargs: object) -> Leaf:
        return hierarchy.issue(not_before=NOW - DAY, not_after=NOW + 60 * DAY, **kwargs)  # type: ignore[arg-type]

    good = {
        "mx-ec": issue(),
        "mx-rsa": issue(key=make_key("rsa", slot=1)),
        "mx-ed25519": issue(key_kind="ed25519"),
        "mx-both": issue(hostnames=[HOST, "mx2.example.test"]),
    }
    tables = []
    for name, leaf in good.items():
        make_lineage(config_dir, name, leaf)
        usages = ("2 1 1", "3 1 1") if name == "mx-both" else ("2 1 1",)
        tables.append(certificate_table(name, (HOST,), usages))
    for case in CORPUS:
        write_lineage_files(config_dir, case.name, case.files)
        tables.append(certificate_table(case.name, case.hostnames, case.usages))
    # certbot-level problems: what the links and files are, not what they hold
    make_lineage(config_dir, "link-outside", issue())
    (config_dir / "live" / "link-outside" / "cert.pem").unlink()
    (config_dir / "live" / "link-outside" / "cert.pem").symlink_to("/etc/passwd")
    make_lineage(config_dir, "huge-file", issue())
    with (config_dir / "archive" / "huge-file" / "fullchain1.pem").open("r+b") as file:
        file.truncate(2 * 1024 * 1024)
    make_lineage(config_dir, "mid-renewal", issue())
    write_version(config_dir, "mid-renewal", issue(), 2)
    live = config_dir / "live" / "mid-renewal"
    (live / "previous_cert.pem").symlink_to(os.readlink(live / "cert.pem"))
    # An unconfigured lineage, named only on the command line.
    make_lineage(config_dir, HOST, issue())
    for name in ("link-outside", "huge-file", "mid-renewal"):
        tables.append(certificate_table(name, (HOST,), ("2 1 1",)))

    config = base / "danesync.toml"
    config.write_text(
        f'[certbot]\nconfig_dir = "{config_dir}"\n[dns]\nmode = "off"\nttl = {TTL}\n\n'
        + "\n".join(tables)
    )
    yield Site(config_dir, config, good)


GOOD = ["mx-ec", "mx-rsa", "mx-ed25519", "mx-both"]


def lines_of(text: str) -> list[str]:
    return text.splitlines()


def verdicts_of(text: str) -> list[str]:
    """`check`'s lines about lineages: without the config header and the Postfix audit,
    which depends on the machine's /etc/postfix."""
    lines = lines_of(text)
    assert lines[0].startswith("config ")
    audit = [line for line in lines if line.startswith("postfix ")]
    assert audit, "check always says something about Postfix's TLS settings"
    assert lines[-len(audit) :] == audit  # the audit comes last
    return lines[1 : -len(audit)]


class TestCheckValid:
    """`check` on valid lineages: exit 0 and the facts a person wants to see."""

    def test_all_fields(self, site: Site) -> None:
        result = danesync("check", "-c", str(site.config), *GOOD)
        assert result.returncode == 0, result.stdout + result.stderr
        out = lines_of(result.stdout)
        count = len(CORPUS) + len(GOOD) + 3
        assert out[0] == f"config {site.config}: ok, {count} certificate(s)"
        for name in GOOD:
            leaf = site.good[name]
            index = out.index(f"{name}: valid")
            fields = {}
            for line in out[index + 1 :]:
                if not line.startswith("  "):
                    break
                key, _, value = line.strip().partition(" ")
                fields.setdefault(key, []).append(value.strip())
            serial = openssl("x509", "-serial", "-noout", data=leaf.cert_pem).decode()
            end = openssl("x509", "-enddate", "-noout", data=leaf.cert_pem).decode()
            not_after = dt.datetime.strptime(
                end.strip().removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z"
            )
            assert fields["subject"] == [f"CN={HOST}"]
            assert fields["serial"] == [serial.strip().removeprefix("serial=")]
            assert fields["notAfter"] == [not_after.strftime("%Y-%m-%dT%H:%M:%SZ")]
            assert fields["issuer"] == ["CN=Cli Intermediate"]
            assert fields["key"] == [{"mx-rsa": "rsa", "mx-ed25519": "ed25519"}.get(name, "ecdsa")]
            ta = openssl_tlsa_hash(leaf.chain_pem)
            expected = [f"_25._tcp.{HOST}. {TTL} IN TLSA 2 1 1 {ta}"]
            if name == "mx-both":
                ee = openssl_tlsa_hash(leaf.cert_pem)
                expected.append(f"_25._tcp.{HOST}. {TTL} IN TLSA 3 1 1 {ee}")
            assert fields["tlsa"] == expected

    def test_unconfigured_lineage_gets_defaults(self, site: Site) -> None:
        result = danesync("check", "-c", str(site.config), HOST)
        assert result.returncode == 0, result.stdout
        assert f"{HOST}: valid" in lines_of(result.stdout)
        assert f"  tlsa      _25._tcp.{HOST}. {TTL} IN TLSA 2 1 1" in result.stdout

    def test_the_shipped_sample_config(self) -> None:
        result = danesync("check", "-c", str(SAMPLE))
        assert result.returncode == 0, result.stderr
        assert lines_of(result.stdout)[0] == f"config {SAMPLE}: ok, 0 certificate(s)"
        assert verdicts_of(result.stdout) == [
            "no certificate is configured: add a [[certificate]] table",
        ]


class TestCheckInvalid:
    """Every bad lineage: exit 1 and one line naming the lineage and the reason."""

    @pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
    def test_corpus_case(self, site: Site, case: BadCase) -> None:
        result = danesync("check", "-c", str(site.config), case.name)
        assert result.returncode == 1
        assert verdicts_of(result.stdout) == [f"{case.name}: INVALID: {case.reason}"]

    def test_whole_config(self, site: Site) -> None:
        """Without names, every configured lineage is judged; one bad one makes it exit 1."""
        result = danesync("check", "-c", str(site.config))
        assert result.returncode == 1
        out = lines_of(result.stdout)
        for case in CORPUS:
            assert f"{case.name}: INVALID: {case.reason}" in out
        for name in GOOD:
            assert f"{name}: valid" in out
        archive = site.config_dir / "archive"
        live = site.config_dir / "live"
        assert (
            f"link-outside: INVALID: {live}/link-outside/cert.pem points outside "
            f"{archive}/link-outside: /etc/passwd"
        ) in out
        assert (
            f"huge-file: INVALID: {archive}/huge-file/fullchain1.pem is 2097152 bytes; "
            "the limit is 1 MiB"
        ) in out
        assert ("mid-renewal: PENDING: certbot is updating it (previous_cert.pem present)") in out
        verdicts = [line for line in verdicts_of(result.stdout) if not line.startswith("  ")]
        assert len(verdicts) == len(CORPUS) + len(GOOD) + 3

    def test_missing_lineage(self, site: Site) -> None:
        result = danesync("check", "-c", str(site.config), "nothere.example.test")
        assert result.returncode == 1
        assert verdicts_of(result.stdout) == [
            f"nothere.example.test: INVALID: {site.config_dir}/live/nothere.example.test "
            "does not exist"
        ]

    def test_never_prints_a_key(self, site: Site) -> None:
        result = danesync("check", "-c", str(site.config))
        assert "PRIVATE KEY-----\n" not in result.stdout + result.stderr
        for leaf in site.good.values():
            body = leaf.key_pem.splitlines()[1].decode()
            assert body not in result.stdout + result.stderr


class TestTlsa:
    """`tlsa` prints zone-file lines equal to what openssl computes."""

    def test_dane_ta_and_ee(self, site: Site) -> None:
        require_program("openssl")
        leaf = site.good["mx-both"]
        result = danesync("tlsa", "-c", str(site.config), "mx-both")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert lines_of(result.stdout) == [
            f"_25._tcp.{HOST}. {TTL} IN TLSA 2 1 1 {openssl_tlsa_hash(leaf.chain_pem)}",
            f"_25._tcp.{HOST}. {TTL} IN TLSA 3 1 1 {openssl_tlsa_hash(leaf.cert_pem)}",
        ]

    @pytest.mark.parametrize("name", GOOD)
    def test_dane_ta_per_key_type(self, site: Site, name: str) -> None:
        require_program("openssl")
        result = danesync("tlsa", "-c", str(site.config), name)
        ta = openssl_tlsa_hash(site.good[name].chain_pem)
        assert f"_25._tcp.{HOST}. {TTL} IN TLSA 2 1 1 {ta}" in lines_of(result.stdout)

    def test_shared_records_are_printed_once(self, site: Site) -> None:
        """Four lineages under one intermediate need one 2 1 1 record."""
        result = danesync("tlsa", "-c", str(site.config), "mx-ec", "mx-rsa", "mx-ed25519")
        assert result.returncode == 0
        assert len(lines_of(result.stdout)) == 1

    def test_invalid_lineages(self, site: Site) -> None:
        names = [case.name for case in CORPUS]
        result = danesync("tlsa", "-c", str(site.config), "mx-ec", *names)
        assert result.returncode == 1
        assert len(lines_of(result.stdout)) == 1  # the valid one is still printed
        assert lines_of(result.stderr) == [
            f"danesync: {case.name}: {case.reason}" for case in CORPUS
        ]

    def test_zone_file_syntax_loads_in_bind_tools(self, site: Site, tmp_path: Path) -> None:
        """The output is a valid zone: named-checkzone accepts it."""
        require_program("named-checkzone")
        result = danesync("tlsa", "-c", str(site.config), *GOOD)
        zone = tmp_path / "db.example.test"
        zone.write_text(
            "$ORIGIN example.test.\n$TTL 3600\n"
            "@ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300\n"
            "@ NS ns.example.test.\nns A 192.0.2.53\n" + result.stdout
        )
        check = subprocess.run(
            ["named-checkzone", "example.test", str(zone)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


class TestExitStatuses:
    """Configuration errors exit 78 naming file and keys; usage errors exit 2."""

    def test_bad_config(self, tmp_path: Path) -> None:
        config = tmp_path / "bad.toml"
        config.write_text('[dns]\nmode = "sometimes"\nttl = -5\n[postfix]\nreload = "yes"\n')
        for command in ("check", "tlsa"):
            result = danesync(command, "-c", str(config))
            assert result.returncode == 78
            assert result.stdout == ""
            assert lines_of(result.stderr) == [
                f"danesync: {config}: invalid configuration:",
                "  postfix.reload: must be true or false, not a string",
                '  dns.mode: must be one of "rfc2136", "check", "off", not \'sometimes\'',
                "  dns.ttl: must be between 1 and 604800, not -5",
            ]

    def test_missing_config(self, tmp_path: Path) -> None:
        result = danesync("check", "-c", str(tmp_path / "none.toml"))
        assert result.returncode == 78
        assert result.stderr == (
            f"danesync: {tmp_path / 'none.toml'}: invalid configuration:\n  file not found\n"
        )

    def test_environment_and_option(self, site: Site, tmp_path: Path) -> None:
        bad = tmp_path / "bad.toml"
        bad.write_text("[nonsense]\n")
        from_env = danesync("check", "mx-ec", env={"DANESYNC_CONFIG": str(site.config)})
        assert from_env.returncode == 0
        assert from_env.stdout.startswith(f"config {site.config}: ok")
        env_bad = danesync("check", "mx-ec", env={"DANESYNC_CONFIG": str(bad)})
        assert env_bad.returncode == 78
        assert str(bad) in env_bad.stderr
        assert "[nonsense]: unknown section" in env_bad.stderr
        # -c wins over the environment
        both = danesync("check", "-c", str(site.config), "mx-ec", env={"DANESYNC_CONFIG": str(bad)})
        assert both.returncode == 0

    def test_default_path(self) -> None:
        """Without -c or DANESYNC_CONFIG, check reads /etc/danesync/danesync.toml,
        whether this machine has one (the package installed) or not."""
        default = Path("/etc/danesync/danesync.toml")
        result = danesync("check")
        if not default.exists():
            assert result.returncode == 78
            assert result.stderr.startswith(f"danesync: {default}: invalid configuration:")
            assert "file not found" in result.stderr
        elif result.returncode == 78:
            assert result.stderr.startswith(f"danesync: {default}: invalid configuration:")
        else:
            assert result.stdout.startswith(f"config {default}: ok")

    @pytest.mark.parametrize(
        "args",
        [[], ["frobnicate"], ["check", "--bogus"], ["tlsa", "-c"], ["run", "--log-format", "xml"]],
        ids=["nothing", "unknown-command", "unknown-option", "missing-value", "bad-choice"],
    )
    def test_usage_errors(self, args: list[str]) -> None:
        result = danesync(*args)
        assert result.returncode == 2
        assert "usage: danesync" in result.stderr
        assert result.stdout == ""

    def test_help_and_version(self) -> None:
        result = danesync("--help")
        assert result.returncode == 0
        for command in ("run", "check", "tlsa", "sync", "status"):
            assert command in result.stdout
        version = danesync("--version")
        assert version.returncode == 0
        assert version.stdout.startswith("danesync ")


class TestInProcess:
    """The same commands called in-process (for coverage, and a fixed `now`)."""

    def test_run_check_at_a_given_moment(self, site: Site) -> None:
        config = load_config(site.config)
        out = io.StringIO()
        assert run_check(config, ["mx-ec"], NOW) == 0
        assert run_check(config, ["mx-ec"], NOW, out=out) == 0
        assert "mx-ec: valid" in out.getvalue()
        later = io.StringIO()
        assert run_check(config, ["mx-ec"], NOW + 61 * DAY, out=later) == 1
        assert "mx-ec: INVALID: the leaf expired at" in later.getvalue()

    def test_run_tlsa(self, site: Site) -> None:
        config = load_config(site.config)
        out, err = io.StringIO(), io.StringIO()
        assert run_tlsa(config, ["mx-both", "expired-leaf"], NOW, out=out, err=err) == 1
        assert len(out.getvalue().splitlines()) == 2
        assert err.getvalue().startswith("danesync: expired-leaf: the leaf expired at")

    def test_main(self, site: Site, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["check", "-c", str(site.config), "mx-ec"]) == 0
        assert "mx-ec: valid" in capsys.readouterr().out
        assert main(["tlsa", "-c", str(site.config), "mx-ec"]) == 0
        assert " IN TLSA 2 1 1 " in capsys.readouterr().out
        assert main(["check", "-c", str(site.config / "nothing")]) == 78
        assert main(["nonsense"]) == 2


class TestLineageArguments:
    """Names on the command line are directory names, never paths."""

    @pytest.mark.parametrize("name", ["../x", "a/b", "..", "/etc"])
    def test_path_like_names_are_usage_errors(self, name: str) -> None:
        result = run_danesync("check", "-c", "/nonexistent.toml", name)
        assert result.returncode == 2
        assert "is not a lineage name" in result.stderr
