"""Fixtures of the simulator's networked tests: a private broker and a migrated SQLite head-end."""
import pytest

from headend import migrations
from headend.db import make_engine
from headend.ingest import MOSQUITTO_INGEST_CONF
from tools.mosquitto import BrokerError, running_broker


@pytest.fixture
def broker():
    """A private Mosquitto with the ingest settings and working persistence (the
    broker-outage runs stop and start it on the same port; sessions must survive)."""
    try:
        with running_broker(MOSQUITTO_INGEST_CONF, prefix="urja-sim-mqtt-") as b:
            yield b
    except BrokerError as err:  # Mosquitto missing or not listening: fail loudly, no traceback
        pytest.fail(str(err), pytrace=False)


@pytest.fixture
def sqlite_engine(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "urja.db")
    migrations.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()
