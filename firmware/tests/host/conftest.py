"""Shared fixtures for host tests: a private Mosquitto broker.

``mosquitto`` (session scope) starts ``/usr/sbin/mosquitto`` on a free
127.0.0.1 port with a temp config and persistence directory, and returns a
``Broker``: ``host, port = mosquitto`` works, and ``stop()`` / ``start()`` /
``restart()`` keep the same port and persisted sessions (for outage tests).
A test that stops the broker must start it again (try/finally).  No broker
installed is a failure with the install command, never a skip.
"""
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def mosquitto_command():
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not exe:
        pytest.fail("mosquitto not found: apt-get install mosquitto", pytrace=False)
    return exe


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process on 127.0.0.1:port; iterable as (host, port)."""

    def __init__(self, workdir, port=None, extra_config=""):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = pathlib.Path(workdir)
        self.config = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Run as root, Mosquitto drops to user "mosquitto": without this it can
            # write neither its log nor mosquitto.db, and a restart loses every session.
            os.chmod(self.workdir, 0o777)
            os.chmod(self.workdir / "data", 0o777)
        self.config.write_text(
            "listener %d 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            "persistence_location %s/\n"
            "log_dest file %s\n"
            "log_type all\n"
            "%s\n" % (self.port, self.workdir / "data", self.log, extra_config))
        self.proc = None

    def __iter__(self):
        return iter((self.host, self.port))

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s=10.0):
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        self.proc = subprocess.Popen([mosquitto_command(), "-c", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")
                pytest.fail("mosquitto exited with %s:\n%s\n%s" % (
                    self.proc.returncode, out, self.log_text()), pytrace=False)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("mosquitto did not listen on port %d within %ss" % (self.port, timeout_s),
                    pytrace=False)

    def stop(self, timeout_s=10.0):
        """Stop the broker (SIGTERM, so it saves persistent sessions)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="session")
def mosquitto():
    """A private Mosquitto for the whole test session: ``host, port = mosquitto``."""
    workdir = tempfile.mkdtemp(prefix="urja-mosquitto-")
    broker = Broker(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
