"""A simulated meter's answer to ``backfill`` on its feeder link, without a broker.

The answer is the firmware app's (``App.backfill`` on the meter's port); these
tests pin what the link does around it: the re-sent uplinks go out first,
byte-identical with their ``s``, before newer ones and before the ack; their
PUBACKs release nothing; a link loss sends the un-PUBACKed ones again; a
reboot forgets the queued ranges (RAM), as docs/protocol.md says.
"""
import queue

from firmware.app.uplink import Uplink
from firmware.core.outbox import Outbox, RamSegments, RamSlots
from firmware.protocol import cbor, messages
from simulator.net_link import FeederLink, MeterPort

T0 = 1795737600
MID = "UJ-0000001"


class FakeClient:
    """Records what the link publishes; every publish gets the next message id."""

    def __init__(self):
        self.sent = []  # (topic, s)

    def publish(self, topic, body, qos=0, retain=False):
        self.sent.append((topic, cbor.decode(body)["s"]))

        class Info:
            mid = len(self.sent)
        return Info()

    def disconnect(self):
        pass

    def loop_stop(self):
        pass


def meter_with_acked(n, segments=4, segment_bytes=512):
    """A port whose outbox holds ``n`` uplinks, all published and PUBACKed (released)."""
    box = Outbox(RamSegments(segments, segment_bytes), RamSlots())
    up = Uplink(box, MID)
    for i in range(n):
        up.ack(T0 + i, "C-%d" % i, i + 1, 0, "OK")
    box.ack(n, T0 + n)
    return up, MeterPort(MID, box)


def up_link(port):
    link = FeederLink(0, "127.0.0.1", 1, {MID: port}, queue.Queue())
    link.client, link.state = FakeClient(), "up"
    return link


def puback_all(link):
    for mid in sorted(link.mids):
        link.on_event(("puback", 0, link.gen, mid), T0 + 100)


def test_backfill_resends_held_uplinks_first_then_newer_ones_and_the_ack():
    up, port = meter_with_acked(10)
    link = up_link(port)
    assert link.backfill(MID, 3, 5) == (3, 1)  # n: 3 held in range, lo: oldest held s
    up.ack(T0 + 50, "BF-1-1", 11, 0, "OK", "backfill 3..5", 3, 1)  # the meter's ack: s 11
    link.pump()
    assert [s for _, s in link.client.sent] == [3, 4, 5, 11]
    assert {t for t, _ in link.client.sent} == {messages.topic(MID, messages.ACK)}
    assert link.republished == 3 and link.published == 1
    puback_all(link)
    assert port.outbox.released == 11 and not port.resending and not port.backfills


def test_a_range_not_published_yet_is_only_counted_and_goes_out_once():
    up, port = meter_with_acked(4)
    up.ack(T0 + 5, "C-new", 5, 0, "OK")  # s 5: queued, never published
    link = up_link(port)
    assert link.backfill(MID, 1, 5) == (5, 1)
    link.pump()
    assert [s for _, s in link.client.sent] == [1, 2, 3, 4, 5]


def test_a_link_loss_sends_the_unpubacked_resends_again_and_a_reboot_forgets_them():
    _, port = meter_with_acked(10)
    link = up_link(port)
    link.backfill(MID, 2, 4)
    link.pump()
    link.drop()  # no PUBACK came for 2..4
    assert port.backfills == [[2, 4]]
    link.client, link.state = FakeClient(), "up"
    link.pump()
    assert [s for _, s in link.client.sent] == [2, 3, 4]
    link.backfill(MID, 6, 7)
    port.reset(reboot=True)  # power cut: the app's RAM is gone, the head-end asks again
    assert port.backfills == [] and not port.resending


def test_a_gap_the_ring_has_erased_is_answered_with_lo_above_it_and_nothing_is_sent():
    # 2 x 256-byte segments: the ring erases the oldest segment as new uplinks arrive
    _, port = meter_with_acked(40, segments=2, segment_bytes=256)
    lo = port.outbox.oldest_held
    assert lo > 5
    link = up_link(port)
    assert link.backfill(MID, 1, 5) == (0, lo)
    link.pump()
    assert link.client.sent == [] and port.backfills == []
