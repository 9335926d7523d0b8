"""How long `validate_chain` takes a chain, on this interpreter's libraries and on
the other lane's (PyPI venv and Debian 12's /usr/bin/python3).

The same N lineages (ECDSA P-256 leaves and a few RSA-2048 ones, each its own
key, all issued by one intermediate as Let's Encrypt's are) are validated with
"2 1 1" and "3 1 1", by the current code and by the baseline: chain.py, pem.py
and tlsa.py as they were before issue 15's fix, loaded from git in the same
run. The rounds alternate between the two so that the load of the shared
machine weighs on both alike. `python -m bench.validate [--json]` runs it on
the current interpreter only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.certs import NOW, Hierarchy

from bench.common import REPO, Result, Row

# The last commit before issue 15's fix of validate_chain.
BASELINE_COMMIT = "b21be041d36dc4e259947a5d28a8937a0b17b405"
BASELINE_FILES = ("errors.py", "pem.py", "tlsa.py", "chain.py")
DEBIAN_PYTHON = Path("/usr/bin/python3")
TLSA_NAME = "_25._tcp.mx.example.test."

Validate = Callable[[Any, tuple[str, ...], tuple[str, ...], tuple[Any, ...], dt.datetime], Any]


def make_lineages(ecdsa: int, rsa: int) -> list[tuple[str, dict[str, bytes]]]:
    """(hostname, the four files) for each lineage; one shared intermediate."""
    ca = Hierarchy("Bench")
    lineages = []
    for index in range(ecdsa + rsa):
        host = f"mx{index}.example.test"
        leaf = ca.issue([host], key_kind="ec256" if index < ecdsa else "rsa")
        files = {
            "privkey": leaf.key_pem,
            "cert": leaf.cert_pem,
            "chain": leaf.chain_pem,
            "fullchain": leaf.fullchain_pem,
        }
        lineages.append((host, files))
    return lineages


def load_baseline(workdir: Path) -> types.ModuleType | None:
    """The baseline's chain module, as package `danesync_baseline`, or None without git."""
    package = workdir / "danesync_baseline"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in BASELINE_FILES:
        try:
            source = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:daemon/danesync/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        (package / name).write_text(source.replace("danesync.", "danesync_baseline."))
    sys.path.insert(0, str(workdir))
    return importlib.import_module("danesync_baseline.chain")


def _round(
    module: types.ModuleType, lineages: list[tuple[str, dict[str, bytes]]], now: dt.datetime
) -> float:
    """Seconds to validate every lineage once with `module`."""
    usages = (module.Usage.DANE_TA, module.Usage.DANE_EE)  # type: ignore[attr-defined]
    make = module.LineageFiles
    inputs = [(make(host, 1, **files), (host,)) for host, files in lineages]
    validate: Validate = module.validate_chain
    started = time.perf_counter()
    for files, hosts in inputs:
        validate(files, hosts, (TLSA_NAME,), usages, now)
    return time.perf_counter() - started


def measure(workdir: Path, ecdsa: int, rsa: int, rounds: int) -> dict[str, Any]:
    """ms a chain (median of `rounds` alternating rounds) for current and baseline."""
    import cryptography

    from danesync import chain

    lineages = make_lineages(ecdsa, rsa)
    now = NOW
    baseline = load_baseline(workdir)
    modules = {"current": chain} | ({"baseline": baseline} if baseline else {})
    times: dict[str, list[float]] = {name: [] for name in modules}
    for module in modules.values():  # warm up: imports, the current code's caches
        _round(module, lineages, now)
    for _ in range(rounds):
        for name, module in modules.items():
            times[name].append(_round(module, lineages, now) * 1000 / len(lineages))
    return {
        "python": sys.executable,
        "cryptography": cryptography.__version__,
        "openssl": _openssl_version(),
        "chains": len(lineages),
        "ecdsa": ecdsa,
        "rsa": rsa,
        "rounds": rounds,
        "ms_per_chain": {name: statistics.median(values) for name, values in times.items()},
        "all_rounds": times,
        "load": _load(),
    }


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(workdir: Path, ecdsa: int = 270, rsa: int = 30, rounds: int = 5) -> Result:
    """Both lanes, each in its own interpreter, one after the other."""
    lanes: dict[str, dict[str, Any]] = {}
    for lane, python in _lanes().items():
        arguments = [f"--ecdsa={ecdsa}", f"--rsa={rsa}", f"--rounds={rounds}"]
        arguments.append(f"--workdir={workdir / lane.split()[0]}")
        out = subprocess.run(
            [str(python), "-m", "bench.validate", "--json", *arguments],
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": f"{REPO / 'daemon'}:{REPO}"},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        lanes[lane] = json.loads(out)
    result = Result(
        name="validate",
        title="validate_chain: ms a chain on both library sets",
        setup=(
            f"{ecdsa} ECDSA P-256 and {rsa} RSA-2048 lineages, each its own key, one shared"
            ' intermediate, "2 1 1" and "3 1 1"; median of'
            f" {rounds} rounds, current and baseline alternating"
        ),
        baseline=f"chain.py, pem.py, tlsa.py of {BASELINE_COMMIT[:7]} (before issue 15's fix)",
        data=lanes,
    )
    for lane, figures in lanes.items():
        ms = figures["ms_per_chain"]
        base = ms.get("baseline")
        result.rows.append(
            Row(
                measure=f"{lane} (cryptography {figures['cryptography']}), ms a chain",
                danesync=f"{ms['current']:.3f}",
                baseline="unavailable (no git)" if base is None else f"{base:.3f}",
                target="",
            )
        )
        result.notes.append(f"{lane}: load average {figures['load']}, {figures['openssl']}")
    return result


def _lanes() -> dict[str, Path]:
    """The PyPI venv (the repository's, else the one running) and Debian 12's python3."""
    venv = REPO / ".venv" / "bin" / "python"
    if not venv.exists() and sys.prefix != sys.base_prefix:
        venv = Path(sys.executable)
    found = {"PyPI venv": venv, "Debian 12": DEBIAN_PYTHON}
    return {lane: python for lane, python in found.items() if python.exists()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.validate")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--ecdsa", type=int, default=270)
    parser.add_argument("--rsa", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="danesync-bench-validate-") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        figures = measure(workdir, args.ecdsa, args.rsa, args.rounds)
    if args.json:
        print(json.dumps(figures))
    else:
        ms = figures["ms_per_chain"]
        print(
            f"{figures['python']} cryptography {figures['cryptography']}: "
            + ", ".join(f"{name} {value:.3f} ms/chain" for name, value in ms.items())
            + f" ({figures['chains']} chains, load {figures['load']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
