"""Crash safety, proven by a loop: kill -9 the broker at random moments under
concurrent idempotent acks=all producers, restart it on the same data directory, and
check that nothing acknowledged, seen or committed was lost and nothing torn is served
(see crash_support.py for the checks).

HERALD_CRASH_CYCLES sets the number of kill -9 cycles under `flush = always` (default
30, which CI runs); HERALD_CRASH_CYCLES_OTHER those under `interval:<ms>` and `os`
(default 5 each). scripts/crash-test.sh runs a long loop with figures.
"""

from __future__ import annotations

import os

import pytest

from crash_support import run_crash_loop

CYCLES = int(os.environ.get("HERALD_CRASH_CYCLES", "30"))
CYCLES_OTHER = int(os.environ.get("HERALD_CRASH_CYCLES_OTHER", "5"))
# Records per second over all producers: bounds how much each cycle writes and reads back.
RATE = int(os.environ.get("HERALD_CRASH_RATE", "1500"))

pytestmark = pytest.mark.timeout(max(300, CYCLES * 20))


def test_kill9_loop_under_flush_always_loses_nothing_acknowledged(broker_factory):
    figures = run_crash_loop(broker_factory, CYCLES, flush="always", records_per_s=RATE)
    print(figures.line())
    assert figures.cycles == CYCLES
    assert figures.acked > CYCLES * 100, "too few records acknowledged to prove anything"


@pytest.mark.parametrize("flush", ["interval:200", "os"])
def test_kill9_loop_under_other_flush_policies_loses_nothing_acknowledged(broker_factory, flush):
    """A process crash does not lose the page cache, so `interval` and `os` must lose
    nothing acknowledged to kill -9 either (a machine crash is another matter)."""
    figures = run_crash_loop(broker_factory, CYCLES_OTHER, flush=flush, records_per_s=RATE)
    print(f"[{flush}] {figures.line()}")
    assert figures.cycles == CYCLES_OTHER


@pytest.mark.skipif("HERALD_CRASH_FLUSH" not in os.environ, reason="run by scripts/crash-test.sh")
def test_crash_loop_from_the_script(broker_factory):
    """The long run: scripts/crash-test.sh sets the cycles, rate and flush policy."""
    figures = run_crash_loop(broker_factory, CYCLES, flush=os.environ["HERALD_CRASH_FLUSH"],
                             records_per_s=RATE)
    print(figures.line())
