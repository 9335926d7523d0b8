"""The configuration file (danesync.config) and the sample that ships with it."""

from __future__ import annotations

import json
import math
import re
import tempfile
import tomllib
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from danesync.config import (
    CERTIFICATE_SCHEMA,
    DEFAULT_PATH,
    SCHEMA,
    CertbotConfig,
    CertificateConfig,
    Config,
    DaemonConfig,
    DnsConfig,
    DnsMode,
    Endpoint,
    MonitorConfig,
    PostfixConfig,
    StateConfig,
    build_config,
    config_path,
    load_config,
)
from danesync.errors import ConfigError
from danesync.tlsa import Usage

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "danesync.toml"
PATH = Path("/etc/danesync/danesync.toml")


def parse(text: str) -> Config:
    return build_config(tomllib.loads(text), PATH)


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert caught.value.path == str(PATH)
    return caught.value.problems


# --- a tiny TOML writer, for documents built by hypothesis -------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # "1.0", "1e-05", "inf", "nan" are all TOML
    if isinstance(value, str):
        # JSON's escapes are TOML's; DEL is the one control character JSON leaves raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_document(document: dict[str, Any]) -> str:
    def is_table_array(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    lines = [
        f"{toml_key(k)} = {toml_value(v)}"
        for k, v in document.items()
        if not isinstance(v, dict) and not is_table_array(v)
    ]
    for name, table in document.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_key(name)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    for name, tables in document.items():
        if is_table_array(tables):
            for table in tables:
                lines.append(f"[[{toml_key(name)}]]")
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --- value checks, key by key -------------------------------------------------

CERT = '[dns]\nmode = "off"\n[[certificate]]\nlineage = "mx.example.com"\n'

BAD_VALUES = [
    # (section, key, TOML value, the problem)
    ("certbot", "config_dir", "5", "must be a string, not an integer"),
    ("certbot", "config_dir", '""', "must not be empty"),
    (
        "certbot",
        "config_dir",
        '"etc/letsencrypt"',
        "must be an absolute path, not 'etc/letsencrypt'",
    ),
    ("certbot", "config_dir", '"/etc/\\u0000le"', "must not contain a NUL character"),
    ("postfix", "config_dir", "[]", "must be a string, not a list"),
    (
        "postfix",
        "deploy_dir",
        '"postfix/danesync"',
        "must be an absolute path, not 'postfix/danesync'",
    ),
    ("postfix", "reload", '"yes"', "must be true or false, not a string"),
    ("postfix", "reload", "1", "must be true or false, not an integer"),
    ("postfix", "probe", "25", "must be a string, not an integer"),
    ("postfix", "probe", '"[::1"', "'[::1' has '[' without ']'"),
    ("postfix", "probe", '"[::1]25"', "'[::1]25': expected ':port' after ']'"),
    ("postfix", "probe", '"127.0.0.1:0"', "'127.0.0.1:0': port must be a number from 1 to 65535"),
    (
        "postfix",
        "probe",
        '"localhost:65536"',
        "'localhost:65536': port must be a number from 1 to 65535",
    ),
    (
        "postfix",
        "probe",
        '"localhost:smtp"',
        "'localhost:smtp': port must be a number from 1 to 65535",
    ),
    (
        "postfix",
        "probe",
        '"localhost:\u00b2"',
        "'localhost:\u00b2': port must be a number from 1 to 65535",
    ),
    ("postfix", "probe", '":25"', "':25' has no host"),
    ("postfix", "probe", '"[]:25"', "'[]:25' has no host"),
    ("dns", "mode", '"nsupdate"', 'must be one of "rfc2136", "check", "off", not \'nsupdate\''),
    ("dns", "mode", '"OFF"', 'must be one of "rfc2136", "check", "off", not \'OFF\''),
    ("dns", "mode", "true", "must be a string, not a boolean"),
    ("dns", "server", '["192.0.2.53"]', "must be a string, not a list"),
    (
        "dns",
        "server",
        '"192.0.2.53:dns"',
        "'192.0.2.53:dns': port must be a number from 1 to 65535",
    ),
    ("dns", "port", "0", "must be between 1 and 65535, not 0"),
    ("dns", "port", "65536", "must be between 1 and 65535, not 65536"),
    ("dns", "port", '"53"', "must be an integer, not a string"),
    ("dns", "port", "53.0", "must be an integer, not a number"),
    ("dns", "port", "true", "must be an integer, not a boolean"),
    ("dns", "zone", '"*.example.com"', "'*.example.com' is not a valid DNS name"),
    ("dns", "zone", '"exa mple.com"', "'exa mple.com' is not a valid DNS name"),
    ("dns", "zone", '"example.com\\n"', "'example.com\\n' is not a valid DNS name"),
    ("dns", "zone", '"-example.com"', "'-example.com' is not a valid DNS name"),
    ("dns", "zone", '{ name = "example.com" }', "must be a string, not a table"),
    ("dns", "tsig_key_file", '"tsig.key"', "must be an absolute path, not 'tsig.key'"),
    ("dns", "ttl", "0", "must be between 1 and 604800, not 0"),
    ("dns", "ttl", "604801", "must be between 1 and 604800, not 604801"),
    ("dns", "ttl", "3600.5", "must be an integer, not a number"),
    ("dns", "ttl", '"1h"', "must be an integer, not a string"),
    ("dns", "rollover_wait", "-1", "must be between 0 and 2592000, not -1"),
    ("dns", "rollover_wait", "2592001", "must be between 0 and 2592000, not 2592001"),
    ("dns", "verify_servers", '"192.0.2.53"', "must be a list, not a string"),
    ("dns", "verify_servers", "[]", "must not be empty"),
    ("dns", "verify_servers", '["192.0.2.53", 53]', "item 2: must be a string, not an integer"),
    (
        "dns",
        "verify_servers",
        '["192.0.2.53:x"]',
        "item 1: '192.0.2.53:x': port must be a number from 1 to 65535",
    ),
    ("dns", "verify_servers", '["192.0.2.53", "192.0.2.53:53"]', "has duplicate entries"),
    ("state", "dir", '"var/lib/danesync"', "must be an absolute path, not 'var/lib/danesync'"),
    ("daemon", "reconcile_interval", "0", "must be between 1 and 86400 seconds, not 0"),
    ("daemon", "reconcile_interval", "86401", "must be between 1 and 86400 seconds, not 86401"),
    ("daemon", "reconcile_interval", '"1h"', "must be a number of seconds, not a string"),
    ("daemon", "reconcile_interval", "nan", "must be between 1 and 86400 seconds, not nan"),
    ("daemon", "reconcile_interval", "inf", "must be between 1 and 86400 seconds, not inf"),
    ("daemon", "settle", "-0.1", "must be between 0 and 60 seconds, not -0.1"),
    ("daemon", "settle", "60.5", "must be between 0 and 60 seconds, not 60.5"),
    ("daemon", "settle", "false", "must be a number of seconds, not a boolean"),
    ("daemon", "settle", "1979-05-27", "must be a number of seconds, not date"),
    ("families", "file", '"families.toml"', "must be an absolute path, not 'families.toml'"),
    ("monitor", "textfile", '"danesync.prom"', "must be an absolute path, not 'danesync.prom'"),
    ("monitor", "check_interval", "0", "must be between 1 and 86400 seconds, not 0"),
    ("monitor", "resolver", '"[::1"', "'[::1' has '[' without ']'"),
]

# What danesync says about a name certbot accepts but Postfix's lists cannot hold.
UNSUPPORTED_LINEAGE = (
    ": danesync supports lineage names of ASCII letters, digits, '.', '_' and '-'"
    " (starting with a letter or digit), because the name goes into main.cf's"
    " smtpd_tls_chain_files list and the SNI table as <deploy_dir>/<lineage>.pem, which"
    " Postfix splits on spaces and commas; certbot accepts it, so issue the certificate"
    " again under a supported name (certbot --cert-name NAME)"
)

BAD_CERTIFICATE_VALUES = [
    ("lineage", "5", "must be a string, not an integer"),
    ("lineage", '""', "must not be empty"),
    (
        "lineage",
        '"../etc"',
        "'../etc' is not a lineage name (a directory under live/: no '/' or '..')",
    ),
    ("lineage", '"a/b"', "'a/b' is not a lineage name (a directory under live/: no '/' or '..')"),
    ("lineage", '"mx primary, rsa"', "'mx primary, rsa'" + UNSUPPORTED_LINEAGE),
    ("lineage", '"müller"', "'müller'" + UNSUPPORTED_LINEAGE),
    ("lineage", '"a;b"', "'a;b'" + UNSUPPORTED_LINEAGE),
    ("lineage", '"a..b"', "'a..b' is not a lineage name (a directory under live/: no '/' or '..')"),
    ("lineage", '".hidden"', "'.hidden'" + UNSUPPORTED_LINEAGE),
    ("lineage", '"mx\\n"', "'mx\\n'" + UNSUPPORTED_LINEAGE),
    ("hostnames", '"mx.example.com"', "must be a list, not a string"),
    ("hostnames", "[]", "must not be empty"),
    ("hostnames", '["mx.example.com", "bad host"]', "item 2: 'bad host' is not a valid host name"),
    ("hostnames", '["mx.example.com\\n"]', "item 1: 'mx.example.com\\n' is not a valid host name"),
    ("hostnames", '["mx.*.example.com"]', "item 1: 'mx.*.example.com' is not a valid host name"),
    ("hostnames", '["MX.example.com", "mx.example.com."]', "has duplicate entries"),
    (
        "tlsa",
        '["mx.example.com"]',
        "item 1: 'mx.example.com' is not a TLSA owner name like _25._tcp.mx.example.com",
    ),
    (
        "tlsa",
        '["_25._tcp."]',
        "item 1: '_25._tcp.' is not a TLSA owner name like _25._tcp.mx.example.com",
    ),
    (
        "tlsa",
        '["_25._smtp.mx.example.com"]',
        "item 1: '_25._smtp.mx.example.com' is not a TLSA owner name like _25._tcp.mx.example.com",
    ),
    (
        "tlsa",
        '["_25._tcp.mx.example.com\\n"]',
        "item 1: '_25._tcp.mx.example.com\\n' is not a TLSA owner name like "
        "_25._tcp.mx.example.com",
    ),
    ("usages", '["1 1 1"]', 'item 1: \'1 1 1\' is not supported; use "2 1 1" or "3 1 1"'),
    ("usages", '["2 0 1"]', 'item 1: \'2 0 1\' is not supported; use "2 1 1" or "3 1 1"'),
    ("usages", '["2 1 1", " 2  1 1 "]', "has duplicate entries"),
    ("usages", '"2 1 1"', "must be a list, not a string"),
    ("sni", '"no"', "must be true or false, not a string"),
    ("issuers", "true", "must be a string, not a boolean"),
]


class TestValues:
    """Every key refuses wrong types and values, naming the key."""

    @pytest.mark.parametrize(
        ("section", "key", "value", "problem"),
        BAD_VALUES,
        ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD_VALUES],
    )
    def test_bad_value(self, section: str, key: str, value: str, problem: str) -> None:
        assert problems_of(f"[{section}]\n{key} = {value}\n") == (f"{section}.{key}: {problem}",)

    @pytest.mark.parametrize(
        ("key", "value", "problem"),
        BAD_CERTIFICATE_VALUES,
        ids=[f"{k}={v}" for k, v, _ in BAD_CERTIFICATE_VALUES],
    )
    def test_bad_certificate_value(self, key: str, value: str, problem: str) -> None:
        text = CERT if key != "lineage" else '[dns]\nmode = "off"\n[[certificate]]\n'
        assert problems_of(f"{text}{key} = {value}\n") == (f"certificate[1].{key}: {problem}",)

    def test_every_key_has_a_bad_value_case(self) -> None:
        covered = {f"{s}.{k}" for s, k, _, _ in BAD_VALUES}
        assert covered == {f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
        assert {k for k, _, _ in BAD_CERTIFICATE_VALUES} == set(CERTIFICATE_SCHEMA)

    @pytest.mark.parametrize(
        ("text", "value"),
        [
            ('probe = "127.0.0.1"', Endpoint("127.0.0.1", 25)),
            ('probe = "127.0.0.1:2525"', Endpoint("127.0.0.1", 2525)),
            ('probe = "[::1]"', Endpoint("::1", 25)),
            ('probe = "[2001:db8::25]:587"', Endpoint("2001:db8::25", 587)),
            ('probe = "2001:db8::25"', Endpoint("2001:db8::25", 25)),
            ('probe = "mx.example.com:25"', Endpoint("mx.example.com", 25)),
        ],
    )
    def test_endpoints(self, text: str, value: Endpoint) -> None:
        assert parse(f"[postfix]\n{text}\n").postfix.probe == value

    def test_endpoint_text(self) -> None:
        assert str(Endpoint("::1", 53)) == "[::1]:53"
        assert str(Endpoint("192.0.2.1", 53)) == "192.0.2.1:53"

    def test_names_are_normalised(self) -> None:
        config = parse(
            '[dns]\nmode = "rfc2136"\nserver = "ns1.example.com"\nzone = "Example.COM."\n'
            'tsig_key_file = "/etc/danesync/tsig.key"\n'
            '[[certificate]]\nlineage = "MX.Example.com"\n'
            'tlsa = ["_25._TCP.MX.Example.com", "_465._tcp.mx.example.com."]\n'
            'usages = ["3  1  1", "2 1 1"]\n'
        )
        assert config.dns.zone == "example.com"
        (cert,) = config.certificates
        assert cert.lineage == "MX.Example.com"  # a directory name: case matters
        assert cert.hostnames == ("mx.example.com",)
        assert cert.tlsa == ("_25._tcp.mx.example.com.", "_465._tcp.mx.example.com.")
        assert cert.usages == (Usage.DANE_EE, Usage.DANE_TA)

    def test_integers_where_seconds_are_asked(self) -> None:
        config = parse("[daemon]\nreconcile_interval = 60\nsettle = 0\n")
        assert config.daemon == DaemonConfig(reconcile_interval=60.0, settle=0.0)
        assert isinstance(config.daemon.reconcile_interval, float)


class TestUnknown:
    """Keys and sections the schema does not know are errors."""

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ('[dnss]\nmode = "off"\n', "[dnss]: unknown section"),
            ('[dns]\nzonefile = "x"\n', "dns.zonefile: unknown key"),
            ('[postfix]\nreload_command = "x"\n', "postfix.reload_command: unknown key"),
            ('mode = "off"\n', "[mode]: unknown section"),
            ("[certificates]\n", "[certificates]: unknown section"),
            ("[certbot.live]\n", "certbot.live: unknown key"),
            ("[dns]\nttl = 60\nTTL = 60\n", "dns.TTL: unknown key"),
        ],
    )
    def test_unknown(self, text: str, problem: str) -> None:
        assert problems_of(text) == (problem,)

    def test_unknown_certificate_key(self) -> None:
        text = CERT + '[[certificate]]\nlineage = "b"\nhostname = "b.example.com"\n'
        assert problems_of(text) == ("certificate[2].hostname: unknown key",)

    @pytest.mark.parametrize(
        ("text", "problem"),
        [
            ("dns = 5\n", "dns: must be a table ([dns])"),
            ("dns = [1, 2]\n", "dns: must be a table ([dns])"),
            ("[[dns]]\nttl = 60\n", "dns: must be a table ([dns])"),
            (
                '[certificate]\nlineage = "mx"\n',
                "certificate: must be an array of tables ([[certificate]])",
            ),
            ("certificate = [1]\n", "certificate[1]: must be a table"),
            ("[[certificate]]\n", "certificate[1].lineage: required"),
        ],
    )
    def test_wrong_shapes(self, text: str, problem: str) -> None:
        assert problems_of(text) == (problem,)


