"""`make soak`: the simulation with fresh random seeds for DANESYNC_SOAK_SECONDS.

Not part of `make test` (it is skipped without the variable). A failure
prints the shrunk event sequence: turn it into a test in test_regressions.py.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.sim.machine import DanesyncWorld

SECONDS = float(os.environ.get("DANESYNC_SOAK_SECONDS", "0"))


@pytest.mark.skipif(not SECONDS, reason="set DANESYNC_SOAK_SECONDS (make soak)")
def test_soak() -> None:
    end = time.monotonic() + SECONDS
    rounds = 0
    while time.monotonic() < end:
        run_state_machine_as_test(
            DanesyncWorld,
            settings=settings(
                max_examples=200,
                stateful_step_count=int(os.environ.get("DANESYNC_SIM_STEPS", "60")),
                derandomize=False,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
        rounds += 1
    print(f"soak: {rounds * 200} examples in {SECONDS:g} s")
