import binascii
import os
import random
import struct

from boards.unix.flash import FileSlots
from boards.unix.outbox_files import FileSegments, file_outbox_storage
from firmware.core import outbox as ob
from firmware.core.outbox import Outbox, OutboxError, OutboxFull, RamSegments, RamSlots
from firmware.tests.check import eq, raises

KIND_MESSAGE = 0x4D  # "M": a message record (the layout in outbox.py's docstring)
T0 = 1795737600  # 2026-11-27 00:00:00 UTC (`date -u -d 2026-11-27 +%s`)

# Small geometry so the arithmetic is easy: a 128-byte segment holds its
# 16-byte header and (128 - 16) // 32 = 3 messages of 20 bytes (12 + 20 = 32).
SEG = 128
MSG20 = 20


def msg(seq, size=MSG20):
    """A recognisable payload of exactly ``size`` bytes for message ``seq``."""
    head = b"m%d:" % seq
    return head + b"." * (size - len(head))


def hand_record(kind, seq, payload):
    # Field by field from the layout in outbox.py's docstring, not via encode_record:
    # 0x55 | kind | length u16 BE | seq u32 BE | payload | CRC-32 BE of all before.
    body = b"\x55" + bytes([kind]) + struct.pack(">H", len(payload)) + struct.pack(">I", seq) + payload
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def new_box(count=3, size=SEG, **kw):
    flash, slots = RamSegments(count, size), RamSlots()
    return Outbox(flash, slots, **kw), flash, slots


def fill(box, seqs):
    for s in seqs:
        eq(box.append(msg(s), T0), s)


def seqs(box, n=1000, after=0):
    return [s for s, _ in box.peek(n, after)]


class TornSlots(RamSlots):
    """Cursor slots whose next write keeps only the first ``cut`` bytes, then fails."""

    def __init__(self):
        RamSlots.__init__(self)
        self.cut = None

    def write(self, slot, data):
        if self.cut is not None:
            self.slots[slot] = bytes(data[:self.cut])
            raise OSError(5, "power cut")
        self.slots[slot] = bytes(data)


def test_message_record_bytes_follow_the_documented_layout():
    rec = ob.encode_record(KIND_MESSAGE, 7, b"hi")
    eq(rec[:8], b"\x55\x4d\x00\x02\x00\x00\x00\x07")
    eq(len(rec), 8 + 2 + 4)  # header, payload, CRC
    eq(rec, hand_record(0x4D, 7, b"hi"))


def test_fresh_outbox_is_empty_and_starts_at_seq_1():
    box, _, _ = new_box()
    eq((box.depth, box.next_seq, box.dropped_total, box.peek(5)), (0, 1, 0, []))


def test_messages_peek_oldest_first_with_consecutive_seqs():
    box, _, _ = new_box()
    eq([box.append(b"a", T0), box.append(b"bb", T0), box.append(b"ccc", T0)], [1, 2, 3])
    eq(box.peek(10), [(1, b"a"), (2, b"bb"), (3, b"ccc")])
    eq(box.depth, 3)


def test_peek_returns_at_most_n_and_after_skips_those_already_sent():
    box, _, _ = new_box()
    fill(box, range(1, 8))  # spans three segments
    eq(seqs(box, 2), [1, 2])
    eq(seqs(box, 3, after=2), [3, 4, 5])
    eq(seqs(box, 10, after=5), [6, 7])
    eq(box.peek(1, after=3), [(4, msg(4))])


def test_ack_releases_up_to_seq_and_returns_how_many():
    box, _, _ = new_box()
    fill(box, range(1, 6))
    eq(box.ack(3, T0), 3)
    eq(seqs(box), [4, 5])
    eq(box.depth, 2)


def test_repeated_ack_writes_nothing_to_flash():
    box, _, _ = new_box()
    fill(box, [1, 2])
    box.ack(2, T0)
    writes = box.cursor.wear.total
    eq(box.ack(2, T0), 0)
    eq(box.ack(1, T0), 0)
    eq(box.cursor.wear.total, writes)