class TestAllAtOnce:
    """Every problem in the file is reported, in file order within a section."""

    TEXT = """\
[certbot]
config_dir = "letsencrypt"

[postfix]
reload = "yes"
probe = ":25"
extra = 1

[dns]
mode = "rfc2136"
zone_file = "db.example"
ttl = 0
server = 53

[daemon]
settle = 100

[nonsense]

[[certificate]]
lineage = "mx.example.com"
usages = ["1 1 1"]

[[certificate]]
hostnames = ["a.example.com"]

[[certificate]]
lineage = "ok.example.com"

[[certificate]]
lineage = "ok.example.com"
"""

    def test_the_full_list(self) -> None:
        assert problems_of(self.TEXT) == (
            "[nonsense]: unknown section",
            "certbot.config_dir: must be an absolute path, not 'letsencrypt'",
            "postfix.extra: unknown key",
            "postfix.reload: must be true or false, not a string",
            "postfix.probe: ':25' has no host",
            "dns.zone_file: unknown key",
            "dns.server: must be a string, not an integer",
            "dns.ttl: must be between 1 and 604800, not 0",
            "daemon.settle: must be between 0 and 60 seconds, not 100",
            'certificate[1].usages: item 1: \'1 1 1\' is not supported; use "2 1 1" or "3 1 1"',
            "certificate[2].lineage: required",
            "certificate[4].lineage: 'ok.example.com' is configured twice",
            # dns.server was written (wrongly: reported above); zone and the key were not.
            'dns.zone: required when dns.mode is "rfc2136"',
            'dns.tsig_key_file: required when dns.mode is "rfc2136"',
        )

    def test_message_names_the_file_and_every_key(self, tmp_path: Path) -> None:
        path = tmp_path / "danesync.toml"
        path.write_text(self.TEXT)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        message = str(caught.value)
        assert message.startswith(
            f"{path}: invalid configuration:\n  [nonsense]: unknown section\n"
        )
        assert message.count("\n  ") == 14
        assert caught.value.path == str(path)


