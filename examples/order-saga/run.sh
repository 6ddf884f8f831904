#!/usr/bin/env bash
# The order saga against a fresh herald (free ports, temporary data dir), with the
# repository's test clients: `examples/order-saga/run.sh [--orders N] [--verbose]`.
# Uses $HERALD_BIN, else target/release/herald or target/debug/herald, else builds a
# release binary; the Python client comes from the repo's .venv (scripts/test.sh makes it),
# else the python3 on PATH (which then needs `pip install kurrentdbclient`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="$repo/.venv/bin/python"
[[ -x "$python" ]] || python=python3
exec "$python" "$here/saga.py" --start-broker "$@"