def test_ack_beyond_the_newest_releases_only_what_exists():
    box, _, _ = new_box()
    fill(box, [1, 2])
    eq(box.ack(99, T0), 2)
    eq(box.released, 2)
    eq(box.append(b"x", T0), 3)  # the sequence did not jump to 100
    eq(seqs(box), [3])


def test_unacked_messages_are_replayed_in_order_after_restart():
    box, flash, slots = new_box()
    fill(box, range(1, 8))
    box.ack(2, T0)
    again = Outbox(flash, slots)
    eq(again.peek(10), [(s, msg(s)) for s in range(3, 8)])
    eq((again.depth, again.next_seq, again.torn_tail), (5, 8, False))


def test_sequence_continues_after_restart_when_everything_was_acked():
    box, flash, slots = new_box()
    fill(box, range(1, 11))  # 10 messages: the ring has come round once (3 per segment)
    box.ack(10, T0)
    again = Outbox(flash, slots)
    eq((again.depth, again.next_seq), (0, 11))
    eq(again.append(b"next", T0), 11)


def test_sequence_survives_restart_from_an_empty_new_segment():
    box, flash, slots = new_box()
    fill(box, range(1, 4))  # segment 0 full
    box.ack(3, T0)
    fill(box, [4])  # opens segment 1 with first seq 4
    again = Outbox(flash, slots)
    eq(again.next_seq, 5)


def test_hand_built_flash_image_is_recovered():
    flash, slots = RamSegments(2, SEG), RamSlots()
    image = (hand_record(0x53, 1, struct.pack(">I", 41))  # segment serial 1, first seq 41
             + hand_record(0x4D, 41, b"reading-41") + hand_record(0x4D, 42, b"event-42"))
    flash.write(1, 0, image)
    box = Outbox(flash, slots)
    eq(box.peek(5), [(41, b"reading-41"), (42, b"event-42")])
    eq(box.next_seq, 43)


def test_recovery_stops_at_a_message_whose_seq_does_not_follow():
    flash, slots = RamSegments(2, SEG), RamSlots()
    image = (hand_record(0x53, 1, struct.pack(">I", 41))
             + hand_record(0x4D, 41, b"ok") + hand_record(0x4D, 43, b"stray"))
    flash.write(0, 0, image)
    box = Outbox(flash, slots)
    eq(box.peek(5), [(41, b"ok")])
    eq((box.next_seq, box.torn_tail), (42, True))  # and nothing is appended after the stray


def test_two_days_of_15_minute_readings_fit_8_sectors_with_the_documented_wear():
    flash, slots = RamSegments(8, 4096), RamSlots()
    box = Outbox(flash, slots, max_messages=192)
    for i in range(192):  # 2 days x 96 readings of 100 bytes
        box.append(bytes([i & 0xFF]) * 100, T0 + 900 * i)
    # (4096 - 16) // (12 + 100) = 36 a segment: 192 = 5 * 36 + 12 -> 6 segments
    eq((box.depth, box.dropped_total), (192, 0))
    eq(flash.writes, 192 + 6)
    eq(flash.erases, [1, 1, 1, 1, 1, 1, 0, 0])
    eq(box.bytes_used, 5 * (16 + 36 * 112) + 16 + 12 * 112)
    eq(box.peek(2, after=190), [(191, bytes([190]) * 100), (192, bytes([191]) * 100)])


def test_drop_oldest_when_flash_is_full_evicts_the_oldest_segment_and_counts_exactly():
    box, _, _ = new_box(count=3)
    fill(box, range(1, 10))  # 3 segments x 3 messages: full
    eq((box.depth, box.dropped_total), (9, 0))
    eq(box.append(msg(10), T0), 10)  # needs segment 0 back: messages 1, 2, 3 are dropped
    eq((box.evicted_total, box.dropped_total, box.refused_total), (3, 3, 0))
    eq(seqs(box), [4, 5, 6, 7, 8, 9, 10])