class TestDefaults:
    """What an empty file means, and the defaults computed from other keys."""

    def test_empty_file(self) -> None:
        assert parse("") == Config(path=PATH)
        config = parse("")
        assert config.certbot.config_dir == Path("/etc/letsencrypt")
        assert config.dns.mode is DnsMode.CHECK
        assert config.dns.rollover_wait == 7200
        assert config.certificates == ()

    def test_rollover_wait_is_twice_the_ttl(self) -> None:
        assert parse("[dns]\nttl = 300\n").dns.rollover_wait == 600
        assert parse("[dns]\nttl = 300\nrollover_wait = 0\n").dns.rollover_wait == 0
        assert parse("[dns]\nrollover_wait = 60\n").dns == DnsConfig(rollover_wait=60)

    def test_schema_defaults_are_the_dataclass_defaults(self) -> None:
        defaults = {
            "certbot": CertbotConfig(),
            "postfix": PostfixConfig(),
            "dns": DnsConfig(),
            "state": StateConfig(),
            "daemon": DaemonConfig(),
            "monitor": MonitorConfig(),
        }
        for section, keys in SCHEMA.items():
            for key, (_check, default) in keys.items():
                if default is not None:
                    assert getattr(defaults[section], key, default) == default, f"{section}.{key}"

    def test_certificate_defaults(self) -> None:
        (cert,) = parse(CERT).certificates
        assert cert == CertificateConfig(
            lineage="mx.example.com",
            hostnames=("mx.example.com",),
            tlsa=("_25._tcp.mx.example.com.",),
            usages=(Usage.DANE_TA,),
            sni=False,
        )
        assert cert == CertificateConfig.default_for("mx.example.com")
        assert not cert.hostnames_set

    def test_hostnames_set_is_remembered(self) -> None:
        # An SNI certificate serves its leaf's names unless hostnames narrows them.
        (cert,) = parse(CERT + 'hostnames = ["mx.example.com"]\n').certificates
        assert cert.hostnames_set and cert.hostnames == ("mx.example.com",)

    def test_tlsa_follows_the_first_hostname(self) -> None:
        text = CERT + 'hostnames = ["*.example.org", "example.org"]\n'
        (cert,) = parse(text).certificates
        assert cert.tlsa == ("_25._tcp.example.org.",)
        text = CERT + 'hostnames = ["smtp.example.org", "mx.example.org"]\n'
        assert parse(text).certificates[0].tlsa == ("_25._tcp.smtp.example.org.",)

    def test_lineage_that_is_no_host_name(self) -> None:
        text = '[dns]\nmode = "off"\n[[certificate]]\nlineage = "mx.example.com-0001"\n'
        assert parse(text).certificates[0].hostnames == ("mx.example.com-0001",)
        text = '[dns]\nmode = "off"\n[[certificate]]\nlineage = "mail-"\n'
        assert problems_of(text) == (
            "certificate[1].hostnames: default from lineage: 'mail-' is not a valid host name",
        )
        text += 'hostnames = ["mail.example.com"]\n'
        assert parse(text).certificates[0].hostnames == ("mail.example.com",)

    def test_server_port(self) -> None:
        base = '[dns]\nmode = "rfc2136"\nzone = "example.com"\ntsig_key_file = "/k"\n'
        assert parse(base + 'server = "ns"\n').dns.server == Endpoint("ns", 53)
        assert parse(base + 'server = "ns"\nport = 5353\n').dns.server == Endpoint("ns", 5353)
        assert parse(base + 'server = "ns:54"\nport = 5353\n').dns.server == Endpoint("ns", 54)
        config = parse(base + 'server = "ns"\nverify_servers = ["a", "[::1]:5353"]\n')
        assert config.dns.verify_servers == (Endpoint("a", 53), Endpoint("::1", 5353))

    def test_certificate_lookup(self) -> None:
        config = parse(CERT + '[[certificate]]\nlineage = "b.example.com"\nsni = true\n')
        assert config.certificate("b.example.com") == config.certificates[1]
        assert config.certificate("c.example.com") is None


