"""Run danesync itself as a user would: a config file and the command line.

`run_danesync` starts `python -m danesync` with the interpreter running the
tests, so each test lane exercises its own libraries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    path: Path,
    sections: Mapping[str, Mapping[str, Any]],
    certificates: list[Mapping[str, Any]] = (),  # type: ignore[assignment]
) -> Path:
    """A danesync.toml from plain values."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    for certificate in certificates:
        lines.append("[[certificate]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in certificate.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def danesync_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "daemon"), env.get("PYTHONPATH")]))
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


def run_danesync(
    *arguments: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`danesync ARGS` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "danesync", *arguments],
        capture_output=True,
        text=True,
        env=danesync_env(env),
        timeout=timeout,
        check=False,
    )


def start_danesync(
    *arguments: str, env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """`danesync ARGS` in the background (the daemon); output to `log` if given."""
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "danesync", *arguments],
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        env=danesync_env(env),
    )


def json_events(text: str) -> list[dict[str, Any]]:
    """The JSON log records in `text` (other lines ignored)."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
