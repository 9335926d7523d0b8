"""BIND key files: parsing, permissions, and use with dnspython."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import dns.message
import dns.name
import dns.tsig
import dns.update
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from danesync import tsigkey, tsigkeyfile
from danesync.errors import TsigKeyError
from danesync.tsigkey import SUPPORTED_ALGORITHMS, TsigKey, build_tsig_keys, read_tsig_key
from tests.conftest import require_program

SECRET = base64.b64decode("AO35Rd0DrbreUG19sDGExFY07BbUwHUx7gruQSXc5VQ=")
KEYGEN_OUTPUT = """\
key "danesync" {
\talgorithm hmac-sha256;
\tsecret "AO35Rd0DrbreUG19sDGExFY07BbUwHUx7gruQSXc5VQ=";
};
"""


def _key_text(name: str, algorithm: str, secret: bytes) -> str:
    encoded = base64.b64encode(secret).decode()
    return f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{encoded}";\n}};\n'


class TestParse:
    """build_tsig_keys reads what tsig-keygen writes, and what people edit."""

    def test_tsig_keygen_output(self) -> None:
        assert build_tsig_keys(KEYGEN_OUTPUT, "k") == [TsigKey("danesync", "hmac-sha256", SECRET)]

    @pytest.mark.parametrize("algorithm", SUPPORTED_ALGORITHMS)
    def test_each_algorithm(self, algorithm: str) -> None:
        [key] = build_tsig_keys(_key_text("k", algorithm, b"\x01" * 32), "k")
        assert key.algorithm == algorithm

    def test_algorithm_case_and_trailing_dot(self) -> None:
        [key] = build_tsig_keys(_key_text("k", "HMAC-SHA512.", b"x" * 64), "k")
        assert key.algorithm == "hmac-sha512"

    def test_several_keys_in_file_order(self) -> None:
        text = _key_text("one", "hmac-sha256", b"1" * 32) + _key_text(
            "two.example", "hmac-sha384", b"2" * 48
        )
        keys = build_tsig_keys(text, "k")
        assert [(k.name, k.algorithm, k.secret) for k in keys] == [
            ("one", "hmac-sha256", b"1" * 32),
            ("two.example", "hmac-sha384", b"2" * 48),
        ]

    def test_comments_of_every_kind(self) -> None:
        text = """\