def test_drop_oldest_counts_only_unacked_messages_in_the_evicted_segment():
    box, _, _ = new_box(count=3)
    fill(box, range(1, 10))
    box.ack(2, T0)  # segment 0 still holds unacked message 3
    box.append(msg(10), T0)
    eq(box.dropped_total, 1)
    eq(seqs(box)[0], 4)


def test_fully_acked_segment_is_reused_without_dropping():
    box, flash, _ = new_box(count=3)
    fill(box, range(1, 10))
    box.ack(3, T0)
    box.append(msg(10), T0)
    eq(box.dropped_total, 0)
    eq(flash.erases, [2, 1, 1])  # each erased before first use, segment 0 again for reuse
    eq(seqs(box), list(range(4, 11)))


def test_drop_oldest_when_message_count_is_full_drops_one_each():
    box, _, _ = new_box(count=4, max_messages=5)
    fill(box, range(1, 8))  # 7 appended, bound 5: messages 1 and 2 are dropped
    eq((box.depth, box.evicted_total), (5, 2))
    eq(seqs(box), [3, 4, 5, 6, 7])


def test_refuse_new_when_full_raises_counts_and_keeps_the_old_messages():
    box, _, _ = new_box(count=3, policy=ob.REFUSE_NEW)
    fill(box, range(1, 10))
    err = raises(OutboxFull, box.append, msg(10), T0)
    assert "refused" in str(err)
    raises(OutboxFull, box.append, msg(10), T0)
    eq((box.refused_total, box.evicted_total, box.dropped_total), (2, 0, 2))
    eq(seqs(box), list(range(1, 10)))
    box.ack(3, T0)
    eq(box.append(msg(10), T0), 10)  # a refused message did not use up a sequence number


def test_refuse_new_applies_to_the_message_count_bound_too():
    box, _, _ = new_box(count=4, max_messages=2, policy=ob.REFUSE_NEW)
    fill(box, [1, 2])
    raises(OutboxFull, box.append, b"third", T0)
    eq((box.refused_total, seqs(box)), (1, [1, 2]))


def test_drop_counters_survive_restart():
    box, flash, slots = new_box(count=3, max_messages=8)
    fill(box, range(1, 11))  # 2 dropped by the count bound, then segment 0 (1, 2 gone; 3) evicted
    dropped = box.dropped_total
    eq(dropped, 3)  # 9th and 10th drop 1 and 2 (count bound 8); the 10th's rotation drops 3
    again = Outbox(flash, slots)
    eq((again.evicted_total, again.dropped_total), (3, 3))
    eq(seqs(again), list(range(4, 11)))


def test_depth_bytes_used_and_dropped_total_after_the_ring_came_round():
    box, _, _ = new_box(count=3)
    fill(box, range(1, 11))
    eq(box.depth, 7)
    eq(box.dropped_total, 3)
    # segments 1 and 2 full (16 + 3 * 32 = 112 bytes each), segment 0 holds header + message 10
    eq(box.bytes_used, 112 + 112 + 16 + 32)
    eq(box.next_seq, 11)


def test_torn_message_at_every_byte_offset_is_ignored_and_never_written_over():
    record_len = 12 + MSG20
    for cut in range(record_len):  # 0 bytes programmed .. all but the last CRC byte
        box, flash, slots = new_box(count=3)
        fill(box, [1, 2])
        flash.cut_after_bytes = cut
        raises(OSError, box.append, msg(3), T0)
        flash.cut_after_bytes = None
        again = Outbox(flash, slots)
        eq(seqs(again), [1, 2], "cut at %d" % cut)
        eq(again.next_seq, 3, "cut at %d" % cut)
        eq(again.torn_tail, cut > 0, "cut at %d" % cut)
        # the retry gets the same seq; RamSegments raises if it lands on programmed bytes
        eq(again.append(msg(3), T0), 3)
        eq(again.append(msg(4), T0), 4)
        eq(seqs(Outbox(flash, slots)), [1, 2, 3, 4], "cut at %d" % cut)


