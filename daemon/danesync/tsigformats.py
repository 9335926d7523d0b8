"""TSIG keys as Knot's and PowerDNS's tools print them (see danesync.tsigkey).

The key is the same; only the spelling differs: ``keymgr -t`` YAML (with
its ``# alg:name:secret`` comment), ``pdnsutil generate-tsig-key`` and
``list-tsig-keys`` lines, and the ``alg:name:secret`` form of ``dig -y``.
Each key is checked exactly like a BIND key (algorithm, base64 secret), and
no error message repeats a secret.
"""

from __future__ import annotations

import re

import dns.exception
import dns.name

from danesync.errors import TsigKeyError
from danesync.tsigkey import _FORMATS_HINT, TsigKey, _Parser, _Token

_KNOT_ENTRY = re.compile(r"^\s*(?:-\s+)?(id|algorithm|secret)\s*:\s*(\S+)\s*$")
_PDNS_CREATED = re.compile(r"^Create new TSIG key (\S+) (\S+) (\S+)$")
_PDNS_LISTED = re.compile(r"^(\S+?)\.? (hmac-[a-z0-9-]+?)\.? (\S+)$", re.IGNORECASE)
_COLON_FORM = re.compile(r"^(hmac-[a-z0-9-]+):([^:\s]+):(\S+)$", re.IGNORECASE)


def _meaningful_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of lines that are neither empty nor ``#`` comments."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append((number, line.rstrip()))
    return lines


def _make_key(path: str, line: int, name: str, algorithm: str, secret_text: str) -> TsigKey:
    """One key from another server's spelling, checked like a BIND key."""
    token = _Token(secret_text, line, quoted=True)
    parser = _Parser([], path)
    name = name.strip().rstrip(".") or name
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as error:
        raise parser.fail(line, f"key name '{name}' is not a domain name") from error
    checked = parser.algorithm(name, _Token(algorithm, line, quoted=False))
    return TsigKey(name, checked, parser.secret(name, token))


def _build_knot_keys(lines: list[tuple[int, str]], path: str) -> list[TsigKey]:
    """knot.conf's ``key:`` section, as ``keymgr -t`` prints it."""
    keys: list[TsigKey] = []
    entry: dict[str, tuple[int, str]] = {}

    def finish() -> None:
        if not entry:
            return
        line = min(n for n, _ in entry.values())
        missing = [k for k in ("id", "algorithm", "secret") if k not in entry]
        if missing:
            raise TsigKeyError(path, f"line {line}: Knot key entry without '{missing[0]}:'")
        keys.append(
            _make_key(path, line, entry["id"][1], entry["algorithm"][1], entry["secret"][1])
        )
        entry.clear()

    for number, line in lines[1:]:
        match = _KNOT_ENTRY.match(line)
        if match is None:
            raise TsigKeyError(
                path, f"line {number}: expected 'id:', 'algorithm:' or 'secret:' in Knot's key list"
            )
        word, value = match.group(1), match.group(2).strip("\"'")
        if line.lstrip().startswith("-"):
            finish()
        if word in entry:
            finish()
        entry[word] = (number, value)
    finish()
    return keys


def build_other_keys(text: str, path: str) -> list[TsigKey] | None:
    """Keys in Knot's or PowerDNS's spelling; None if the text is not one of them."""
    lines = _meaningful_lines(text)
    if not lines:
        # keymgr's output is YAML whose first line is a comment: "# alg:name:secret".
        for number, line in enumerate(text.splitlines(), start=1):
            match = _COLON_FORM.match(line.strip().lstrip("#").strip())
            if match:
                return [_make_key(path, number, match.group(2), match.group(1), match.group(3))]
        return None
    first = lines[0][1].strip()
    if first == "key:":
        return _build_knot_keys(lines, path)
    keys: list[TsigKey] = []
    for number, raw in lines:
        line = raw.strip()
        match = _PDNS_CREATED.match(line) or _PDNS_LISTED.match(line)
        if match:
            keys.append(_make_key(path, number, match.group(1), match.group(2), match.group(3)))
            continue
        match = _COLON_FORM.match(line)
        if match:
            keys.append(_make_key(path, number, match.group(2), match.group(1), match.group(3)))
            continue
        if keys:
            raise TsigKeyError(path, f"line {number}: not a key line; {_FORMATS_HINT}")
        return None
    return keys
