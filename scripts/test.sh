#!/usr/bin/env bash
# Full check of the repository: formatting, lints, build, unit tests, then the
# integration suite that drives the real `herald` binary with real Kafka clients
# (kafka-python and confluent-kafka from PyPI, kafkajs from npm).
#
# Runnable from any directory on a fresh machine that has Rust, Python 3.11 and
# Node 20: it installs the test clients itself (pip into .venv, npm into tests/js).
# Extra arguments are passed to pytest, e.g. `scripts/test.sh -k restart`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n==> %s\n' "$*"; }

python_bin="${PYTHON:-}"
if [[ -z "$python_bin" ]]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
            python_bin="$candidate"
            break
        fi
    done
fi
if [[ -z "$python_bin" ]]; then
    echo "error: no python3 found (need Python >= 3.10)" >&2
    exit 1
fi

step "python test clients (.venv)"
if [[ ! -x .venv/bin/python ]]; then
    if ! "$python_bin" -m venv .venv; then
        # Debian's own python3 ships venv/ensurepip in a separate package.
        rm -rf .venv
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            py_version="$("$python_bin" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
            apt-get update -qq
            apt-get install -y -qq "python${py_version}-venv" || apt-get install -y -qq python3-venv
            "$python_bin" -m venv .venv
        else
            echo "error: '$python_bin -m venv' failed; install the python3-venv package" >&2
            exit 1
        fi
    fi
fi
# Reinstall only when requirements changed: a stamp holds the hash it was built from.
req_hash="$(sha256sum tests/requirements.txt | cut -d' ' -f1)"
stamp=".venv/.requirements.sha256"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$req_hash" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    echo "$req_hash" >"$stamp"
fi

step "js test clients (tests/js)"
(
    cd tests/js
    if [[ -f package-lock.json ]]; then
        npm ci --no-audit --no-fund --loglevel=error
    else
        npm install --no-audit --no-fund --loglevel=error
    fi
)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build"
cargo build --workspace

step "cargo test"
cargo test --workspace

step "integration tests (pytest)"
export HERALD_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/herald"
exec .venv/bin/python -m pytest tests/python -q --timeout 300 "$@"
