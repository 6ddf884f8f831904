"""examples/order-saga runs green against the debug binary: twelve orders through the
saga (some out of stock and refunded), the read model, the `$bc-` traces and the
replay that must write nothing new. The example checks its own outcome and exits
non-zero on any mismatch; this test runs it as a user would and reads its verdict."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import HERALD_BIN, REPO_ROOT

pytestmark = pytest.mark.timeout(180)

SAGA = REPO_ROOT / "examples" / "order-saga" / "saga.py"
RUN_TIMEOUT_S = 150


def run_saga(*args: str) -> subprocess.CompletedProcess:
    if not HERALD_BIN.exists():
        pytest.fail(f"herald binary not found at {HERALD_BIN}; run `cargo build` or set HERALD_BIN")
    env = {**os.environ, "HERALD_BIN": str(HERALD_BIN)}
    return subprocess.run([sys.executable, str(SAGA), "--start-broker", *args], env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)


def test_order_saga_settles_as_planned_and_replays_idempotently():
    done = run_saga("--orders", "12")
    assert done.returncode == 0, f"saga.py exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "all orders as expected" in out
    # Both paths ran: some orders confirmed, some cancelled (refunded), and a trace of each.
    assert " confirmed\n" in out and " cancelled\n" in out
    assert "(confirmed):" in out and "(cancelled):" in out
    assert "InventoryReservationFailed" in out and "PaymentRefunded" in out
    assert "replayed 40 events" in out


def test_a_bad_argument_is_refused_before_a_broker_starts():
    done = subprocess.run([sys.executable, str(SAGA), "--start-broker", "--orders", "0"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "--orders must be at least 1" in done.stderr