class TestModes:
    """What each dns.mode requires."""

    RFC2136 = (
        '[dns]\nmode = "rfc2136"\nserver = "192.0.2.53"\nzone = "example.com"\n'
        'tsig_key_file = "/etc/danesync/tsig.key"\n'
    )

    def test_rfc2136_needs_server_zone_and_key(self) -> None:
        assert problems_of('[dns]\nmode = "rfc2136"\n') == (
            'dns.server: required when dns.mode is "rfc2136"',
            'dns.zone: required when dns.mode is "rfc2136"',
            'dns.tsig_key_file: required when dns.mode is "rfc2136"',
        )
        config = parse(self.RFC2136)
        assert config.dns.server == Endpoint("192.0.2.53", 53)
        assert config.dns.tsig_key_file == Path("/etc/danesync/tsig.key")

    def test_a_similar_unknown_key_does_not_hide_a_missing_one(self) -> None:
        text = '[dns]\nmode = "rfc2136"\nserver = "ns"\nzone_name = "x"\ntsig_key_file = "/k"\n'
        assert problems_of(text) == (
            "dns.zone_name: unknown key",
            'dns.zone: required when dns.mode is "rfc2136"',
        )

    def test_rfc2136_names_must_be_in_the_zone(self) -> None:
        text = self.RFC2136 + (
            '[[certificate]]\nlineage = "mx.example.com"\n'
            '[[certificate]]\nlineage = "mx.example.org"\n'
            '[[certificate]]\nlineage = "example.com"\ntlsa = ["_25._tcp.example.com"]\n'
            '[[certificate]]\nlineage = "notexample.com"\n'
        )
        assert problems_of(text) == (
            "certificate 'mx.example.org': tlsa: _25._tcp.mx.example.org. is not in dns.zone "
            "example.com",
            "certificate 'notexample.com': tlsa: _25._tcp.notexample.com. is not in dns.zone "
            "example.com",
        )

    def test_check_mode_with_certificates_needs_somewhere_to_look(self) -> None:
        text = '[[certificate]]\nlineage = "mx.example.com"\n'
        assert problems_of(text) == (
            'dns.server: required when dns.mode is "check" and dns.verify_servers is not set: '
            "danesync must know which authoritative servers to ask for the TLSA records",
        )
        assert parse('[dns]\nserver = "192.0.2.53"\n' + text).dns.mode is DnsMode.CHECK
        assert parse('[dns]\nverify_servers = ["192.0.2.53"]\n' + text).certificates

    def test_check_mode_without_certificates_needs_nothing(self) -> None:
        assert parse("").dns.mode is DnsMode.CHECK

    def test_off_needs_nothing(self) -> None:
        config = parse(CERT + '[[certificate]]\nlineage = "mx.example.org"\n')
        assert config.dns.mode is DnsMode.OFF
        assert len(config.certificates) == 2

    def test_records_outside_the_zone_are_fine_when_not_publishing(self) -> None:
        text = '[dns]\nzone = "example.com"\nserver = "ns"\n'
        text += '[[certificate]]\nlineage = "mx.example.org"\n'
        assert parse(text).certificates[0].tlsa == ("_25._tcp.mx.example.org.",)


