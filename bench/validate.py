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
BASELINE_FILES = ("errors.py", "pem.py", "tlsa.py", "chain.py", "matching.py")
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


def load_baseline(workdir: Path) -> dict[str, types.ModuleType] | None:
    """The baseline's modules, as package `danesync_baseline`, or None without git."""
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
    return {
        name: importlib.import_module(f"danesync_baseline.{name}")
        for name in ("chain", "tlsa", "matching")
    }


Group = list[tuple[Any, tuple[str, ...]]]


def _inputs(module: types.ModuleType, lineages: list[tuple[str, dict[str, bytes]]]) -> Group:
    return [(module.LineageFiles(host, 1, **files), (host,)) for host, files in lineages]


def _pass(modules: dict[str, types.ModuleType], group: Group, now: dt.datetime) -> list[float]:
    """Seconds for the group: validate_chain, then the digests ChainInfo.from_chain takes."""
    chain, tlsa, matching = modules["chain"], modules["tlsa"], modules["matching"]
    usages = (tlsa.Usage.DANE_TA, tlsa.Usage.DANE_EE)
    validate: Validate = chain.validate_chain
    validating = digesting = 0.0
    for files, hosts in group:
        started = time.perf_counter()
        result = validate(files, hosts, (TLSA_NAME,), usages, now)
        validated = time.perf_counter()
        tlsa.spki_sha256(result.leaf)
        matching.build_match_set(result.leaf, result.intermediates)
        digesting += time.perf_counter() - validated
        validating += validated - started
    return [validating, digesting]


def measure(workdir: Path, ecdsa: int, rsa: int, rounds: int) -> dict[str, Any]:
    """ms a chain, the first pass in the process and the median of `rounds` more,
    for the current code and the baseline, ECDSA and RSA lineages apart."""
    import cryptography

    from danesync import chain, matching, tlsa

    lineages = make_lineages(ecdsa, rsa)
    groups = {"ECDSA P-256": lineages[:ecdsa], "RSA-2048": lineages[ecdsa:]}
    groups = {name: group for name, group in groups.items() if group}
    codes = {"current": {"chain": chain, "tlsa": tlsa, "matching": matching}}
    baseline = load_baseline(workdir)
    if baseline is not None:
        codes["baseline"] = baseline
    inputs = {
        (code, group): _inputs(modules["chain"], groups[group])
        for code, modules in codes.items()
        for group in groups
    }
    first: dict[tuple[str, str], list[float]] = {}
    again: dict[tuple[str, str], list[list[float]]] = {key: [] for key in inputs}
    for (code, group), group_inputs in inputs.items():  # current first: it pays OpenSSL's warm-up
        first[(code, group)] = _pass(codes[code], group_inputs, NOW)
    for _ in range(rounds):
        for (code, group), group_inputs in inputs.items():  # alternating: the load hits both
            again[(code, group)].append(_pass(codes[code], group_inputs, NOW))
    figures: dict[str, Any] = {}
    for (code, group), seconds in first.items():
        count = len(groups[group])
        repeated = [statistics.median(part) for part in zip(*again[(code, group)], strict=True)]
        figures.setdefault(code, {})[group] = {
            "first": [value * 1000 / count for value in seconds],
            "again": [value * 1000 / count for value in repeated],
        }
    return {
        "python": sys.executable,
        "cryptography": cryptography.__version__,
        "openssl": _openssl_version(),
        "chains": {group: len(lineages) for group, lineages in groups.items()},
        "rounds": rounds,
        "ms_per_chain": figures,  # code -> group -> first/again -> [validate, digests]
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
            ' intermediate, "2 1 1" and "3 1 1"; each lane in its own interpreter; "first":'
            " the first validation of each chain in the process (cold start), "
            f'"again": median of {rounds} more rounds (what every later pass does), current'
            " and baseline alternating; in brackets, validate_chain plus the key digests"
            " ChainInfo.from_chain takes of its result (what the daemon does with each read)"
        ),
        baseline=(
            f"chain.py, pem.py, tlsa.py, matching.py of {BASELINE_COMMIT[:7]}"
            " (before issue 15's fix), loaded from git in the same run"
        ),
        data=lanes,
    )
    for lane, figures in lanes.items():
        ms = figures["ms_per_chain"]
        for group in figures["chains"]:
            for when in ("first", "again"):
                base = ms.get("baseline", {}).get(group, {}).get(when)
                result.rows.append(
                    Row(
                        measure=(
                            f"{lane} (cryptography {figures['cryptography']}), {group},"
                            f" {when}: ms a chain"
                        ),
                        danesync=_figure(ms["current"][group][when]),
                        baseline="unavailable (no git)" if base is None else _figure(base),
                    )
                )
        result.notes.append(f"{lane}: load average {figures['load']}; {figures['openssl']}")
    return result


def _figure(parts: list[float]) -> str:
    validating, digesting = parts
    return f"{validating:.2f} ({validating + digesting:.2f})"


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
        print(f"{figures['python']} cryptography {figures['cryptography']}, load {figures['load']}")
        for code, groups in figures["ms_per_chain"].items():
            for group, passes in groups.items():
                print(
                    f"  {code:8} {group:11} ms a chain, validate_chain (with ChainInfo's digests):"
                    + "".join(f" {when} {_figure(parts)}" for when, parts in passes.items())
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
