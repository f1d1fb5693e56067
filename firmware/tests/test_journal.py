import binascii
import os
import struct

from boards.unix.flash import FileSlots
from firmware.core import journal as jr
from firmware.core.journal import Journal, JournalError
from firmware.tests.check import eq, raises

DAY_S = 86400
T0 = 1795737600  # 2026-11-27 00:00:00 UTC (`date -u -d 2026-11-27 +%s`), UTC day 20784


class RamSlots:
    """In-memory SlotStorage that logs every write, and can be told to fail."""

    def __init__(self):
        self.slots = [None, None]
        self.writes = []
        self.fail = False

    def read(self, slot):
        return self.slots[slot]

    def write(self, slot, data):
        if self.fail:
            raise OSError(5, "EIO")
        self.writes.append(slot)
        self.slots[slot] = bytes(data)


def hand_record(seq, payload):
    # The layout written out field by field from the spec, not via encode_record:
    # b"UJ" | version 1 | seq u32 BE | length u32 BE | payload | CRC-32 BE of all before.
    body = b"UJ" + b"\x01" + struct.pack(">I", seq) + struct.pack(">I", len(payload)) + payload
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def test_crc32_is_the_standard_crc32_on_this_runtime():
    # Check value of CRC-32/ISO-HDLC (the zlib/ZIP CRC) over "123456789" is 0xCBF43926,
    # per Greg Cook's "Catalogue of parametrised CRC algorithms" (reveng.sourceforge.io).
    eq(binascii.crc32(b"123456789") & 0xFFFFFFFF, 0xCBF43926)


def test_record_bytes_follow_the_documented_layout():
    rec = jr.encode_record(5, b"hi")
    eq(rec[:11], b"UJ\x01\x00\x00\x00\x05\x00\x00\x00\x02")
    eq(rec[11:13], b"hi")
    eq(len(rec), 2 + 1 + 4 + 4 + 2 + 4)  # magic, version, seq, length, payload, CRC = 17
    eq(rec, hand_record(5, b"hi"))


def test_fresh_storage_loads_none():
    j = Journal(RamSlots())
    eq(j.load(), None)
    eq(j.slot, None)
    eq(j.slot_reasons, [jr.SLOT_EMPTY, jr.SLOT_EMPTY])


def test_commit_then_load_in_a_new_journal_returns_the_payload():
    store = RamSlots()
    eq(Journal(store).commit(b'{"balance_paise": 50000}', T0), 1)
    j = Journal(store)
    eq(j.load(), b'{"balance_paise": 50000}')
    eq((j.slot, j.sequence), (0, 1))


def test_hand_built_record_is_loaded():
    store = RamSlots()
    store.slots[1] = hand_record(41, b"state-41")
    j = Journal(store)
    eq(j.load(), b"state-41")
    eq((j.slot, j.sequence), (1, 41))


def test_commits_alternate_between_the_two_slots():
    store = RamSlots()
    j = Journal(store)
    j.load()
    seqs = [j.commit(("p%d" % i).encode(), T0) for i in range(4)]
    eq(seqs, [1, 2, 3, 4])
    eq(store.writes, [0, 1, 0, 1])
    eq(Journal(store).load(), b"p3")


def test_commit_without_load_still_spares_the_newest_slot():
    store = RamSlots()
    store.slots[0] = hand_record(9, b"newest")
    Journal(store).commit(b"next", T0)  # no load() first
    eq(store.writes, [1])
    eq(store.slots[0], hand_record(9, b"newest"))
    eq(Journal(store).load(), b"next")


def test_corrupted_crc_in_newest_slot_falls_back_to_older():
    store = RamSlots()
    store.slots[0] = hand_record(1, b"older")
    bad = bytearray(hand_record(2, b"newer"))
    bad[-1] ^= 0x01
    store.slots[1] = bytes(bad)
    j = Journal(store)
    eq(j.load(), b"older")
    eq(j.slot_reasons, [jr.SLOT_VALID, jr.SLOT_BAD_CRC])


def test_torn_newest_slot_falls_back_to_older_at_every_cut_point():
    newer = hand_record(2, b"x" * 40)
    for cut in range(len(newer)):  # 0 bytes (erased) .. all but the last CRC byte
        store = RamSlots()
        store.slots[0] = hand_record(1, b"older")
        store.slots[1] = newer[:cut]
        j = Journal(store)
        eq(j.load(), b"older", "cut at %d" % cut)
        assert j.slot_reasons[1] in (jr.SLOT_EMPTY, jr.SLOT_SHORT), cut


def test_next_commit_after_a_torn_write_overwrites_the_torn_slot():
    store = RamSlots()
    store.slots[0] = hand_record(7, b"good")
    store.slots[1] = hand_record(8, b"torn")[:12]  # header and a byte of payload
    j = Journal(store)
    j.load()
    eq(j.commit(b"again", T0), 8)
    eq(store.writes, [1])
    eq(store.slots[0], hand_record(7, b"good"))


