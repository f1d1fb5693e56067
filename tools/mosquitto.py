"""A private Mosquitto broker process on a free 127.0.0.1 port.

Used by the tests (through ``firmware/tests/host/conftest.py``), by
``urja-sim --mode networked`` and by anything else that needs a broker it
owns: ``Broker(workdir)`` writes a config with persistence in ``workdir``,
``start()`` waits until it listens, ``stop()`` sends SIGTERM (sessions are
saved), ``restart()`` keeps the port.  ``host, port = broker`` works.
``running_broker()`` is the whole life of one: a fresh temp dir, started,
stopped and removed on exit.
"""
import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time


class BrokerError(RuntimeError):
    """Mosquitto is missing, exited, or did not start listening."""


def mosquitto_command():
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not exe:
        raise BrokerError("mosquitto not found: apt-get install mosquitto (Debian/Ubuntu) "
                          "or brew install mosquitto")
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
                proc, self.proc = self.proc, None
                out = proc.stdout.read().decode(errors="replace")
                proc.stdout.close()
                raise BrokerError("mosquitto exited with %s:\n%s\n%s" % (
                    proc.returncode, out, self.log_text()))
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError("mosquitto did not listen on port %d within %ss" % (self.port, timeout_s))

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


@contextlib.contextmanager
def running_broker(extra_config="", prefix="urja-mosquitto-"):
    """A started ``Broker`` in a fresh temp dir; stopped and its dir removed on exit.

    Raises ``BrokerError`` (from ``start``) when Mosquitto is missing or does not listen.

    >>> with running_broker() as broker:          # doctest: +SKIP
    ...     host, port = broker
    """
    workdir = tempfile.mkdtemp(prefix=prefix)
    broker = Broker(workdir, extra_config=extra_config)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
