#!/usr/bin/env python3
"""Run README.md's examples against a fresh broker and check their output.

    .venv/bin/python scripts/readme_check.py [--readme FILE] [--keep-going] [--reverse]
                                             [--section TITLE] [--list] [--keep-dir]

It starts `herald serve` (HERALD_BIN, else target/debug/herald) with default settings
on free ports (port 0, read back from its ready line) and a temporary data directory, runs the README's examples top to bottom, and exits non-zero
with a report naming the README line of the first example whose command failed or whose
output no longer matches what the README shows (`--keep-going`: every one).
tests/python/test_readme.py runs it, so `scripts/test.sh` does too.

The README convention (for whoever edits README.md):

- Shell examples are ```console blocks. A line starting with `$ ` is a command; it
  continues on the next lines while the shell needs more (an open quote, a trailing
  `\\`), written without a prompt. The lines after a command, up to the next `$ `,
  are its output as a terminal shows it (stdout and stderr together); a command with
  no lines after it must print nothing (`$ # ...` is a comment line: it prints
  nothing). Each `## ` section runs in one shell of its
  own (variables carry from one block to the next inside a section, not across
  sections), in a temporary directory, with stdin from /dev/null.
- A command must exit 0, unless its output ends with a line `[exit N]`: then it must
  exit N (for examples of errors, or `curl --max-time`, which exits 28).
- ```python blocks run each as its own process (this script's Python, so the test
  clients are importable), for at most 60 s, and must exit 0. A ```text block right
  after one (nothing but blank lines between) is its expected standard output;
  without one it must print nothing. A snippet that consumes must end by itself
  (`consumer_timeout_ms`, a count), as a reader's copy would have to.
- Matching, line by line: `...` inside a line matches any text on that line, and a
  line that is only `...` matches any number of lines (none too): use them for
  timestamps, ids, figures, and lines other examples' data adds (a `topics list`).
  Runs of spaces and tabs count as one space, trailing spaces and trailing blank
  lines are ignored. An expected line that starts with whitespace continues the line
  before it (joined without a space) when that line has a `{` or `[` not closed yet:
  that is how long JSON answers are wrapped for reading (break after a `,`; keep the
  brackets an elision with `...` spans balanced, `[...]`).
- Addresses: `:9092` and `:8080` (and `:5672` once there is an AMQP listener) in
  commands, snippets and shown output become the test broker's ports, and the CLI's
  defaults point at it (HERALD_BOOTSTRAP, HERALD_HTTP), so `herald topics list` with
  no `--bootstrap` talks to it too. The README's addresses stay the defaults a reader has.
- Commands that run forever or build (`herald serve`, `cargo run ... serve`,
  `cargo build`) are not run: this script's broker and HERALD_BIN (put first on
  PATH) stand in for them; what is shown after them is not compared.
- Every example uses topics, groups and subscriptions of its own section, so sections
  run in any order and on a broker that has other data (`--reverse` runs the sections
  last to first to check that).
- A block is not run when the line before it (blank lines aside) is
  `<!-- readme-check: skip: WHY -->` (benchmarks, long tests, anything needing more
  than one broker). ```sh / ```bash / ```shell blocks must carry that mark: a shell
  example is either checked (```console) or skipped on purpose, never forgotten.
- ```toml blocks are parsed, and each key must be a `herald serve` flag (the file's
  keys are the flag names with `_`).

Only the standard library is used (curl, bash and the Kafka client libraries the
snippets import come from the machine and the test venv).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib  # Python 3.11+; on 3.10 ```toml blocks are not checked
except ImportError:
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
DEFAULT_README = REPO / "README.md"

# The default port of each listener, as the README writes it; the test broker's port
# replaces it. Every `--<name>-listen` flag `herald serve` has gets 127.0.0.1:0, so a
# listener added later cannot collide with another broker on the machine either.
README_PORTS = {"kafka": "9092", "http": "8080", "amqp": "5672", "registry": "8081", "eventstore": "2113"}

COMMAND_TIMEOUT_S = 60.0
SNIPPET_TIMEOUT_S = 60.0
BROKER_START_TIMEOUT_S = 30.0

SKIP_RE = re.compile(r"^\s*<!--\s*readme-check:\s*skip\b:?\s*(.*?)\s*-->\s*$")
FENCE_OPEN_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
EXIT_RE = re.compile(r"^\[exit (\d+)\]$")
# Commands this script's own broker and binary stand in for.
STAND_IN_RE = re.compile(r"^\s*(herald\s+serve\b|cargo\s+run\b.*\bserve\b|cargo\s+build\b)")
RUN_LANGS = {"console", "python"}
SHELL_LANGS = {"sh", "bash", "shell", "zsh"}


# ---------------------------------------------------------------- README parsing


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    body: list[str]
    section: str  # the `## ` heading it is under ("" before the first)
    heading: str  # the nearest heading of any level
    skip: str | None = None  # the skip mark's reason, if marked
    output: Block | None = None  # a python block's ```text block


@dataclass
class Command:
    text: str  # the shell text, prompt removed, continuation lines included
    line: int  # README line of the `$ ` line
    expected: list[str]  # shown output lines (raw)
    expected_exit: int = 0


class ReadmeError(Exception):
    """The README breaks the convention (reported like a failed example)."""


def parse_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    section = heading = ""
    last_nonblank = ""
    prev_end = -1
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE_OPEN_RE.match(line)
        if m:
            indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
            body = []
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
                body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
                j += 1
            skip = SKIP_RE.match(last_nonblank)
            block = Block(lang, i + 1, body, section, heading,
                          skip=(skip.group(1) or "marked") if skip else None)
            prev = blocks[-1] if blocks else None
            if (lang == "text" and prev is not None and prev.lang == "python" and prev.output is None
                    and all(not l.strip() for l in lines[prev_end + 1:i])):
                prev.output = block
            else:
                blocks.append(block)
            prev_end = j
            last_nonblank = ""
            i = j + 1
            continue
        h = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if h:
            level, title = len(h.group(1)), h.group(2)
            if level <= 2:
                section = title
            heading = title
        if line.strip():
            last_nonblank = line
        i += 1
    return blocks


def shell_syntax(text: str) -> str | None:
    """None if `text` is a complete shell command; "more" while it is unfinished (open
    quote, trailing backslash, open compound command), as bash itself judges it; else
    bash's syntax error."""
    if text.rstrip("\n").endswith("\\"):
        return "more"
    r = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
    if r.returncode == 0:
        return None
    if "unexpected EOF" in r.stderr or "unexpected end of file" in r.stderr:
        return "more"
    return r.stderr.strip()


