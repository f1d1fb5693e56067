"""Shared fixtures for host tests: a private Mosquitto broker.

``mosquitto`` (session scope) starts ``/usr/sbin/mosquitto`` on a free
127.0.0.1 port with a temp config and persistence directory, and returns a
``Broker``: ``host, port = mosquitto`` works, and ``stop()`` / ``start()`` /
``restart()`` keep the same port and persisted sessions (for outage tests).
A test that stops the broker must start it again (try/finally).  No broker
installed is a failure with the install command, never a skip.
"""
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

from tools import mosquitto as _mosquitto

# Property tests assert behaviour, not speed: on a loaded 2-core CI machine an
# example may take longer than hypothesis' default 200 ms deadline.
settings.register_profile("urja", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("urja")

free_port = _mosquitto.free_port


def mosquitto_command():
    try:
        return _mosquitto.mosquitto_command()
    except _mosquitto.BrokerError as err:
        pytest.fail(str(err), pytrace=False)


class Broker(_mosquitto.Broker):
    """The library broker; a failure to start fails the test with its message."""

    def start(self, timeout_s=10.0):
        try:
            return super().start(timeout_s)
        except _mosquitto.BrokerError as err:
            pytest.fail(str(err), pytrace=False)


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
