"""The TSIG key file, re-read when it changes (issue 13, finding 3)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from danesync.tsigkey import TsigKey, read_tsig_key


@dataclass(frozen=True)
class _Seen:
    signature: tuple[int, ...]
    key: TsigKey


# Keys by (path, name), with the file's identity when they were read.
_CURRENT: dict[tuple[str, str | None], _Seen] = {}


def _signature(path: Path) -> tuple[int, ...] | None:
    """What changes when the file is replaced, edited or chmod-ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (
        info.st_dev,
        info.st_ino,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
        info.st_mode,
    )


def current_tsig_key(path: Path, name: str | None = None) -> TsigKey:
    """`read_tsig_key`, re-read only when the file changed since the last call.

    The daemon calls this before every update, so a key rotated or fixed in
    place (new secret, rename over it, chmod 600) is used from the next
    update on, without SIGHUP. A file that became unreadable or unsafe raises
    at once: the old key is never used in its place.
    """
    signature = _signature(path)
    seen = _CURRENT.get((str(path), name))
    if signature is not None and seen is not None and seen.signature == signature:
        return seen.key
    key = read_tsig_key(path, name)
    if signature is not None:
        _CURRENT[(str(path), name)] = _Seen(signature, key)
    return key
