"""Shared fixtures for the end-to-end tests: the real `millrace` binary on a free port with a
temporary data directory.

* `MILLRACE_BIN` names the binary (default: target/debug/millrace of this checkout).
* Each test gets its own broker (`broker`), or several / restarts via `broker_factory`.
* Teardown sends SIGTERM and waits; a broker that died on its own during the test, or that does
  not exit cleanly (status 0) on SIGTERM, fails the test's teardown.
* When a test fails, the stderr of every broker it started is attached to the report.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

MILLRACE_BIN = os.environ.get(
    "MILLRACE_BIN",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "debug", "millrace"))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    """One broker process (restartable on the same port and data directory)."""

    def __init__(self, data_dir: Path, log_path: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.stopped = False  # stopped by the test (stop/restart), not died on its own

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no broker log>"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        self.stopped = False
        cmd = [MILLRACE_BIN, "serve", "--listen", self.bootstrap, "--data-dir",
               str(self.data_dir), *self.extra_args]
        env = dict(os.environ, NO_COLOR="1")
        env.setdefault("RUST_LOG", "info")
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            log.write(f"===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker exited with status {self.proc.returncode} during start-up:\n"
                    + self.log_text())
            if port_open(self.port):
                return
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"broker did not accept connections within {START_TIMEOUT}s:\n"
                           + self.log_text())

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Sends `sig` and waits for the exit; returns the exit status."""
        assert self.proc is not None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"broker did not exit within {timeout}s of signal {sig}")
        # The port must be free again before a restart on it.
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.proc.returncode

    def restart(self, sig: int = signal.SIGTERM) -> int:
        rc = self.stop(sig)
        self.start()
        return rc


def pytest_report_header(config):
    try:
        st = os.stat(MILLRACE_BIN)
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
        return f"millrace binary: {MILLRACE_BIN} (modified {built})"
    except OSError as e:
        return f"millrace binary: {MILLRACE_BIN} ({e.strerror})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        brokers = getattr(item, "_millrace_brokers", [])
        for i, b in enumerate(brokers):
            rep.sections.append((f"millrace broker #{i} stderr ({b.log_path})", b.log_text()))


@pytest.fixture
def broker_factory(request, tmp_path):
    """Starts brokers: `broker_factory(extra_args=[...], start=True, env={...})`."""
    if not os.access(MILLRACE_BIN, os.X_OK):
        pytest.fail(f"no executable broker at {MILLRACE_BIN} (set MILLRACE_BIN or build it)",
                    pytrace=False)
    brokers: list[Broker] = []
    request.node._millrace_brokers = brokers

    def make(extra_args: list[str] | None = None, start: bool = True,
             env: dict[str, str] | None = None) -> Broker:
        n = len(brokers)
        b = Broker(tmp_path / f"data{n}", tmp_path / f"broker{n}.log", extra_args, env)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield make

    problems = []
    for i, b in enumerate(brokers):
        if b.proc is None:
            continue
        if b.proc.poll() is not None:
            if not b.stopped:
                problems.append(f"broker #{i} died during the test with status "
                                f"{b.proc.returncode}")
            continue
        rc = b.stop(signal.SIGTERM)
        if rc != 0:
            problems.append(f"broker #{i} exited with status {rc} after SIGTERM")
    if problems:  # (the brokers' stderr is attached to the teardown report)
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.fixture
def topic_name(request) -> str:
    """A unique, legal topic name derived from the test name."""
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in request.node.name)
    return f"{base[:150]}-{uuid.uuid4().hex[:8]}"
