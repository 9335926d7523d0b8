"""The post-deploy probes report each outcome as soon as it is known, in the
caller's thread, while the other probes go on (issue 15, coldread): a cold
start logs `probe.ok` as it probes instead of after the last probe."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from danesync import adapters
from danesync.adapters import RealPostfix
from danesync.config import Config
from danesync.ports import ProbeRequest


def _postfix(tmp_path: Path) -> RealPostfix:
    postfix = SimpleNamespace(
        deploy_dir=tmp_path / "deploy",
        config_dir=tmp_path / "postfix",
        probe=SimpleNamespace(host="localhost", port=25),
    )
    return RealPostfix(cast(Config, SimpleNamespace(postfix=postfix, certificates=())))


def test_outcomes_are_reported_while_later_probes_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"mx{i}" for i in range(40)]  # more than the workers, as at a cold start
    first_reported = threading.Event()
    waited: list[bool] = []

    def fake_probe(endpoint: object, request: ProbeRequest) -> bool:
        if request.lineage == names[-1]:
            # The last probe ends only once the first outcome was handed over.
            waited.append(first_reported.wait(10))
        return request.lineage != "mx3"

    monkeypatch.setattr(adapters, "_wait_for_fingerprint", fake_probe)
    seen: list[tuple[str, bool]] = []

    def on_result(lineage: str, ok: bool) -> None:
        assert threading.current_thread() is threading.main_thread()
        seen.append((lineage, ok))
        first_reported.set()

    requests = [ProbeRequest(n, "f" * 64, n, "ecdsa") for n in names]
    outcomes = _postfix(tmp_path).confirm_served(requests, on_result)
    assert waited == [True]
    assert seen == [(n, n != "mx3") for n in names]  # each once, in request order
    assert outcomes == dict(seen)
