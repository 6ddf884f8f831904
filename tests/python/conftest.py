"""Fixtures that run the real `herald` binary for the integration tests.

Every test gets its own broker: a fresh temporary data directory and a free
port on 127.0.0.1, so tests cannot see each other's topics or groups. The
`Broker` helper can also stop (SIGTERM), kill -9 and restart the broker on the
same data directory and port, which is what the restart and crash tests need.

The binary comes from $HERALD_BIN (scripts/test.sh sets it), else
target/debug/herald in the repository.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from herald_support import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
HERALD_BIN = Path(os.environ.get("HERALD_BIN") or REPO_ROOT / "target" / "debug" / "herald")

# A broker must accept TCP connections this soon after it was started.
STARTUP_TIMEOUT_S = 20.0
# After SIGTERM a broker must have exited this soon, else it is killed.
SHUTDOWN_TIMEOUT_S = 15.0
# Group joins wait this long for more members; Kafka's default (3 s) makes tests slow.
GROUP_INITIAL_REBALANCE_DELAY_MS = "100"


_AMQP_SUPPORTED: bool | None = None
_SERVE_HELP: str | None = None


def _serve_help() -> str:
    """`herald serve --help` of the binary under test, asked once per run."""
    global _SERVE_HELP
    if _SERVE_HELP is None:
        _SERVE_HELP = ""
        if HERALD_BIN.exists():
            try:
                env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
                out = subprocess.run([str(HERALD_BIN), "serve", "--help"], env=env, capture_output=True,
                                     text=True, timeout=30)
                _SERVE_HELP = out.stdout + out.stderr
            except (OSError, subprocess.SubprocessError):
                pass
    return _SERVE_HELP


def registry_supported() -> bool:
    """Whether this herald binary has a schema registry listener (`--registry-listen`);
    every test broker then gets it on a free port, so none takes the default 8081."""
    return "--registry-listen" in _serve_help()


def amqp_supported() -> bool:
    """Whether this herald binary has an AMQP listener (`herald serve --help` names
    `--amqp-listen`). Asked once per run; until it does, Broker.amqp_port is None and
    the AMQP tests skip."""
    global _AMQP_SUPPORTED
    if _AMQP_SUPPORTED is None and HERALD_BIN.exists():
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
            out = subprocess.run([str(HERALD_BIN), "serve", "--help"], env=env, capture_output=True,
                                 text=True, timeout=30)
            _AMQP_SUPPORTED = "--amqp-listen" in out.stdout + out.stderr
        except (OSError, subprocess.SubprocessError):
            _AMQP_SUPPORTED = False
    return bool(_AMQP_SUPPORTED)


class BrokerExited(RuntimeError):
    """The broker process ended when it should have been running."""


class Broker:
    """One `herald serve` process bound to a fixed data directory and port.

    stop/kill/start may be called any number of times; each start appends to the
    same log file, and `stderr_tail()` shows the current run's output.
    """

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        port: int | None = None,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        http: bool = True,
    ):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        # The HTTP API (health, metrics, topics, groups), on its own free port; with
        # http=False the command line leaves the HTTP listener to the broker's settings
        # (environment, file, default) and start() does not wait for it.
        self.http = http
        self.http_port = free_port(avoid=(self.port,))
        # AMQP 0-9-1 listener, only when the binary has one (see amqp_supported).
        self.amqp_port = free_port(avoid=(self.port, self.http_port)) if amqp_supported() else None
        # Schema registry listener, only when the binary has one; a test that passes its
        # own --registry-listen in extra_args keeps it.
        self.registry_port = (free_port(avoid=(self.port, self.http_port, self.amqp_port or 0))
                              if registry_supported() and "--registry-listen" not in (extra_args or [])
                              else None)
        # The event store listener (on by default in the broker): a free port too, unless
        # the test passes its own --eventstore-listen.
        self._eventstore_flag = "--eventstore-listen" not in (extra_args or [])
        self.eventstore_port = (free_port(avoid=(self.port, self.http_port, self.amqp_port or 0,
                                                 self.registry_port or 0))
                                if self._eventstore_flag else None)
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_start = 0
        # Set when the test itself stopped or killed the broker, so teardown does
        # not mistake that for a crash.
        self._exit_expected = False
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def registry_url(self) -> str:
        assert self.registry_port, "this herald binary has no schema registry listener"
        return f"http://{self.host}:{self.registry_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "broker was never started"
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            str(HERALD_BIN),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--kafka-listen",
            self.bootstrap,
            *(["--http-listen", f"{self.host}:{self.http_port}"] if self.http else []),
            *(["--amqp-listen", f"{self.host}:{self.amqp_port}"] if self.amqp_port else []),
            *(["--registry-listen", f"{self.host}:{self.registry_port}"] if self.registry_port else []),
            *(["--eventstore-listen", f"{self.host}:{self.eventstore_port}"] if self._eventstore_flag else []),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        # Inherited HERALD_* variables (say a developer's HERALD_BOOTSTRAP or
        # HERALD_DATA_DIR) must not leak into the broker under test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env["HERALD_GROUP_INITIAL_REBALANCE_DELAY_MS"] = GROUP_INITIAL_REBALANCE_DELAY_MS
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        if not HERALD_BIN.exists():
            pytest.fail(f"herald binary not found at {HERALD_BIN}; run `cargo build` or set HERALD_BIN")
        assert not self.is_running(), "broker already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_start = self._log_file.tell()
        self._log_file.write(f"\n===== start #{self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self._exit_expected = False
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        self.starts += 1
        self.wait_listening(timeout_s)

    def wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise BrokerExited(
                    f"herald exited with code {self.proc.returncode} during startup; "
                    f"output tail:\n{self.stderr_tail()}"
                )
            try:
                ports = [self.port, *([self.http_port] if self.http else []),
                         *([self.amqp_port] if self.amqp_port else []),
                         *([self.registry_port] if self.registry_port else [])]
                for port in ports:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        pass
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"herald did not accept connections on {self.bootstrap} within {timeout_s}s; "
                    f"output tail:\n{self.stderr_tail()}"
                )
            time.sleep(0.05)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_running(self) -> None:
        if not self.is_running():
            raise BrokerExited(
                f"herald is not running (exit code {self.proc.returncode if self.proc else None}); "
                f"output tail:\n{self.stderr_tail()}"
            )

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code
        (negative signal number if it had to be killed)."""
        if self.proc is None:
            return 0
        self._exit_expected = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_log()
        return self.proc.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the broker; its exit is then expected, not a crash."""
        self._exit_expected = True
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9: no chance to flush or close anything."""
        if self.proc is None:
            return
        self._exit_expected = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def restart(self) -> int:
        code = self.stop()
        self.start()
        return code

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stderr_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(text.splitlines()[-lines:])

    def died_unexpectedly(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None and not self._exit_expected


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Remember each phase's outcome on the item so fixtures can see whether the
    # test failed and print the broker's log only then.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def broker_factory(tmp_path, request):
    """Make brokers with custom flags/env; all are torn down after the test.

    A broker that died on its own during the test fails the test at teardown,
    so a crash is never hidden behind a passing assertion.
    """
    brokers: list[Broker] = []

    def make(extra_args=None, extra_env=None, start=True, port=None, http=True) -> Broker:
        n = len(brokers)
        b = Broker(
            data_dir=tmp_path / f"data{n}",
            log_path=tmp_path / f"broker{n}.log",
            port=port,
            extra_args=extra_args,
            extra_env=extra_env,
            http=http,
        )
        brokers.append(b)
        if start:
            b.start()
        return b

    yield make

    call_report = getattr(request.node, "rep_call", None)
    if call_report is not None and call_report.failed:
        for b in brokers:
            print(f"----- herald log ({b.bootstrap}, {b.log_path}) -----\n{b.stderr_tail(120)}")

    crashed = []
    for b in brokers:
        if b.died_unexpectedly():
            why = ""
            if b.proc.returncode == 0:
                why = (" (a clean exit this test did not ask for: a SIGTERM/SIGINT from some other "
                       "process, e.g. a `pkill herald` elsewhere on the machine)")
            crashed.append(f"broker on {b.bootstrap} exited with code {b.proc.returncode}{why}:\n{b.stderr_tail()}")
        b.stop()
    if crashed:
        pytest.fail("herald died during the test:\n" + "\n\n".join(crashed), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running broker with default settings (topics auto-create)."""
    return broker_factory()