def test_both_slots_bad_loads_none():
    store = RamSlots()
    store.slots[0] = hand_record(1, b"a")[:-2]
    store.slots[1] = b"\xff" * 64  # erased flash
    j = Journal(store)
    eq(j.load(), None)
    eq(j.slot_reasons, [jr.SLOT_SHORT, jr.SLOT_BAD_MAGIC])


def test_every_single_byte_flip_invalidates_the_record():
    rec = hand_record(3, b"paise")
    for i in range(len(rec)):
        bad = bytearray(rec)
        bad[i] ^= 0x10
        reason, _, payload = jr.decode_record(bytes(bad))
        assert reason != jr.SLOT_VALID and payload is None, i


def test_unknown_version_is_rejected():
    rec = bytearray(hand_record(3, b"v2"))
    rec[2] = 2
    eq(jr.decode_record(bytes(rec))[0], jr.SLOT_BAD_VERSION)


def test_bytes_after_the_crc_are_ignored():
    # A raw flash sector reads back whole: record, then the erased (0xFF) rest.
    eq(jr.decode_record(hand_record(4, b"abc") + b"\xff" * 100), (jr.SLOT_VALID, 4, b"abc"))


def test_sequence_wraps_at_2_32_and_zero_is_newer_than_max():
    store = RamSlots()
    store.slots[0] = hand_record(0xFFFFFFFE, b"a")
    store.slots[1] = hand_record(0xFFFFFFFF, b"b")
    j = Journal(store)
    eq(j.load(), b"b")
    eq(j.commit(b"c", T0), 0)  # (2**32 - 1) + 1 mod 2**32
    eq(store.writes, [0])
    j2 = Journal(store)
    eq(j2.load(), b"c")  # seq 0 in slot 0 beats 0xFFFFFFFF in slot 1
    eq((j2.slot, j2.sequence), (0, 0))
    eq(j2.commit(b"d", T0), 1)
    eq(Journal(store).load(), b"d")


def test_serial_number_comparison():
    # RFC 1982 for SERIAL_BITS = 32: i1 is newer than i2 when 0 < (i1 - i2) mod 2**32 < 2**31.
    assert jr.seq_newer(2, 1)
    assert not jr.seq_newer(1, 2)
    assert jr.seq_newer(0, 0xFFFFFFFF)
    assert not jr.seq_newer(0xFFFFFFFF, 0)
    assert jr.seq_newer(0x7FFFFFFF, 0)  # 2**31 - 1 ahead
    assert not jr.seq_newer(0x80000000, 0)  # exactly 2**31 apart: undefined, not newer
    assert not jr.seq_newer(5, 5)


def test_wear_counts_roll_over_at_utc_midnight():
    j = Journal(RamSlots())
    for t in (T0 + 10, T0 + 3600, T0 + DAY_S - 1):  # three writes on UTC day 20784
        j.commit(b"x", t)
    eq((j.writes_today, j.wear.previous_day, j.writes_total), (3, 0, 3))
    j.commit(b"x", T0 + DAY_S)  # 00:00:00 of the next UTC day
    eq((j.writes_today, j.wear.previous_day, j.writes_total), (1, 3, 4))
    j.commit(b"x", T0 + 3 * DAY_S)  # two days later: the day before had no writes
    eq((j.writes_today, j.wear.previous_day, j.writes_total), (1, 0, 5))


def test_clock_stepping_back_counts_into_the_current_day():
    j = Journal(RamSlots())
    j.commit(b"x", T0 + DAY_S)
    j.commit(b"x", T0)  # a day earlier
    eq((j.writes_today, j.wear.previous_day, j.writes_total), (2, 0, 2))


def test_over_budget_only_after_more_writes_than_the_daily_budget():
    j = Journal(RamSlots(), budget_per_day=2)
    j.commit(b"x", T0)
    j.commit(b"x", T0 + 1)
    assert not j.wear.over_budget(T0 + 2)  # 2 writes, budget 2
    j.commit(b"x", T0 + 3)
    assert j.wear.over_budget(T0 + 4)  # 3 > 2
    assert not j.wear.over_budget(T0 + DAY_S)  # new day, nothing written yet


def test_wear_counter_state_round_trips():
    j = Journal(RamSlots(), budget_per_day=7)
    j.commit(b"x", T0)
    j.commit(b"x", T0 + DAY_S)
    w = jr.WearCounter.from_state(j.wear.to_state())
    eq((w.today, w.previous_day, w.total, w.budget_per_day), (1, 1, 2, 7))
    w.record(T0 + DAY_S + 5)
    eq((w.today, w.total), (2, 3))


def test_oversize_payload_raises_and_writes_nothing():
    store = RamSlots()
    j = Journal(store, max_payload=16)
    eq(j.commit(b"y" * 16, T0), 1)  # exactly the limit is fine
    err = raises(JournalError, j.commit, b"y" * 17, T0)
    assert "17" in str(err) and "16" in str(err), str(err)
    eq(store.writes, [0])
    eq(j.writes_total, 1)


def test_non_bytes_payload_raises_journal_error():
    raises(JournalError, Journal(RamSlots()).commit, '{"a": 1}', T0)