def parse_console(block: Block) -> list[Command]:
    commands: list[Command] = []
    body = block.body
    i = 0
    while i < len(body):
        line = body[i]
        if not (line.startswith("$ ") or line == "$"):
            if line.strip() and not commands:
                raise ReadmeError(f"README line {block.line + 1 + i}: a console block starts with a `$ ` command, "
                                  f"found {line!r}")
            if commands:
                commands[-1].expected.append(line)
            i += 1
            continue
        start = i
        text = line[2:]
        while (syntax := shell_syntax(text)) == "more":
            i += 1
            if i >= len(body):
                raise ReadmeError(f"README line {block.line + 1 + start}: the command never ends "
                                  f"(an open quote or a trailing backslash?)")
            text += "\n" + body[i]
        if syntax is not None:
            raise ReadmeError(f"README line {block.line + 1 + start}: not a valid shell command: {syntax}")
        commands.append(Command(text, block.line + 1 + start, []))
        i += 1
    for c in commands:
        while c.expected and not c.expected[-1].strip():
            c.expected.pop()
        if c.expected:
            m = EXIT_RE.match(c.expected[-1].strip())
            if m:
                c.expected_exit = int(m.group(1))
                c.expected.pop()
                while c.expected and not c.expected[-1].strip():
                    c.expected.pop()
    return commands


# ---------------------------------------------------------------- output matching


