"""TSIG keys from BIND key files, as ``tsig-keygen`` writes them.

A file holds one or more statements::

    key "danesync" {
        algorithm hmac-sha256;
        secret "base64==";
    };

with ``#``, ``//`` and ``/* */`` comments anywhere. Keys made by the other
servers' tools are accepted as they print them (the key is the same; only
the spelling differs):

- Knot: ``keymgr -t NAME hmac-sha256``, a ``key:`` list in knot.conf's YAML
  (``- id:``, ``algorithm:``, ``secret:``), and its ``# alg:name:secret``
  line;
- PowerDNS: ``pdnsutil generate-tsig-key NAME hmac-sha256`` ("Create new
  TSIG key NAME ALG SECRET") and ``pdnsutil list-tsig-keys`` lines
  ("NAME. ALG. SECRET");
- the ``alg:name:secret`` form that ``dig -y``, ``kdig -y`` and
  ``knsupdate -y`` take.

Accepted algorithms:
hmac-sha1, hmac-sha224, hmac-sha256, hmac-sha384 and hmac-sha512 (RFC 8945;
HMAC with any SHA is sound). hmac-md5 and truncated variants
(``hmac-sha256-128``) are refused: RFC 8945 does not recommend them and a new
key costs one ``tsig-keygen`` call.

`build_tsig_keys` is pure; `read_tsig_key` reads the file and refuses one that
group or others may read or write. Secrets never appear in a repr or in an
error message.
"""

from __future__ import annotations

import binascii
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.tsig

from danesync.errors import TsigKeyError

# BIND's algorithm names -> dnspython's.
_ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
_REFUSED_ALGORITHMS = {
    "hmac-md5": "hmac-md5 is not accepted (RFC 8945 does not recommend it)",
}
SUPPORTED_ALGORITHMS = tuple(_ALGORITHMS)
_FORMATS_HINT = (
    "a key file is BIND's key statement (tsig-keygen -a hmac-sha256 NAME), Knot's "
    "keymgr -t NAME hmac-sha256 output, PowerDNS's pdnsutil generate-tsig-key or "
    "list-tsig-keys output, or one line ALGORITHM:NAME:SECRET"
)


@dataclass(frozen=True)
class TsigKey:
    """One TSIG key. The repr hides the secret."""

    name: str
    algorithm: str  # BIND spelling, lower case: "hmac-sha256"
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"unsupported TSIG algorithm {self.algorithm!r}")
        if not self.secret:
            raise ValueError("empty TSIG secret")

    def __repr__(self) -> str:
        return f"TsigKey(name={self.name!r}, algorithm={self.algorithm!r}, secret=<hidden>)"

    def to_dnspython(self) -> dns.tsig.Key:
        """The key as `dns.update`/`dns.message` take it (``keyring=``).

        Never log the result: dnspython's repr prints the secret.
        """
        return dns.tsig.Key(self.name, self.secret, _ALGORITHMS[self.algorithm])


@dataclass(frozen=True)
class _Token:
    text: str
    line: int
    quoted: bool