def test_torn_message_is_sealed_in_the_same_process_too():
    box, flash, _ = new_box(count=3)
    fill(box, [1])
    flash.cut_after_bytes = 5
    raises(OSError, box.append, msg(2), T0)
    flash.cut_after_bytes = None
    eq(box.append(msg(2), T0), 2)  # goes to a fresh segment, not over the torn bytes
    eq(seqs(box), [1, 2])


def test_torn_segment_header_at_every_byte_offset_leaves_the_segment_free():
    for cut in range(16):
        box, flash, slots = new_box(count=3)
        fill(box, [1, 2, 3])  # segment 0 full: the next message opens segment 1
        flash.cut_after_bytes = cut
        raises(OSError, box.append, msg(4), T0)
        flash.cut_after_bytes = None
        again = Outbox(flash, slots)
        eq((seqs(again), again.next_seq), ([1, 2, 3], 4), "cut at %d" % cut)
        eq(again.append(msg(4), T0), 4)
        eq(seqs(Outbox(flash, slots)), [1, 2, 3, 4], "cut at %d" % cut)


def test_torn_ack_at_every_byte_offset_keeps_the_old_or_the_new_cursor():
    flash, slots = RamSegments(3, SEG), TornSlots()
    box = Outbox(flash, slots)
    fill(box, range(1, 6))
    box.ack(1, T0)
    cursor_record_len = 15 + 12  # journal framing + released, evicted, refused u32s
    for cut in range(cursor_record_len + 1):
        saved = list(slots.slots)
        slots.cut = cut
        raises(OSError, box.ack, 3, T0)
        slots.cut = None
        got = Outbox(flash, slots).released
        # only a complete record (cut == full length) may move the cursor
        eq(got, 3 if cut == cursor_record_len else 1, "cut at %d" % cut)
        slots.slots = saved


def test_cut_between_eviction_cursor_and_erase_neither_resurrects_nor_loses_uncounted():
    box, flash, slots = new_box(count=3)
    fill(box, range(1, 10))

    def dead_erase(seg):
        raise OSError(5, "power cut before erase")
    flash.erase = dead_erase
    raises(OSError, box.append, msg(10), T0)
    del flash.erase
    again = Outbox(flash, slots)
    eq(seqs(again), list(range(4, 10)))  # 1..3 are released (and counted), not replayed
    eq(again.dropped_total, 3)
    eq(again.append(msg(10), T0), 10)
    eq(seqs(Outbox(flash, slots)), list(range(4, 11)))


def test_wear_is_one_write_per_message_plus_one_header_per_segment():
    box, flash, _ = new_box(count=3)
    fill(box, range(1, 8))  # 7 messages: segments 0, 1 full, segment 2 holds 1
    eq(flash.writes, 7 + 3)  # 7 messages + 3 segment headers
    eq(box.wear.total, 10)
    eq(flash.bytes_written, 7 * 32 + 3 * 16)
    eq(flash.erases, [1, 1, 1])  # each erased once, just before its header
    eq(box.cursor.wear.total, 0)  # appends never touch the cursor
    box.ack(7, T0)
    eq(box.cursor.wear.total, 1)  # one ack releasing 7 messages costs one cursor write
    eq(flash.writes, 10)  # and no segment write or erase
    eq(flash.erases, [1, 1, 1])


def test_oversized_or_non_bytes_message_is_refused_with_an_outbox_error():
    box, _, _ = new_box(count=3)
    eq(box.max_payload, SEG - 16 - 12)  # 100: one message must fit an empty segment
    raises(OutboxError, box.append, b"x" * 101, T0)
    raises(OutboxError, box.append, "text", T0)
    eq(box.append(b"x" * 100, T0), 1)


def test_nonsense_configuration_is_rejected():
    raises(OutboxError, Outbox, RamSegments(1, SEG), RamSlots())
    raises(OutboxError, Outbox, RamSegments(2, 20), RamSlots())
    raises(OutboxError, Outbox, RamSegments(2, SEG), RamSlots(), max_messages=0)
    raises(OutboxError, Outbox, RamSegments(2, SEG), RamSlots(), policy=7)
    raises(OutboxError, Outbox, RamSegments(2, SEG), RamSlots(), max_payload=101)


