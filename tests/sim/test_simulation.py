"""The simulation in `make test`: deterministic (derandomize), about 2,000 examples.

`make soak` runs the same machine with fresh random seeds for DANESYNC_SOAK_SECONDS.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.sim.machine import DanesyncWorld

EXAMPLES = int(os.environ.get("DANESYNC_SIM_EXAMPLES", "2000"))
STEPS = int(os.environ.get("DANESYNC_SIM_STEPS", "30"))

TestSimulation = DanesyncWorld.TestCase
TestSimulation.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
