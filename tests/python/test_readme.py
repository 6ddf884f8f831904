"""README.md's examples run as shown (issue 11).

scripts/readme_check.py starts a broker of its own, runs every `console` and `python`
block of the README and compares their output with what the README shows; the
conventions are at the top of that script. The second test proves the check can
fail: one shown output line changed in a copy of the README must be reported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HERALD_BIN

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "readme_check.py"

pytestmark = pytest.mark.timeout(240)


def run_check(*args: str, timeout_s: float = 200) -> subprocess.CompletedProcess:
    env = dict(os.environ, HERALD_BIN=str(HERALD_BIN))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout_s, cwd=REPO_ROOT)


def load_script():
    spec = importlib.util.spec_from_file_location("readme_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_readme_examples_run_as_shown():
    result = run_check()
    if result.returncode != 0:
        pytest.fail(f"README.md examples drifted (exit {result.returncode}):\n{result.stdout}\n{result.stderr}",
                    pytrace=False)
    assert "0 failed" in result.stdout, result.stdout


def test_readme_check_reports_a_changed_output_line(tmp_path):
    check = load_script()
    text = (REPO_ROOT / "README.md").read_text()
    lines = text.splitlines(keepends=True)
    # The first plain output line (no `...`) the README shows for a command that runs.
    def shown_lines():
        for block in check.parse_blocks(text):
            if block.lang != "console" or block.skip is not None:
                continue
            for command in check.parse_console(block):
                if check.STAND_IN_RE.match(command.text):
                    continue
                first_output = command.line + command.text.count("\n")  # 0-based index
                for n, shown in enumerate(command.expected):
                    if shown.strip() and "..." not in shown:
                        yield command, first_output + n

    command, target = next(shown_lines(), (None, None))
    assert command is not None, "README.md has no console block with a shown output line"
    original = lines[target].rstrip("\n")
    lines[target] = original + " (changed)\n"
    mutated = tmp_path / "README.md"
    mutated.write_text("".join(lines))

    result = run_check("--readme", str(mutated), timeout_s=120)
    assert result.returncode == 1, f"a changed output line went unnoticed:\n{result.stdout}\n{result.stderr}"
    assert f"FAILED README.md line {command.line} " in result.stdout, result.stdout
    assert f"-{original} (changed)" in result.stdout, result.stdout
    assert f"+{original}" in result.stdout, result.stdout
