"""`python -m bench [--quick] [--only NAME...] [--update-docs] [--profile]`.

Prints the figures, writes bench/results/latest.json and latest.md, and with
`--update-docs` puts the tables into docs/benchmarks.md between its markers.
Exit status 0 when every benchmark ran (a missed target is reported, not an
error: the figures are the product), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import idle, latency, reload, renewal_pass, scale, validate
from bench.common import REPO, RESULTS, Result, dump, machine

DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
NAMES = ("latency", "reload", "idle", "scale", "validate", "renewal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer renewals and a 15 s idle window (about 2 min instead of 4)",
    )
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument(
        "--update-docs", action="store_true", help=f"write the tables into {DOCS.name}"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the scale daemons and passes under cProfile (bench/results/profile/)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    return parser


def render(results: list[Result], host: dict[str, str], quick: bool) -> str:
    lines = [
        f"Measured {host['date']}{' (--quick)' if quick else ''} on {host['nproc']} CPU"
        f" ({host['cpu']}), {host['ram']} RAM, Linux {host['kernel']}, Debian {host['debian']},"
        f" Postfix {host['postfix']}, Python {host['python']}.",
        f"Load average (1, 5, 15 min) at the start: {host['load']}; at the end:"
        f" {end_load()}. The machine is shared: with a load above its {host['nproc']} CPUs"
        " every absolute figure is inflated; compare each with its baseline from the same run.",
        "",
    ]
    for result in results:
        lines += [f"### {result.title}", "", f"Setup: {result.setup}.", ""]
        lines += [f"Baseline: {result.baseline}.", ""]
        lines += ["| measure | danesync | baseline | target | met |", "|---|---|---|---|---|"]
        for row in result.rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            lines.append(
                f"| {row.measure} | {row.danesync} | {row.baseline} | {row.target} | {met} |"
            )
        lines.append("")
        for note in result.notes:
            lines += [f"- {note}"]
        if result.notes:
            lines.append("")
    return "\n".join(lines)


def end_load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def update_docs(table: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmarks run private Postfix instances and need root", file=sys.stderr)
        return 1
    quick = args.quick
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    profile_dir = output / "profile" if args.profile else None
    if profile_dir is not None:
        shutil.rmtree(profile_dir, ignore_errors=True)
        profile_dir.mkdir(parents=True)
    runs: dict[str, Callable[[Path], Result]] = {
        "latency": lambda w: latency.run(
            w, renewals=5 if quick else 20, certbot_renewals=1 if quick else 3
        ),
        "reload": lambda w: reload.run(w, rounds=3 if quick else 8),
        "idle": lambda w: idle.run(w, window=15.0 if quick else 60.0),
        "scale": lambda w: scale.run(
            w,
            renewals=3 if quick else 5,
            profile_dir=profile_dir,
            ari_delayed=not quick,
            huge=not quick,
        ),
        "validate": lambda w: validate.run(w, rounds=2 if quick else 5),
        # One renewal pass in process, at 100, 1,000 and (not --quick) 10,000 lineages.
        "renewal": lambda w: renewal_pass.run(
            w,
            renewal_pass.SIZES[:2] if quick else renewal_pass.SIZES,
            renewals=3 if quick else 5,
            profile_dir=profile_dir,
        ),
    }
    host = machine()
    results: list[Result] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in NAMES:
        if name not in args.only:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"danesync-bench-{name}-"))
        workdir.chmod(0o755)
        try:
            results.append(runs[name](workdir))
        except Exception:
            traceback.print_exc()
            failed.append(name)
        finally:
            if os.environ.get("DANESYNC_BENCH_KEEP") == "1":  # to read the daemons' logs
                print(f"kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    table = render(results, host, quick)
    print()
    print(table)
    document = {
        "machine": host,
        "quick": quick,
        "seconds": time.monotonic() - started,
        "failed": failed,
        "results": {
            r.name: {
                "title": r.title,
                "setup": r.setup,
                "baseline": r.baseline,
                "rows": [vars(row) for row in r.rows],
                "notes": r.notes,
                "data": r.data,
            }
            for r in results
        },
    }
    dump(output / "latest.json", document)
    (output / "latest.md").write_text(table + "\n")
    print(f"\nwritten: {output / 'latest.json'}, {output / 'latest.md'}", file=sys.stderr)
    if args.update_docs and not failed and not quick and args.only == list(NAMES):
        update_docs(table)
        print(f"updated: {DOCS}", file=sys.stderr)
    elif args.update_docs:
        print(f"not updating {DOCS.name}: only a full run of every benchmark does", file=sys.stderr)
    missed = [f"{r.name}: {m}" for r in results for m in r.failed_targets]
    if missed:
        print(f"targets missed: {'; '.join(missed)}", file=sys.stderr)
    if failed:
        print(f"could not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
