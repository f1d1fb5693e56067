"""End-to-end ``backfill``: the firmware app in ``micropython`` on the unix board, a real Mosquitto.

The test plays a head-end that lost some uplinks: it picks a range of
sequence numbers it already received, ignores them, and sends an
authenticated ``backfill`` downlink (signed with ``firmware.core.auth``, as
``headend/commands.py`` does).  The meter must publish exactly those uplinks
again, byte for byte (same ``s``), from its flash outbox (they were PUBACKed
and released long ago), then the ack with ``n`` and ``lo``; after a restart
the same records are still there.  Meter time runs 300x (a 900 s interval
closes every 3 s).
"""
import threading

from firmware.core import auth
from firmware.protocol import messages

from hil_tests.conftest import MeterApp, Uplinks, wait_for
from hil_tests.test_app_unix import KEY_HEX, METER_ID, START_T, settings

EXPIRES = START_T + 30 * 86400


class RawUplinks(Uplinks):
    """``Uplinks`` that also keeps every (topic, raw payload) in arrival order."""

    def __init__(self, *args, **kw):
        self.raw = []
        self.raw_lock = threading.Lock()
        Uplinks.__init__(self, *args, **kw)

    def _on_message(self, client, userdata, msg):
        with self.raw_lock:
            self.raw.append((msg.topic, bytes(msg.payload)))
        Uplinks._on_message(self, client, userdata, msg)

    def snapshot(self):
        """[(s, topic, payload)] of everything received so far."""
        with self.raw_lock:
            raw = list(self.raw)
        out = []
        for topic, payload in raw:
            out.append((messages.decode_uplink(topic, payload)["s"], topic, payload))
        return out

    def send(self, counter, cid, fields):
        cmd = auth.make_command(bytes.fromhex(KEY_HEX), "backfill", METER_ID, counter, EXPIRES,
                                [cid] + fields)
        self.publish(messages.command_topic(METER_ID), messages.encode_command(cmd))

    def ack(self, cid, timeout_s=20):
        return self.wait(lambda u: [b for b in u.of("ack") if b["id"] == cid], timeout_s,
                         "the ack of " + cid)[0]


def _resent_after(up, mark, first, last):
    """Uplinks with first <= s <= last received after the first ``mark`` messages."""
    return [(s, t, p) for s, t, p in up.snapshot()[mark:] if first <= s <= last]


def test_backfill_republishes_exactly_the_held_uplinks_byte_identical_then_acks_n_and_lo(
        broker, world):
    up = world.add(RawUplinks(*broker, meter_id=METER_ID))
    app = world.add(MeterApp(settings(broker, energy_source="pulses"), start_t=START_T))
    app.start()
    app.control("pulses 640")  # 200 Wh at 3200 imp/kWh: the readings carry energy
    up.wait(lambda u: len(u.of("reading")) >= 3, 40, "three readings")
    wait_for(lambda: app.cli("info").split("outbox=")[1].split()[0] == "0", 20,
             "the outbox to be fully PUBACKed (released)")

    # the "lost" range: from the first reading through the second-to-last one received
    got = up.snapshot()
    reading_s = [b["s"] for b in up.of("reading")]
    first, last = reading_s[0], reading_s[-2]
    lost = {s: (t, p) for s, t, p in got if first <= s <= last}
    assert sorted(lost) == list(range(first, last + 1)), "the subscriber saw every s once"
    mark = len(got)

    up.send(1, "BF-1", [first, last])
    ack = up.ack("BF-1")
    assert (ack["r"], ack["rn"], ack["c"]) == (0, "OK", 1)
    assert ack["n"] == last - first + 1, ack
    assert ack["lo"] == 1, ack  # nothing erased yet: the outbox still holds s = 1
    again = _resent_after(up, mark, first, last)
    assert [s for s, _, _ in again] == list(range(first, last + 1)), \
        "exactly the range, once each, in order"
    for s, topic, payload in again:
        assert (topic, payload) == lost[s], "s=%d re-sent byte-identical on the same topic" % s
    # they came before the ack (the ack's s is newer than the range)
    order = [s for s, _, _ in up.snapshot()[mark:]]
    assert order.index(ack["s"]) > order.index(last)
    # nothing else came twice
    seen = [s for s, _, _ in up.snapshot() if not first <= s <= last]
    assert len(seen) == len(set(seen)), "only the requested range is re-sent"

    # a reversed range is BAD_VALUE, acked once, nothing re-sent
    mark = len(up.snapshot())
    up.send(2, "BF-2", [last, first])
    bad = up.ack("BF-2")
    assert (bad["r"], bad["rn"]) == (9, "BAD_VALUE") and "n" not in bad
    assert _resent_after(up, mark, first, last) == []

    # the released records live in flash: after a restart a backfill still finds them
    app.stop()
    app.start(start_t=START_T + 3600)
    mark = len(up.snapshot())
    up.send(3, "BF-3", [first, first + 1])
    ack3 = up.ack("BF-3")
    assert (ack3["r"], ack3["n"], ack3["lo"]) == (0, 2, 1), ack3
    after = _resent_after(up, mark, first, first + 1)
    assert [(s, t, p) for s, t, p in after] == [(s,) + lost[s] for s in (first, first + 1)]
    assert not up.errors, up.errors
    assert app.proc.poll() is None, app.log()