# made by tsig-keygen
// for danesync
/* a block
   comment over lines */ key /* inline */ "danesync" { # trailing
    algorithm hmac-sha256; // trailing
    /* before */ secret "AO35Rd0DrbreUG19sDGExFY07BbUwHUx7gruQSXc5VQ=" /* after */ ;
};
// key "commented" { algorithm hmac-sha256; secret "AAAA"; };
"""
        assert build_tsig_keys(text, "k") == [TsigKey("danesync", "hmac-sha256", SECRET)]

    def test_comment_markers_inside_secret_are_data(self) -> None:
        # Base64 uses '/', so "//" occurs inside secrets; '#' may occur in names.
        secret = base64.b64decode("AB//CD//" * 4)
        text = _key_text("k#1", "hmac-sha256", secret)
        assert "//" in text
        [key] = build_tsig_keys(text, "k")
        assert (key.name, key.secret) == ("k#1", secret)

    def test_unquoted_name_and_order_of_clauses(self) -> None:
        text = 'key danesync { secret "AO35Rd0DrbreUG19sDGExFY07BbUwHUx7gruQSXc5VQ="; '
        text += "algorithm hmac-sha256; };"
        assert build_tsig_keys(text, "k") == [TsigKey("danesync", "hmac-sha256", SECRET)]

    def test_secret_split_by_whitespace(self) -> None:
        text = 'key k { algorithm hmac-sha256; secret "AO35Rd0DrbreUG19sDGEx\n'
        text += '  FY07BbUwHUx7gruQSXc5VQ="; };'
        assert build_tsig_keys(text, "k")[0].secret == SECRET

    def test_real_tsig_keygen(self, tmp_path: Path) -> None:
        if shutil.which("tsig-keygen") is None:
            pytest.skip("tsig-keygen is not installed (make deps installs it)")
        for algorithm in ("hmac-sha256", "hmac-sha384", "hmac-sha512"):
            out = subprocess.run(
                ["tsig-keygen", "-a", algorithm, "name.example"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            [key] = build_tsig_keys(out, "k")
            assert (key.name, key.algorithm) == ("name.example", algorithm)
            assert len(key.secret) == {"hmac-sha256": 32, "hmac-sha384": 48}.get(algorithm, 64)


class TestMalformed:
    """Every malformed file is refused with a reason naming file and line."""

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("", "no 'key' statement found"),
            ("# only a comment\n", "no 'key' statement found"),
            ('options { directory "/tmp"; };', "expected a 'key' statement, found 'options'"),
            ('key "k" { algorithm hmac-sha256; };', "key 'k' has no 'secret'"),
            ('key "k" { secret "AAAA"; };', "key 'k' has no 'algorithm'"),
            ('key "k" { algorithm hmac-sha256; secret "AAAA" };', "expected ';' after the secret"),
            ('key "k" { algorithm hmac-sha256; secret "AAAA"; }', "expected ';' after the '}'"),
            ('key "k" { algorithm hmac-sha256; secret "AAAA";', "missing '}'"),
            ('key "k" { algorithm hmac-sha256 secret "AAAA"; };', "expected ';' after the algo"),
            ('key "k" { algorithm hmac-sha256; secret "A!AA"; };', "not valid base64"),
            ('key "k" { algorithm hmac-sha256; secret "AAA"; };', "not valid base64"),
            ('key "k" { algorithm hmac-sha256; secret ""; };', "the secret is empty"),
            ('key "k" { algorithm hmac-md5; secret "AAAA"; };', "hmac-md5 is not accepted"),
            ('key "k" { algorithm hmac-sha256-128; secret "AAAA"; };', "unknown algorithm"),
            ('key "k" { algorithm rot13; secret "AAAA"; };', "use one of hmac-sha1"),
            ('key "k" { algorithm hmac-sha256; algorithm hmac-sha256; };', "given twice"),
            ('key "k" { secret "AAAA"; secret "AAAA"; };', "'secret' given twice"),
            ('key "k" { algorithm hmac-sha256; keyid 1; };', "expected 'algorithm' or 'secret'"),
            ('key "" { algorithm hmac-sha256; secret "AAAA"; };', "the key name is empty"),
            ('key { algorithm hmac-sha256; secret "AAAA"; };', "expected a key name"),
            ('key "a..b" { algorithm hmac-sha256; secret "AAAA"; };', "not a domain name"),
            ('key "k" { algorithm hmac-sha256; secret "AAAA; };', "never closed"),
            ('/* key "k" { algorithm hmac-sha256; secret "AAAA"; };', "never closed"),
        ],
    )
    def test_refused(self, text: str, reason: str) -> None:
        with pytest.raises(TsigKeyError) as info:
            build_tsig_keys(text, "/etc/danesync/tsig.key")
        assert info.value.path == "/etc/danesync/tsig.key"
        assert reason in info.value.reason
        assert str(info.value).startswith("/etc/danesync/tsig.key: ")

    def test_line_number_points_at_the_problem(self) -> None:
        text = KEYGEN_OUTPUT + '\n# second\nkey "b" {\n algorithm hmac-sha999;\n};\n'
        with pytest.raises(TsigKeyError, match=r"line 8: key 'b': unknown algorithm"):
            build_tsig_keys(text, "k")

    def test_duplicate_key_names(self) -> None:
        with pytest.raises(TsigKeyError, match=r"key 'Danesync\.' is defined twice"):
            build_tsig_keys(KEYGEN_OUTPUT + KEYGEN_OUTPUT.replace('"danesync"', "Danesync."), "k")

    def test_errors_never_show_the_secret(self) -> None:
        secret = "AO35Rd0DrbreUG19sDGExFY07BbUwHUx7gruQSXc5VQ="
        for text in (
            f'key "k" {{ algorithm hmac-sha256; secret "{secret}" }};',
            f'key "k" {{ algorithm hmac-sha256; secret "{secret}" junk; }};',
            f'key "k" {{ algorithm hmac-sha256; secret {secret}!; }};',
            f'key "k" {{ algorithm hmac-md5; secret "{secret}"; }};',
        ):
            with pytest.raises(TsigKeyError) as info:
                build_tsig_keys(text, "k")
            assert secret[:12] not in str(info.value)


class TestTsigKey:
    """The value: hides its secret, converts for dnspython."""

    def test_repr_hides_secret(self) -> None:
        key = TsigKey("danesync", "hmac-sha256", SECRET)
        for shown in (repr(key), str(key), f"{key}", repr([key])):
            assert "AO35Rd0D" not in shown
            assert repr(SECRET) not in shown
            assert "<hidden>" in shown

    def test_refuses_what_it_cannot_sign_with(self) -> None:
        with pytest.raises(ValueError, match="unsupported TSIG algorithm 'hmac-md5'"):
            TsigKey("k", "hmac-md5", b"x")
        with pytest.raises(ValueError, match="empty TSIG secret"):
            TsigKey("k", "hmac-sha256", b"")

    @pytest.mark.parametrize("algorithm", SUPPORTED_ALGORITHMS)
    def test_signs_messages_dnspython_verifies(self, algorithm: str) -> None:
        key = TsigKey("danesync.example", algorithm, os.urandom(32))
        update = dns.update.UpdateMessage("example.test", keyring=key.to_dnspython())
        update.add("_25._tcp.mx.example.test.", 300, "TLSA", "3 1 1 " + "ab" * 32)
        wire = update.to_wire()
        other = dns.tsig.Key("danesync.example", key.secret, algorithm)
        received = dns.message.from_wire(wire, keyring={other.name: other})
        assert received.had_tsig
        assert received.keyalgorithm == dns.name.from_text(algorithm)

    def test_wrong_secret_does_not_verify(self) -> None:
        key = TsigKey("k", "hmac-sha256", b"a" * 32)
        wire = dns.update.UpdateMessage("example.test", keyring=key.to_dnspython()).to_wire()
        other = dns.tsig.Key("k", b"b" * 32, "hmac-sha256")
        with pytest.raises(dns.tsig.BadSignature):
            dns.message.from_wire(wire, keyring={other.name: other})


class TestReadTsigKey:
    """read_tsig_key: file access and the permission check."""

    def _write(self, tmp_path: Path, text: str, mode: int) -> Path:
        path = tmp_path / "tsig.key"
        path.write_text(text)
        path.chmod(mode)
        return path

    def test_first_key_by_default(self, tmp_path: Path) -> None:
        text = _key_text("first", "hmac-sha256", b"1" * 32) + KEYGEN_OUTPUT
        path = self._write(tmp_path, text, 0o600)
        assert read_tsig_key(path).name == "first"

    def test_named_key(self, tmp_path: Path) -> None:
        text = _key_text("first", "hmac-sha256", b"1" * 32) + KEYGEN_OUTPUT
        path = self._write(tmp_path, text, 0o400)
        assert read_tsig_key(path, "DANESYNC.") == TsigKey("danesync", "hmac-sha256", SECRET)

    def test_missing_named_key_lists_names(self, tmp_path: Path) -> None:
        path = self._write(tmp_path, KEYGEN_OUTPUT, 0o600)
        with pytest.raises(TsigKeyError, match=r"no key named 'other' \(the file has 'danesync'\)"):
            read_tsig_key(path, "other")

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666, 0o610])
    def test_group_or_other_access_refused(self, tmp_path: Path, mode: int) -> None:
        path = self._write(tmp_path, KEYGEN_OUTPUT, mode)
        with pytest.raises(TsigKeyError) as info:
            read_tsig_key(path)
        message = str(info.value)
        assert message.startswith(f"{path}: mode {mode:04o} lets group or others")
        assert f"chmod 600 {path}" in message

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(TsigKeyError, match="no such file"):
            read_tsig_key(tmp_path / "absent.key")

    def test_directory(self, tmp_path: Path) -> None:
        directory = tmp_path / "dir"
        directory.mkdir(mode=0o700)
        with pytest.raises(TsigKeyError, match="not a regular file"):
            read_tsig_key(directory)

    def test_binary_file(self, tmp_path: Path) -> None:
        path = tmp_path / "k"
        path.write_bytes(b"\xff\xfe\x00")
        path.chmod(0o600)
        with pytest.raises(TsigKeyError, match="not UTF-8"):
            read_tsig_key(path)

    def test_parse_error_names_the_file(self, tmp_path: Path) -> None:
        path = self._write(tmp_path, "key broken", 0o600)
        with pytest.raises(TsigKeyError, match=f"^{path}: line 1"):
            read_tsig_key(path)


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_names = st.lists(_label, min_size=1, max_size=3).map(".".join)
_comments = st.sampled_from(["", "# c\n", "// c\n", "/* c */", "/* multi\nline */", "\n\n"])


@st.composite
def _key_files(draw: st.DrawFn) -> tuple[str, list[TsigKey]]:
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    keys = [
        TsigKey(
            name,
            draw(st.sampled_from(SUPPORTED_ALGORITHMS)),
            draw(st.binary(min_size=1, max_size=64)),
        )
        for name in names
    ]
    parts: list[str] = []
    for key in keys:
        sep = draw(_comments) or " "
        quote = draw(st.booleans())
        name = f'"{key.name}"' if quote else key.name
        secret = base64.b64encode(key.secret).decode()
        clauses = [f"algorithm{sep}{key.algorithm};", f'secret{sep}"{secret}";']
        if draw(st.booleans()):
            clauses.reverse()
        parts.append(f"{draw(_comments)}key{sep}{name}{sep}{{{sep}{sep.join(clauses)}{sep}}};")
    return draw(_comments).join(parts) + draw(_comments), keys


class TestProperties:
    """Any well-formed file, however commented, parses back to its keys."""

    @given(_key_files())
    @settings(max_examples=200)
    def test_round_trip(self, case: tuple[str, list[TsigKey]]) -> None:
        text, keys = case
        assert build_tsig_keys(text, "k") == keys

    @given(st.text(max_size=200))
    @example("key:")  # once taken for an empty key list of the colon format
    def test_garbage_is_refused_cleanly(self, text: str) -> None:
        # Whatever the input: a list of keys or TsigKeyError, never another error.
        try:
            keys = build_tsig_keys(text, "k")
        except TsigKeyError as error:
            assert error.reason
        else:
            assert keys
            assert all(isinstance(key, TsigKey) for key in keys)


B64 = "AO35Rd0DrbreUG19sDGExFY07BbUwHUx7gruQSXc5VQ="


class TestOtherServersFormats:
    """Knot's keymgr and PowerDNS's pdnsutil print the same key differently."""

    @pytest.mark.parametrize(
        "text",
        [
            # keymgr -t danesync hmac-sha256
            f"# hmac-sha256:danesync:{B64}\nkey:\n  - id: danesync\n"
            f"    algorithm: hmac-sha256\n    secret: {B64}\n",
            # the same, without the comment line, as in knot.conf
            f"key:\n  - id: danesync\n    algorithm: hmac-sha256\n    secret: {B64}\n",
            # pdnsutil generate-tsig-key danesync hmac-sha256
            f"Create new TSIG key danesync hmac-sha256 {B64}\n",
            # pdnsutil list-tsig-keys
            f"danesync. hmac-sha256. {B64}\n",
            # dig -y / kdig -y / knsupdate -y
            f"hmac-sha256:danesync:{B64}\n",
            # keymgr's comment line alone
            f"# hmac-sha256:danesync:{B64}\n",
        ],
        ids=["keymgr", "knot-conf", "pdnsutil-generate", "pdnsutil-list", "colon", "comment"],
    )
    def test_accepted(self, text: str) -> None:
        assert build_tsig_keys(text, "k") == [TsigKey("danesync", "hmac-sha256", SECRET)]

    def test_several_knot_keys_and_pdns_lines(self) -> None:
        knot = (
            f"key:\n  - id: a\n    algorithm: hmac-sha256\n    secret: {B64}\n"
            f"  - id: b\n    algorithm: hmac-sha512\n    secret: {B64}\n"
        )
        assert [(k.name, k.algorithm) for k in build_tsig_keys(knot, "k")] == [
            ("a", "hmac-sha256"),
            ("b", "hmac-sha512"),
        ]
        pdns = f"a. hmac-sha256. {B64}\nb. hmac-sha384. {B64}\n"
        assert [(k.name, k.algorithm) for k in build_tsig_keys(pdns, "k")] == [
            ("a", "hmac-sha256"),
            ("b", "hmac-sha384"),
        ]

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            (f"key:\n  - id: a\n    algorithm: hmac-md5\n    secret: {B64}\n", "hmac-md5"),
            ("key:\n  - id: a\n    algorithm: hmac-sha256\n", "without 'secret:'"),
            (f"a. hmac-sha256. {B64}\nsomething else\n", "line 2: not a key line"),
            ("Create new TSIG key a hmac-sha256 not*base64\n", "not valid base64"),
        ],
    )
    def test_refused_with_the_reason(self, text: str, reason: str) -> None:
        with pytest.raises(TsigKeyError, match=reason) as info:
            build_tsig_keys(text, "k")
        assert B64 not in str(info.value)

    def test_unknown_format_names_the_expected_ones(self) -> None:
        with pytest.raises(TsigKeyError) as info:
            build_tsig_keys("TSIG danesync hmac-sha256\n", "k")
        message = str(info.value)
        assert "expected a 'key' statement" in message
        assert "tsig-keygen" in message and "keymgr -t" in message and "pdnsutil" in message

    def test_real_keymgr_output(self) -> None:
        require_program("/usr/sbin/keymgr")
        output = subprocess.run(
            ["/usr/sbin/keymgr", "-t", "from-knot", "hmac-sha384"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (key,) = build_tsig_keys(output, "k")
        assert (key.name, key.algorithm) == ("from-knot", "hmac-sha384")
        assert base64.b64encode(key.secret).decode() in output


class TestCurrentTsigKey:
    """current_tsig_key re-reads the file when it changes, and only then."""

    def _write(self, path: Path, secret: bytes, mode: int = 0o600) -> None:
        path.write_text(_key_text("danesync", "hmac-sha256", secret))
        path.chmod(mode)

    def test_unchanged_file_is_not_read_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "k.key"
        self._write(path, SECRET)
        reads: list[Path] = []
        real = tsigkey.read_tsig_key

        def counting(p: Path, name: str | None = None) -> TsigKey:
            reads.append(p)
            return real(p, name)

        monkeypatch.setattr(tsigkeyfile, "read_tsig_key", counting)
        assert tsigkeyfile.current_tsig_key(path).secret == SECRET
        assert tsigkeyfile.current_tsig_key(path).secret == SECRET
        assert len(reads) == 1

    def test_secret_fixed_in_place(self, tmp_path: Path) -> None:
        path = tmp_path / "k.key"
        self._write(path, b"old secret, 32 bytes long......")
        assert tsigkeyfile.current_tsig_key(path).secret.startswith(b"old")
        before = path.stat().st_mtime_ns
        with path.open("w") as file:  # same inode, same size
            file.write(_key_text("danesync", "hmac-sha256", b"new secret, 32 bytes long......"))
        # An editor saves later than the first write; within one clock tick the
        # mtime could be equal, so make "later" explicit.
        os.utime(path, ns=(before + 10**9, before + 10**9))
        assert tsigkeyfile.current_tsig_key(path).secret.startswith(b"new")

    def test_renamed_over(self, tmp_path: Path) -> None:
        path, fresh = tmp_path / "k.key", tmp_path / "k.key.new"
        self._write(path, SECRET)
        tsigkeyfile.current_tsig_key(path)
        self._write(fresh, b"rotated secret.................")
        fresh.rename(path)
        assert tsigkeyfile.current_tsig_key(path).secret.startswith(b"rotated")

    def test_loosened_mode_is_refused_at_once(self, tmp_path: Path) -> None:
        path = tmp_path / "k.key"
        self._write(path, SECRET)
        tsigkeyfile.current_tsig_key(path)
        path.chmod(0o644)
        with pytest.raises(TsigKeyError, match="mode 0644"):
            tsigkeyfile.current_tsig_key(path)
        path.chmod(0o600)
        assert tsigkeyfile.current_tsig_key(path).secret == SECRET

    def test_deleted_file_is_an_error(self, tmp_path: Path) -> None:
        path = tmp_path / "k.key"
        self._write(path, SECRET)
        tsigkeyfile.current_tsig_key(path)
        path.unlink()
        with pytest.raises(TsigKeyError, match="no such file"):
            tsigkeyfile.current_tsig_key(path)