def test_failed_storage_write_keeps_the_previous_record_current():
    store = RamSlots()
    j = Journal(store)
    j.commit(b"one", T0)
    store.fail = True
    raises(OSError, j.commit, b"two", T0)
    eq((j.slot, j.sequence, j.writes_total), (0, 1, 1))
    store.fail = False
    eq(j.commit(b"two", T0), 2)
    eq(store.writes, [0, 1])


def _temp_dir():
    base = os.getenv("TMPDIR") or "/tmp"
    return "%s/urja-journal-%s" % (base, binascii.hexlify(os.urandom(6)).decode())


def test_file_slots_survive_a_new_journal_and_fall_back_from_a_torn_file():
    path = _temp_dir()
    slots = FileSlots(path)
    try:
        eq(slots.read(0), None)
        payload = b"r" * 700  # three 256-byte pages
        j = Journal(slots)
        j.load()
        j.commit(b"first", T0)
        j.commit(payload, T0)
        eq(Journal(FileSlots(path)).load(), payload)
        # tear slot 1 (newest) the way a killed write leaves it: only the first page
        f = open(path + "/slot1.bin", "rb")
        page = f.read(256)
        f.close()
        f = open(path + "/slot1.bin", "wb")
        f.write(page)
        f.close()
        j2 = Journal(FileSlots(path))
        eq(j2.load(), b"first")
        eq(j2.slot_reasons, [jr.SLOT_VALID, jr.SLOT_SHORT])
    finally:
        slots.erase()
        os.rmdir(path)


def test_file_slots_rejects_a_third_slot():
    raises(ValueError, FileSlots("/tmp").path, 2)


def test_commit_members_writes_the_json_object_of_the_pairs():
    import json
    store = RamSlots()
    j = Journal(store)
    members = [("format", 1), ("ids", ["T-1", "é"]), ("none", None), ("nested", {"a": [1, 2]})]
    eq(j.commit_members(iter(members), T0), 1)
    eq(json.loads(Journal(store).load()), dict(members))


def test_commit_members_grows_its_buffer_for_a_larger_state_and_reuses_it():
    import json
    store = RamSlots()
    j = Journal(store)
    big = "x" * 3000  # larger than the first record buffer
    j.commit_members(iter([("a", 1)]), T0)
    j.commit_members(iter([("a", 2), ("big", big)]), T0 + 1)
    eq(json.loads(Journal(store).load()), {"a": 2, "big": big})
    buf = j._buf
    j.commit_members(iter([("a", 3)]), T0 + 2)  # smaller again: the same buffer
    assert j._buf is buf
    eq(json.loads(Journal(store).load()), {"a": 3})


def test_commit_members_over_the_limit_raises_and_writes_nothing():
    store = RamSlots()
    j = Journal(store, max_payload=64)
    j.commit_members(iter([("a", 1)]), T0)
    raises(JournalError, j.commit_members, iter([("a", "y" * 100)]), T0 + 1)
    eq(store.writes, [0])
    eq(Journal(store).load(), b'{"a": 1}')


def test_slot_reason_names_follow_the_codes():
    names = jr.SLOT_REASON_NAMES
    eq((names[jr.SLOT_VALID], names[jr.SLOT_BAD_MAGIC], names[jr.SLOT_BAD_CRC]),
       ("valid", "bad magic", "bad crc"))
    eq(len(names), jr.SLOT_BAD_CRC + 1)


def test_commit_members_buffer_is_never_larger_than_the_largest_record():
    j = Journal(RamSlots(), max_payload=40)
    j.commit_members(iter([("a", 1)]), T0)
    eq(len(j._buf), 40 + jr.RECORD_OVERHEAD)
    j.commit_members(iter([("a", "y" * 31)]), T0 + 1)  # 40 bytes of JSON: exactly the limit
    eq(len(j._buf), 40 + jr.RECORD_OVERHEAD)


def test_commit_members_writes_a_generator_value_as_a_nested_object():
    import json

    def inner():
        yield "credit_paise", 500
        yield "warned", [30]

    store = RamSlots()
    j = Journal(store)
    j.commit_members(iter([("format", 1), ("credit", inner()), ("empty", None)]), T0)
    eq(Journal(store).load(), b'{"format": 1, "credit": {"credit_paise": 500, "warned": [30]}, "empty": null}')
    eq(json.loads(Journal(store).load())["credit"], {"credit_paise": 500, "warned": [30]})


def test_reserve_allocates_the_record_buffer_before_the_first_commit():
    store = RamSlots()
    j = Journal(store)
    j.reserve()
    buf = j._buf
    eq(len(buf), 2048)
    j.commit_members(iter([("a", 1)]), T0)
    assert j._buf is buf  # the first commit needed no new block
    eq(Journal(store).load(), b'{"a": 1}')
    small = Journal(RamSlots(), max_payload=40)
    small.reserve()
    eq(len(small._buf), 40 + jr.RECORD_OVERHEAD)  # never more than the largest record