def test_errors_are_value_errors_and_the_ram_stores_stay_importable_from_outbox():
    from firmware.core import ramflash
    eq(issubclass(OutboxFull, OutboxError) and issubclass(OutboxError, ValueError), True)
    eq(type(raises(ValueError, Outbox, RamSegments(1, SEG), RamSlots())) is OutboxError, True)
    eq((RamSegments, RamSlots), (ramflash.RamSegments, ramflash.RamSlots))
    raises(AttributeError, getattr, ob, "NoSuchName")


def test_random_walk_with_restarts_matches_a_plain_list_model():
    random.seed(4)
    flash, slots = RamSegments(4, 256), RamSlots()
    box = Outbox(flash, slots, max_messages=20)
    model = []  # (seq, payload) the outbox must hold, oldest first
    next_seq, dropped = 1, 0
    for step in range(600):
        r = random.randrange(10)
        if r < 6:
            payload = bytes([step & 0xFF]) * random.randrange(1, 60)
            if len(model) == 20:  # count bound: the oldest goes
                model.pop(0)
                dropped += 1
            eq(box.append(payload, T0), next_seq)
            model.append((next_seq, payload))
            next_seq += 1
            # flash eviction is by whole segment: drop from the model what the outbox dropped
            while dropped < box.dropped_total:
                model.pop(0)
                dropped += 1
        elif r < 9 and model:
            upto = model[random.randrange(len(model))][0]
            box.ack(upto, T0)
            model = [m for m in model if m[0] > upto]
        else:
            box = Outbox(flash, slots, max_messages=20)
        eq(box.peek(100), model, "step %d" % step)
    eq(box.dropped_total, dropped)
    assert sum(flash.erases) > 8, flash.erases  # the ring went round several times


def _temp_dir():
    base = os.getenv("TMPDIR") or "/tmp"
    return "%s/urja-outbox-%s" % (base, binascii.hexlify(os.urandom(6)).decode())


def test_file_segments_keep_messages_across_restart_and_ignore_a_torn_tail():
    path = _temp_dir()
    flash, slots = file_outbox_storage(path, 3, SEG)
    try:
        box = Outbox(flash, slots)
        fill(box, range(1, 6))
        box.ack(1, T0)
        # tear: the first 9 bytes of message 6 appended as a killed write leaves them
        f = open(path + "/seg1.bin", "ab")
        f.write(ob.encode_record(KIND_MESSAGE, 6, msg(6))[:9])
        f.close()
        again = Outbox(FileSegments(path, 3, SEG), FileSlots(path))
        eq(seqs(again), [2, 3, 4, 5])
        eq(again.torn_tail, True)
        eq(again.append(msg(6), T0), 6)
        eq(seqs(Outbox(FileSegments(path, 3, SEG), FileSlots(path))), [2, 3, 4, 5, 6])
    finally:
        flash.erase_all()
        slots.erase()
        os.rmdir(path)


def test_file_segments_refuse_to_write_over_programmed_bytes():
    path = _temp_dir()
    flash = FileSegments(path, 2, SEG)
    try:
        flash.write(0, 0, b"abc")
        raises(OSError, flash.write, 0, 1, b"x")
        raises(OSError, flash.write, 0, SEG - 2, b"xyz")
        flash.write(0, 3, b"def")
        eq(flash.read(0, 0, 100), b"abcdef")
        flash.erase(0)
        eq(flash.read(0, 0, 10), b"")
    finally:
        flash.erase_all()
        os.rmdir(path)


# ---- history: released messages stay readable until their segment is erased ----

def hist(box, first, last, n=1000):
    return [s for s, _ in box.history(first, last, n)]