def _tokenize(text: str, path: str) -> list[_Token]:
    """Words, quoted strings and ``{ } ;``, with comments removed."""
    tokens: list[_Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise TsigKeyError(path, f"line {line}: comment '/*' is never closed")
            line += text.count("\n", i, end)
            i = end + 2
        elif c in "{};":
            tokens.append(_Token(c, line, quoted=False))
            i += 1
        elif c == '"':
            start_line = line
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise TsigKeyError(path, f"line {start_line}: quoted string is never closed")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    i += 1
                    c = text[i]
                if c == "\n":
                    line += 1
                chars.append(c)
                i += 1
            tokens.append(_Token("".join(chars), start_line, quoted=True))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in '{};"#':
                if text.startswith("//", i) or text.startswith("/*", i):
                    break
                i += 1
            tokens.append(_Token(text[start:i], line, quoted=False))
    return tokens


def _show(token: _Token | None) -> str:
    if token is None:
        return "the end of the file"
    shown = token.text if len(token.text) <= 40 else token.text[:37] + "..."
    return f"'{shown}'"


class _Parser:
    def __init__(self, tokens: list[_Token], path: str) -> None:
        self.tokens = tokens
        self.path = path
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token | None:
        token = self.peek()
        self.pos += 1
        return token

    def fail(self, line: int | None, reason: str) -> TsigKeyError:
        if line is None:
            line = self.tokens[-1].line if self.tokens else 1
        return TsigKeyError(self.path, f"line {line}: {reason}")

    def expect_punct(self, punct: str, after: str) -> None:
        token = self.take()
        if token is None or token.quoted or token.text != punct:
            line = token.line if token else None
            raise self.fail(line, f"expected '{punct}' {after}, found {_show(token)}")

    def value(self, what: str, *, secret: bool = False) -> _Token:
        token = self.take()
        if token is None or (not token.quoted and token.text in "{};"):
            line = token.line if token else None
            shown = "nothing" if secret else _show(token)
            raise self.fail(line, f"expected {what}, found {shown}")
        return token

    def key(self) -> TsigKey:
        start = self.take()
        assert start is not None
        if start.quoted or start.text.lower() != "key":
            raise self.fail(
                start.line, f"expected a 'key' statement, found {_show(start)}; {_FORMATS_HINT}"
            )
        name_token = self.value("a key name after 'key'")
        name = name_token.text.strip()
        if not name:
            raise self.fail(name_token.line, "the key name is empty")
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException as error:
            raise self.fail(name_token.line, f"key name '{name}' is not a domain name") from error
        self.expect_punct("{", f"after key name '{name}'")
        algorithm: str | None = None
        secret: bytes | None = None
        while True:
            token = self.take()
            if token is None:
                raise self.fail(None, f"key '{name}': missing '}}' at the end of the file")
            if not token.quoted and token.text == "}":
                break
            word = token.text.lower()
            if token.quoted or word not in ("algorithm", "secret"):
                raise self.fail(
                    token.line,
                    f"key '{name}': expected 'algorithm' or 'secret', found {_show(token)}",
                )
            if word == "algorithm":
                if algorithm is not None:
                    raise self.fail(token.line, f"key '{name}': 'algorithm' given twice")
                algorithm = self.algorithm(name, self.value("an algorithm name"))
                self.expect_punct(";", f"after the algorithm of key '{name}'")
            else:
                if secret is not None:
                    raise self.fail(token.line, f"key '{name}': 'secret' given twice")
                secret = self.secret(name, self.value("a secret", secret=True))
                after = self.take()
                if after is None or after.quoted or after.text != ";":
                    # Do not echo the token: it may be part of the secret.
                    line = after.line if after else None
                    raise self.fail(line, f"key '{name}': expected ';' after the secret")
        self.expect_punct(";", f"after the '}}' closing key '{name}'")
        if algorithm is None:
            raise self.fail(start.line, f"key '{name}' has no 'algorithm'")
        if secret is None:
            raise self.fail(start.line, f"key '{name}' has no 'secret'")
        return TsigKey(name, algorithm, secret)

    def algorithm(self, name: str, token: _Token) -> str:
        algorithm = token.text.strip().lower().rstrip(".")
        if algorithm in _ALGORITHMS:
            return algorithm
        supported = ", ".join(SUPPORTED_ALGORITHMS)
        reason = _REFUSED_ALGORITHMS.get(algorithm, f"unknown algorithm {_show(token)}")
        raise self.fail(
            token.line,
            f"key '{name}': {reason}; use one of {supported} (tsig-keygen -a hmac-sha256)",
        )

    def secret(self, name: str, token: _Token) -> bytes:
        compact = "".join(token.text.split())
        try:
            secret = binascii.a2b_base64(compact.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise self.fail(token.line, f"key '{name}': the secret is not valid base64") from None
        if not secret:
            raise self.fail(token.line, f"key '{name}': the secret is empty")
        return secret


def build_tsig_keys(text: str, path: str) -> list[TsigKey]:
    """Every key in a key file (BIND's, or Knot's or PowerDNS's spelling), in
    file order. `path` only names errors."""
    from danesync.tsigformats import build_other_keys  # it builds on this module

    other = build_other_keys(text, path)
    if other:
        return _unique(other, path)
    parser = _Parser(_tokenize(text, path), path)
    keys: list[TsigKey] = []
    while parser.peek() is not None:
        keys.append(parser.key())
    if not keys:
        raise TsigKeyError(path, "no 'key' statement found (make one with tsig-keygen)")
    return _unique(keys, path)


def _unique(keys: list[TsigKey], path: str) -> list[TsigKey]:
    seen: set[str] = set()
    for key in keys:
        folded = key.name.lower().rstrip(".")
        if folded in seen:
            raise TsigKeyError(path, f"key '{key.name}' is defined twice")
        seen.add(folded)
    return keys


def read_tsig_key(path: Path, name: str | None = None) -> TsigKey:
    """The key called `name` (or the first key) from a BIND key file.

    Refuses a file that group or others can read or write: the secret lets
    anyone change the zone's TLSA records.
    """
    shown = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise TsigKeyError(shown, "no such file (make one with tsig-keygen)") from None
    except OSError as error:
        raise TsigKeyError(shown, f"cannot open: {error.strerror}") from error
    try:
        # Check the open file, so a swap between check and read cannot fool us.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TsigKeyError(shown, "not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise TsigKeyError(
                shown,
                f"mode {mode:04o} lets group or others read or write the TSIG secret; "
                f"refusing to use it (chmod 600 {shown})",
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    except OSError as error:
        raise TsigKeyError(shown, f"cannot read: {error.strerror}") from error
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TsigKeyError(shown, "not a text file (not UTF-8)") from error
    keys = build_tsig_keys(text, shown)
    if name is None:
        return keys[0]
    wanted = name.lower().rstrip(".")
    for key in keys:
        if key.name.lower().rstrip(".") == wanted:
            return key
    available = ", ".join(f"'{k.name}'" for k in keys)
    raise TsigKeyError(shown, f"no key named '{name}' (the file has {available})")
