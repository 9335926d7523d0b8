"""A `ChainInfo` per number, for tests of the state and its store."""

from __future__ import annotations

import datetime as dt

from danesync.state import ChainInfo

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def chain_info(n: int, usages: tuple[str, ...] = ("3 1 1", "2 1 1")) -> ChainInfo:
    """Chain number `n`: its fingerprint and SPKI digests are `n` in hex."""
    fp = f"{n:064x}"
    return ChainInfo(
        fp,
        f"{n:02X}",
        NOW,
        NOW + dt.timedelta(days=90),
        "CN=CA",
        "ecdsa",
        n,
        ("mx.example.test",),
        fp,
        fp,
        frozenset(f"{usage} {fp}" for usage in usages),
    )