def test_history_returns_released_messages_byte_identical_in_order():
    box, _, _ = new_box(count=3)
    fill(box, range(1, 8))  # segments: [1, 2, 3] [4, 5, 6] [7]
    box.ack(7, T0)
    eq(box.depth, 0)
    eq(box.history(2, 5, 10), [(s, msg(s)) for s in (2, 3, 4, 5)])
    eq(hist(box, 5, 5), [5])


def test_history_includes_unreleased_messages_and_ignores_the_cursor():
    box, _, _ = new_box(count=3)
    fill(box, range(1, 6))
    box.ack(2, T0)
    eq(hist(box, 1, 5), [1, 2, 3, 4, 5])
    eq(seqs(box), [3, 4, 5])  # peek still starts after the cursor


def test_history_is_limited_to_n_and_to_what_exists():
    box, _, _ = new_box(count=3)
    fill(box, range(1, 8))
    eq(hist(box, 2, 7, n=3), [2, 3, 4])
    eq(hist(box, 6, 99), [6, 7])
    eq(hist(box, 8, 20), [])
    eq(hist(box, 5, 4), [])  # empty range
    eq(box.history(1, 7, 0), [])


def test_history_after_the_ring_wrapped_starts_at_oldest_held():
    box, flash, _ = new_box(count=3)
    fill(box, range(1, 10))  # full: [1-3] [4-6] [7-9]
    box.ack(9, T0)
    fill(box, [10])  # reuses segment 0: 1, 2, 3 are erased
    eq(flash.erases, [2, 1, 1])
    eq(box.oldest_held, 4)
    eq(hist(box, 1, 10), [4, 5, 6, 7, 8, 9, 10])
    eq(box.count_held(1, 10), 7)
    eq(box.count_held(2, 5), 2)
    eq(box.count_held(11, 20), 0)


def test_oldest_held_of_an_empty_outbox_is_the_next_seq():
    box, _, _ = new_box(count=3)
    eq((box.oldest_held, box.count_held(1, 10)), (1, 0))
    fill(box, [1, 2])
    eq(box.oldest_held, 1)


def test_history_survives_restart_and_matches_count_held():
    box, flash, slots = new_box(count=4)
    fill(box, range(1, 12))
    box.ack(11, T0)
    again = Outbox(flash, slots)
    eq(again.depth, 0)
    eq(again.history(1, 11, 20), [(s, msg(s)) for s in range(1, 12)])
    eq(again.count_held(3, 9), 7)


def test_history_read_one_at_a_time_walks_forward_like_a_cursor():
    # the app's backfill pump asks for one record at a time; each call goes on from the last
    box, _, _ = new_box(count=4)
    fill(box, range(1, 11))
    got, nxt = [], 2
    while True:
        batch = box.history(nxt, 9, 1)
        if not batch:
            break
        got.append(batch[0][0])
        nxt = batch[0][0] + 1
        if nxt == 6:
            box.peek(3)  # interleaved with the normal pump: its own hint, no interference
    eq(got, list(range(2, 10)))
    # and a walk that restarts further back still finds everything
    eq(hist(box, 1, 3), [1, 2, 3])


def test_history_random_ranges_match_a_list_model_over_a_wrapping_ring():
    random.seed(11)
    box, flash, slots = new_box(count=4, size=256)
    stored = {}  # seq -> payload of everything ever appended
    for step in range(300):
        payload = bytes([step & 0xFF]) * random.randrange(1, 60)
        seq = box.append(payload, T0)
        stored[seq] = payload
        if random.randrange(3) == 0:
            box.ack(seq, T0)
        if random.randrange(20) == 0:
            box = Outbox(flash, slots)
        lo = box.oldest_held
        first = random.randrange(1, seq + 1)
        last = random.randrange(first, seq + 3)
        want = [(s, stored[s]) for s in range(max(first, lo), min(last, seq) + 1)]
        eq(box.history(first, last, 1000), want, "step %d" % step)
        eq(box.count_held(first, last), len(want), "step %d" % step)
    assert sum(flash.erases) > 8, flash.erases