def brackets_open(text: str) -> int:
    """`{`/`[` minus `}`/`]` outside double-quoted strings."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return depth


def logical_lines(expected: list[str]) -> list[str]:
    """Join wrapped JSON: an indented line continues the one before while that one has
    an unclosed bracket."""
    out: list[str] = []
    for line in expected:
        if out and line[:1] in (" ", "\t") and line.strip() and brackets_open(out[-1]) > 0:
            out[-1] += line.strip()
        else:
            out.append(line)
    return out


def normalize(line: str) -> str:
    return re.sub(r"[ \t]+", " ", line).rstrip()


def line_pattern(line: str) -> re.Pattern:
    parts = normalize(line).split("...")
    return re.compile(".*".join(re.escape(p) for p in parts), re.DOTALL)


def output_matches(expected: list[str], actual: list[str]) -> bool:
    exp = [normalize(l) for l in expected]
    act = [normalize(l) for l in actual]
    pats = [None if e.strip() == "..." else line_pattern(e) for e in exp]
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(pats):
            result = j == len(act)
        elif pats[i] is None:
            result = any(match(i + 1, k) for k in range(j, len(act) + 1))
        else:
            result = j < len(act) and pats[i].fullmatch(act[j]) is not None and match(i + 1, j + 1)
        memo[key] = result
        return result

    return match(0, 0)


def trim(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# ---------------------------------------------------------------- the broker


class Broker:
    def __init__(self, binary: Path, workdir: Path):
        self.binary = binary
        self.data_dir = workdir / "data"
        self.log_path = workdir / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.kafka = self.http = ""
        self.port_map: dict[str, str] = {}

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.setdefault("RUST_LOG", "info")
        # Port 0: the broker picks free ports and says which in its ready line, so no
        # other broker on the machine can be hit by mistake.
        help_text = subprocess.run([str(self.binary), "serve", "--help"], capture_output=True,
                                   text=True, env=env).stdout
        listeners = sorted(set(re.findall(r"--([a-z]+)-listen\b", help_text)) | {"kafka", "http"})
        cmd = [str(self.binary), "serve", "--log-format", "json", "--data-dir", str(self.data_dir)]
        for name in listeners:
            cmd += [f"--{name}-listen", "127.0.0.1:0"]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herald exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if fields.get("message") == "herald is ready":
                    self.kafka, self.http = fields["kafka"], fields["http"]
                    # README port -> this broker's, for each listener the ready line names.
                    self.port_map = {port: str(fields[name]).rsplit(":", 1)[1]
                                     for name, port in README_PORTS.items()
                                     if ":" in str(fields.get(name, ""))}
                    return
            time.sleep(0.05)
        raise RuntimeError(f"herald not ready within {BROKER_START_TIMEOUT_S} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(lines[-n:])


# ---------------------------------------------------------------- running examples


class Shell:
    """One bash for a README section; commands run one at a time, output read up to a
    marker that carries the exit status."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.marker = f"__readme_check_{uuid.uuid4().hex}__"
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     cwd=cwd, start_new_session=True)

    def run(self, command: str, timeout_s: float) -> tuple[int | None, str]:
        """(exit status, output); the status is None on a timeout."""
        # `true` first: a command that is only a comment still makes a valid group.
        script = f"{{ true\n{command}\n}} </dev/null\nprintf '\\n%s %d\\n' {self.marker} \"$?\"\n"
        try:
            self.proc.stdin.write(script.encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return -1, "<the shell had exited>"
        buf = b""
        end_re = re.compile(rb"\n" + re.escape(self.marker.encode()) + rb" (\d+)\n")
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while True:
            m = end_re.search(buf)
            if m:
                return int(m.group(1)), buf[:m.start()].decode("utf-8", "replace")
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                return None, buf.decode("utf-8", "replace")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return -1, buf.decode("utf-8", "replace") + "\n<the shell exited>"
                buf += chunk

    def close(self) -> None:
        """End the shell, and anything an example left running in its session (killed
        while the shell, the group's leader, is still alive, so the group id is ours)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


@dataclass
class Failure:
    line: int
    section: str
    what: str  # the command or snippet
    detail: str


@dataclass
class Result:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class Runner:
    def __init__(self, broker: Broker, workdir: Path, binary: Path, keep_going: bool):
        self.broker = broker
        self.workdir = workdir
        self.keep_going = keep_going
        self.result = Result()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        self.env["PATH"] = f"{binary.parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["HERALD_BOOTSTRAP"] = broker.kafka
        self.env["HERALD_HTTP"] = f"http://{broker.http}"
        self.env["NO_COLOR"] = "1"
        self.env.pop("PYTHONPATH", None)
        self._serve_flags: set[str] | None = None
        self.binary = binary

    def ports(self, text: str) -> str:
        for readme_port, port in self.broker.port_map.items():
            text = re.sub(rf":{readme_port}\b", f":{port}", text)
        return text

    def fail(self, block: Block, line: int, what: str, detail: str) -> None:
        self.result.failures.append(Failure(line, block.section, what, detail))

    def mismatch(self, expected: list[str], actual: list[str]) -> str:
        diff = difflib.unified_diff(expected, actual, "README shows", "actual output", lineterm="", n=2)
        return "\n".join(diff)

    def run_section(self, blocks: list[Block]) -> bool:
        """Runs one `## ` section's blocks; False once something failed (and not
        keep_going)."""
        shell: Shell | None = None
        try:
            for block in blocks:
                where = f"README line {block.line} ({block.section or 'top'}: {block.heading}, ```{block.lang})"
                if block.skip is not None:
                    self.result.skipped.append(f"{where}: {block.skip}")
                    continue
                if block.lang in SHELL_LANGS:
                    self.fail(block, block.line, f"```{block.lang} block",
                              "shell examples are ```console blocks (checked), or carry "
                              "`<!-- readme-check: skip: WHY -->` on the line before")
                elif block.lang == "console":
                    if shell is None:
                        shell = Shell(self.env, self.workdir)
                    self.result.ran.append(where)
                    shell = self.run_console(block, shell)
                elif block.lang == "python":
                    self.result.ran.append(where)
                    self.run_python(block)
                elif block.lang == "toml":
                    self.result.ran.append(where)
                    self.check_toml(block)
                if not self.broker.alive():
                    self.fail(block, block.line, "(the broker)",
                              f"herald exited with {self.broker.proc.returncode}:\n{self.broker.log_tail()}")
                    return False
                if self.result.failures and not self.keep_going:
                    return False
            return True
        finally:
            if shell is not None:
                shell.close()

    def run_console(self, block: Block, shell: Shell) -> Shell:
        try:
            commands = parse_console(block)
        except ReadmeError as e:
            self.fail(block, block.line, "```console block", str(e))
            return shell
        for c in commands:
            if STAND_IN_RE.match(c.text):
                continue
            status, out = shell.run(self.ports(c.text), COMMAND_TIMEOUT_S)
            actual = trim(out)
            expected = logical_lines([self.ports(l) for l in c.expected])
            problems = []
            if status is None:
                problems.append(f"did not finish within {COMMAND_TIMEOUT_S:.0f} s; output so far:\n{out}")
                shell = Shell(self.env, self.workdir)
            elif status == -1:
                problems.append("the shell exited")
                shell = Shell(self.env, self.workdir)
            elif status != c.expected_exit:
                problems.append(f"exit status {status}, README expects {c.expected_exit}")
            if status is not None and not output_matches(expected, actual):
                problems.append("output differs:\n" + self.mismatch(expected, actual))
            if problems:
                self.fail(block, c.line, "$ " + c.text, "\n".join(problems))
                if not self.keep_going:
                    return shell
        return shell

    def run_python(self, block: Block) -> None:
        path = self.workdir / f"snippet_line{block.line}.py"
        path.write_text(self.ports("\n".join(block.body)) + "\n")
        expected = logical_lines([self.ports(l) for l in trim("\n".join(block.output.body))]) if block.output else []
        try:
            r = subprocess.run([sys.executable, str(path)], cwd=self.workdir, env=self.env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=SNIPPET_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            self.fail(block, block.line, "```python snippet",
                      f"did not finish within {SNIPPET_TIMEOUT_S:.0f} s (a consumer without "
                      f"consumer_timeout_ms or a count?); output so far:\n{out}")
            return
        problems = []
        if r.returncode != 0:
            problems.append(f"exit status {r.returncode}; stderr:\n{r.stderr.strip()}")
        actual = trim(r.stdout)
        if not output_matches(expected, actual):
            problems.append("stdout differs:\n" + self.mismatch(expected, actual))
            if r.stderr.strip() and r.returncode == 0:
                problems.append(f"stderr:\n{r.stderr.strip()}")
        if problems:
            self.fail(block, block.line, "```python snippet", "\n".join(problems))

    def serve_flags(self) -> set[str]:
        if self._serve_flags is None:
            r = subprocess.run([str(self.binary), "serve", "--help"], capture_output=True, text=True,
                               env=self.env)
            self._serve_flags = set(re.findall(r"--([a-z0-9-]+)", r.stdout))
        return self._serve_flags

    def check_toml(self, block: Block) -> None:
        if tomllib is None:
            return
        try:
            doc = tomllib.loads("\n".join(block.body))
        except tomllib.TOMLDecodeError as e:
            self.fail(block, block.line, "```toml block", f"not valid TOML: {e}")
            return
        unknown = [k for k in doc if k.replace("_", "-") not in self.serve_flags()]
        if unknown:
            self.fail(block, block.line, "```toml block",
                      f"keys that are not `herald serve` flags: {', '.join(unknown)}")


def sections_of(blocks: list[Block]) -> list[list[Block]]:
    out: list[list[Block]] = []
    for b in blocks:
        if not out or out[-1][0].section != b.section:
            out.append([])
        out[-1].append(b)
    return out


def report(result: Result, broker: Broker | None, elapsed: float, readme: str = "README.md") -> str:
    lines = [f"readme check: {len(result.ran)} blocks run, {len(result.skipped)} skipped, "
             f"{len(result.failures)} failed, {elapsed:.1f} s"]
    for f in result.failures:
        lines.append("")
        lines.append(f"FAILED {readme} line {f.line} (section {f.section or 'top'!r}):")
        lines.extend("    " + l for l in f.what.splitlines())
        lines.extend("  " + l for l in f.detail.splitlines())
    if result.failures and broker is not None:
        lines.append("")
        lines.append(f"broker log tail ({broker.log_path}):")
        lines.extend("  " + l for l in broker.log_tail(20).splitlines())
    if result.failures:
        lines.append("")
        lines.append("(the README conventions are at the top of scripts/readme_check.py)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", type=Path, default=DEFAULT_README)
    ap.add_argument("--keep-going", action="store_true", help="run on after a failure")
    ap.add_argument("--reverse", action="store_true", help="run the sections last to first")
    ap.add_argument("--list", action="store_true", help="list the blocks and what is done with each")
    ap.add_argument("--keep-dir", action="store_true", help="keep the temporary directory")
    ap.add_argument("--section", action="append", default=[],
                    help="run only the `## ` sections whose title contains this (repeatable)")
    args = ap.parse_args(argv)

    blocks = parse_blocks(args.readme.read_text())
    if args.list:
        for b in blocks:
            what = f"skip ({b.skip})" if b.skip else ("run" if b.lang in RUN_LANGS | {"toml"} else
                                                      "NOT ALLOWED" if b.lang in SHELL_LANGS else "-")
            print(f"line {b.line:5}  {b.section[:30]:30}  {b.lang or '(none)':8}  {what}")
        return 0

    binary = Path(os.environ.get("HERALD_BIN") or REPO / "target" / "debug" / "herald").resolve()
    if not binary.exists():
        print(f"readme check: herald binary not found at {binary}; run `cargo build -p herald` or set HERALD_BIN")
        return 2
    for tool in ("bash", "curl"):
        if shutil.which(tool) is None:
            print(f"readme check: `{tool}` is not installed; the README's examples need it")
            return 2

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="herald-readme-"))
    broker = Broker(binary, workdir)
    result = Result()
    try:
        try:
            broker.start()
        except RuntimeError as e:
            print(f"readme check: {e}")
            return 1
        runner = Runner(broker, workdir, binary, args.keep_going)
        result = runner.result
        sections = sections_of(blocks)
        if args.section:
            sections = [sec for sec in sections
                        if any(want.lower() in sec[0].section.lower() for want in args.section)]
        if args.reverse:
            sections.reverse()
        for section in sections:
            if not runner.run_section(section) and not args.keep_going:
                break
        print(report(result, broker, time.monotonic() - started, args.readme.name))
    finally:
        broker.stop()
        if args.keep_dir:
            print(f"(work directory kept: {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