class TestFiles:
    """Finding and reading the file."""

    def test_precedence(self) -> None:
        assert config_path(None, {}) == DEFAULT_PATH == Path("/etc/danesync/danesync.toml")
        assert config_path(None, {"DANESYNC_CONFIG": "/env.toml"}) == Path("/env.toml")
        assert config_path("/cli.toml", {"DANESYNC_CONFIG": "/env.toml"}) == Path("/cli.toml")
        assert config_path("/cli.toml", {}) == Path("/cli.toml")
        assert config_path(None, {"DANESYNC_CONFIG": ""}) == DEFAULT_PATH

    def test_environment_is_read_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DANESYNC_CONFIG", "/from/env.toml")
        assert config_path(None) == Path("/from/env.toml")

    def test_read_errors(self, tmp_path: Path) -> None:
        cases = {
            tmp_path / "missing.toml": "file not found",
            tmp_path: "cannot read: Is a directory",
        }
        (tmp_path / "latin1.toml").write_bytes(b'[dns]\nzone = "\xe9xample.com"\n')
        cases[tmp_path / "latin1.toml"] = "not UTF-8 text"
        for path, problem in cases.items():
            with pytest.raises(ConfigError) as caught:
                load_config(path)
            assert caught.value.problems == (problem,)
            assert caught.value.path == str(path)

    def test_toml_syntax_error(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.toml"
        path.write_text('[dns]\nmode = "off\n')
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        (problem,) = caught.value.problems
        assert problem.startswith("not valid TOML: ")
        assert "line 2" in problem

    def test_loads_a_real_file(self, tmp_path: Path) -> None:
        path = tmp_path / "danesync.toml"
        path.write_text(CERT)
        config = load_config(path)
        assert config.path == path
        assert config.certificates[0].lineage == "mx.example.com"


# --- the sample configuration ----------------------------------------------------

KEY_LINE = re.compile(r"#([a-z_]+) = (.+)")
# Keys the sample shows with an example value because they have no fixed default.
EXAMPLE_KEYS = {
    "postfix.probe",
    "dns.server",
    "dns.zone",
    "dns.tsig_key_file",
    "dns.verify_servers",
    "monitor.textfile",
    "certificate.lineage",
    "certificate.hostnames",
    "certificate.tlsa",
    "families.file",
    "certificate.issuers",
}


@dataclass(frozen=True)
class Documented:
    section: str
    key: str
    value: Any
    line: int  # index into the sample's lines
    comment: str  # the comment block right above the key

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def sample_lines() -> list[str]:
    return SAMPLE.read_text().splitlines()


def documented_keys() -> list[Documented]:
    found: list[Documented] = []
    section = ""
    comment: list[str] = []
    for number, line in enumerate(sample_lines()):
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header or line == "#[[certificate]]":
            section = header.group(1) if header else "certificate"
            comment = []
        elif match := KEY_LINE.fullmatch(line):
            value = tomllib.loads(f"v = {match.group(2)}")["v"]
            found.append(Documented(section, match.group(1), value, number, " ".join(comment)))
            comment = []
        elif line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        else:
            comment = []
    return found


def uncomment(*line_numbers: int) -> str:
    lines = sample_lines()
    for number in line_numbers:
        assert lines[number].startswith("#")
        lines[number] = lines[number][1:]
    return "\n".join(lines) + "\n"


def plain(value: Any) -> Any:
    """A schema default as TOML would spell it."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


class TestSample:
    """config/danesync.toml: valid as shipped, and true about every default."""

    def test_loads_with_no_certificate(self) -> None:
        config = load_config(SAMPLE)
        assert config.certificates == ()
        assert config == Config(path=SAMPLE)  # everything at its default

    def test_every_key_is_documented_once(self) -> None:
        names = [d.name for d in documented_keys()]
        assert len(names) == len(set(names)), names
        expected = {f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}
        expected |= {f"certificate.{k}" for k in CERTIFICATE_SCHEMA}
        assert set(names) == expected

    @pytest.mark.parametrize("documented", documented_keys(), ids=lambda d: d.name)
    def test_documented_default(self, documented: Documented) -> None:
        schema = SCHEMA.get(documented.section, CERTIFICATE_SCHEMA)
        _check, default = schema[documented.key]
        assert documented.comment, f"{documented.name} has no explanation"
        if documented.name in EXAMPLE_KEYS:
            assert re.search(r"No default|Default:|Required", documented.comment), documented
        elif documented.name == "dns.rollover_wait":
            assert "Default: 2 * ttl" in documented.comment
            ttl = next(d for d in documented_keys() if d.name == "dns.ttl")
            assert documented.value == 2 * ttl.value
        else:
            assert default is not None, f"{documented.name}: say what its default is"
            assert documented.value == plain(default)

    @pytest.mark.parametrize(
        "documented",
        [d for d in documented_keys() if d.section != "certificate"],
        ids=lambda d: d.name,
    )
    def test_uncommenting_a_default_changes_nothing(self, documented: Documented) -> None:
        config = build_config(tomllib.loads(uncomment(documented.line)), SAMPLE)
        if documented.name in EXAMPLE_KEYS:
            assert config != Config(path=SAMPLE)  # an example is a value, and a valid one
        else:
            assert config == Config(path=SAMPLE)

    def test_certificate_example(self) -> None:
        lines = sample_lines()
        start = lines.index("#[[certificate]]")
        block = [start] + [d.line for d in documented_keys() if d.section == "certificate"]
        server = next(d.line for d in documented_keys() if d.name == "dns.server")
        config = build_config(tomllib.loads(uncomment(server, *block)), SAMPLE)
        (cert,) = config.certificates
        # The example spells out the defaults for its lineage (hostnames written out;
        # issuers: an example value).
        assert cert.issuers == "letsencrypt"
        assert replace(cert, issuers=None) == replace(
            CertificateConfig.default_for(cert.lineage), hostnames_set=True
        )
        with pytest.raises(ConfigError) as caught:
            build_config(tomllib.loads(uncomment(*block)), SAMPLE)
        assert caught.value.problems[0].startswith('dns.server: required when dns.mode is "check"')

    def test_every_mode_is_explained(self) -> None:
        mode = next(d for d in documented_keys() if d.name == "dns.mode")
        for choice in DnsMode:
            assert f'"{choice.value}"' in mode.comment

    def test_examples_are_valid(self) -> None:
        """Uncommenting every line at once (as an admin might) gives a valid rfc2136-less file."""
        lines = [d.line for d in documented_keys() if d.section != "certificate"]
        assert build_config(tomllib.loads(uncomment(*lines)), SAMPLE).dns.mode is DnsMode.CHECK


# --- properties ---------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)
paths = st.from_regex(r"/[A-Za-z0-9/._-]{0,30}", fullmatch=True)
ports = st.integers(1, 65535)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
hosts = st.one_of(domains, ipv4, st.just("[2001:db8::53]"))
endpoints = st.tuples(hosts, st.none() | ports).map(
    lambda hp: hp[0] if hp[1] is None else f"{hp[0]}:{hp[1]}"
)
seconds = st.integers(1, 86400) | st.floats(1, 86400)


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document the schema accepts, with any subset of the keys written."""
    zone = draw(domains)
    mode = draw(st.sampled_from([None, "rfc2136", "check", "off"]))
    optional = {
        "certbot": {"config_dir": paths},
        "postfix": {
            "config_dir": paths,
            "deploy_dir": paths,
            "reload": st.booleans(),
            "probe": endpoints,
        },
        "dns": {
            "port": ports,
            "ttl": st.integers(1, 604800),
            "rollover_wait": st.integers(0, 2592000),
            "verify_servers": st.lists(endpoints, min_size=1, max_size=3, unique=True),
        },
        "state": {"dir": paths},
        "daemon": {"reconcile_interval": seconds, "settle": st.floats(0, 60)},
    }
    document: dict[str, Any] = {}
    for section, keys in optional.items():
        if draw(st.booleans()):
            chosen = draw(st.sets(st.sampled_from(sorted(keys))))
            document[section] = {key: draw(keys[key]) for key in sorted(chosen)}
    dns = document.setdefault("dns", {})
    if mode is not None:
        dns["mode"] = mode
    if mode == "rfc2136" or draw(st.booleans()):
        dns["zone"] = zone
        dns["server"] = draw(hosts)
        dns["tsig_key_file"] = draw(paths)
    # Endpoints are compared with their port: "a" and "a:53" are one server.
    if "verify_servers" in dns:
        normal = [
            e if ":" in e.replace("[2001:db8::53]", "") else f"{e}:53"
            for e in dns["verify_servers"]
        ]
        assume(len(set(normal)) == len(normal))
    names = draw(st.lists(labels, max_size=4, unique=True))
    if names and mode in (None, "check") and "server" not in dns and "verify_servers" not in dns:
        dns["server"] = draw(hosts)
    certificates = []
    for name in names:
        table: dict[str, Any] = {"lineage": f"{name}.{zone}"}
        if draw(st.booleans()):
            table["hostnames"] = draw(
                st.lists(
                    labels.map(lambda label: f"{label}.{zone}"), min_size=1, max_size=3, unique=True
                )
            )
        if draw(st.booleans()):
            table["tlsa"] = [f"_{draw(ports)}._tcp.{name}.{zone}"]
        if draw(st.booleans()):
            table["usages"] = draw(
                st.lists(st.sampled_from(["2 1 1", "3 1 1"]), min_size=1, unique=True)
            )
        if draw(st.booleans()):
            table["sni"] = draw(st.booleans())
        certificates.append(table)
    if certificates:
        document["certificate"] = certificates
    return document


toml_scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
all_keys = sorted({k for keys in SCHEMA.values() for k in keys} | set(CERTIFICATE_SCHEMA))
any_key = st.sampled_from(all_keys) | st.text(min_size=1, max_size=12)


class TestProperties:
    """Random documents built from the schema."""

    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
    @given(document=valid_documents())
    def test_valid_documents_load(self, document: dict[str, Any]) -> None:
        text = toml_document(document)
        assert tomllib.loads(text) == document  # the writer is faithful
        config = parse(text)
        dns = document.get("dns", {})
        assert config.dns.mode is DnsMode(dns.get("mode", "check"))
        assert config.dns.ttl == dns.get("ttl", 3600)
        assert config.dns.rollover_wait == dns.get("rollover_wait", 2 * config.dns.ttl)
        assert [c.lineage for c in config.certificates] == [
            c["lineage"] for c in document.get("certificate", [])
        ]
        for cert, table in zip(config.certificates, document.get("certificate", []), strict=True):
            assert cert.hostnames == tuple(table.get("hostnames", [table["lineage"]]))
            assert [u.value for u in cert.usages] == table.get("usages", ["2 1 1"])
            assert cert.sni is table.get("sni", False)
        interval = document.get("daemon", {}).get("reconcile_interval", 3600)
        assert math.isclose(config.daemon.reconcile_interval, interval)

    @settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
    @given(
        document=valid_documents(),
        where=st.sampled_from([*SCHEMA, "certificate", ""]),
        key=st.text(min_size=1, max_size=12),
        value=toml_values,
    )
    def test_any_unknown_key_is_reported(
        self, document: dict[str, Any], where: str, key: str, value: Any
    ) -> None:
        if where == "":
            assume(key not in SCHEMA and key != "certificate")
            document[key] = value
            expected = f"[{key}]: unknown section"
        elif where == "certificate":
            assume(key not in CERTIFICATE_SCHEMA and document.get("certificate"))
            document["certificate"][-1][key] = value
            expected = f"certificate[{len(document['certificate'])}].{key}: unknown key"
        else:
            assume(key not in SCHEMA[where])
            document.setdefault(where, {})[key] = value
            expected = f"{where}.{key}: unknown key"
        with pytest.raises(ConfigError) as caught:
            parse(toml_document(document))
        assert expected in caught.value.problems

    @settings(max_examples=200)
    @given(
        document=st.dictionaries(
            st.sampled_from([*SCHEMA, "certificate"]) | st.text(max_size=8),
            st.dictionaries(any_key, toml_values, max_size=6)
            | st.lists(st.dictionaries(any_key, toml_values, max_size=6), max_size=3)
            | toml_values,
            max_size=6,
        )
    )
    def test_anything_is_a_config_or_a_config_error(self, document: dict[str, Any]) -> None:
        try:
            text = toml_document(document)
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            assume(False)
        try:
            parse(text)
        except ConfigError as error:
            assert error.problems

    @settings(max_examples=200)
    @given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    def test_any_file_is_a_config_or_a_config_error(self, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(suffix=".toml") as file:
            file.write(data)
            file.flush()
            try:
                load_config(Path(file.name))
            except ConfigError as error:
                assert error.problems
