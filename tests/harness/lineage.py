"""Write certbot lineages the way certbot's storage.py does.

`archive/<name>/{cert,chain,fullchain,privkey}N.pem` hold every version;
`live/<name>/*.pem` are relative symlinks to one version. An update makes a
`previous_*.pem` link for each kind, then unlinks and re-links the four links
one by one, then removes the `previous_*` links: `update_links` replays that
exact sequence, optionally slowly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.certs import Leaf

if TYPE_CHECKING:
    from danesync.config import Config

KINDS = ("cert", "privkey", "chain", "fullchain")


def write_version(config_dir: Path, name: str, leaf: Leaf, version: int) -> None:
    """Write one archive version of a lineage (no links)."""
    archive = config_dir / "archive" / name
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    contents = {
        "cert": leaf.cert_pem,
        "privkey": leaf.key_pem,
        "chain": leaf.chain_pem,
        "fullchain": leaf.fullchain_pem,
    }
    for kind, data in contents.items():
        path = archive / f"{kind}{version}.pem"
        path.write_bytes(data)
        path.chmod(0o600 if kind == "privkey" else 0o644)


def _target(name: str, kind: str, version: int) -> str:
    return os.path.join("..", "..", "archive", name, f"{kind}{version}.pem")


def update_links(
    config_dir: Path,
    name: str,
    version: int,
    delay: float = 0.0,
    between: Callable[[str], None] | None = None,
) -> None:
    """Point live/<name> at `version` with certbot's exact link sequence.

    `between(step)` is called after every filesystem change, so a test can
    look at the lineage while it is half-updated.
    """
    live = config_dir / "live" / name
    live.mkdir(parents=True, exist_ok=True)

    def step(label: str) -> None:
        if between is not None:
            between(label)
        if delay:
            time.sleep(delay)

    previous: list[Path] = []
    for kind in KINDS:
        link = live / f"{kind}.pem"
        if link.is_symlink():
            prev = live / f"previous_{kind}.pem"
            os.symlink(os.readlink(link), prev)
            previous.append(prev)
            step(f"previous_{kind}")
    for kind in KINDS:
        link = live / f"{kind}.pem"
        if link.is_symlink():
            link.unlink()
            step(f"unlink {kind}")
        os.symlink(_target(name, kind, version), link)
        step(f"link {kind}")
    for prev in previous:
        prev.unlink()
        step(f"remove {prev.name}")


def make_lineage(
    config_dir: Path,
    name: str,
    leaf: Leaf,
    version: int = 1,
    server: str = "https://127.0.0.1:1/directory",  # refuses at once: no ARI in tests
) -> Path:
    """A complete lineage at `version`, with its renewal config. Returns live/<name>."""
    (config_dir / "live").mkdir(parents=True, exist_ok=True, mode=0o700)
    write_version(config_dir, name, leaf, version)
    update_links(config_dir, name, version)
    renewal = config_dir / "renewal"
    renewal.mkdir(exist_ok=True)
    (renewal / f"{name}.conf").write_text(
        f"version = 2.1.0\narchive_dir = {config_dir}/archive/{name}\n"
        f"cert = {config_dir}/live/{name}/cert.pem\n"
        f"privkey = {config_dir}/live/{name}/privkey.pem\n"
        f"chain = {config_dir}/live/{name}/chain.pem\n"
        f"fullchain = {config_dir}/live/{name}/fullchain.pem\n\n"
        f"[renewalparams]\nauthenticator = standalone\nserver = {server}\n"
    )
    return config_dir / "live" / name


def renew(config_dir: Path, name: str, leaf: Leaf, delay: float = 0.0) -> int:
    """Add the next version and switch live/ to it, as `certbot renew` does."""
    archive = config_dir / "archive" / name
    versions = [int(p.name[len("cert") : -len(".pem")]) for p in archive.glob("cert*.pem")]
    version = max(versions) + 1
    write_version(config_dir, name, leaf, version)
    update_links(config_dir, name, version, delay=delay)
    return version


def build_dns_off_config(tmp_path: Path, names: list[str]) -> Config:
    """DNS off, the lineages of `names` under tmp_path/letsencrypt, the first the
    default chain and the rest SNI, the state under tmp_path/state."""
    from danesync.config import build_config

    return build_config(
        {
            "dns": {"mode": "off"},
            "certbot": {"config_dir": str(tmp_path / "letsencrypt")},
            "state": {"dir": str(tmp_path / "state")},
            "certificate": [
                {"lineage": name, "hostnames": [name], "sni": i > 0} for i, name in enumerate(names)
            ],
        },
        tmp_path / "danesync.toml",
    )
