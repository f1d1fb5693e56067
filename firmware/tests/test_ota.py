from firmware.core import ota
from firmware.tests.check import eq, raises

# SHA-256 test vectors from FIPS 180-2, Appendix B.1 ("abc") and B.2 (the
# 56-byte two-block message); also in NIST's SHAVS example files.
ABC = b"abc"
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
TWO_BLOCK = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
TWO_BLOCK_SHA256 = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
CAPACITY = 4096


class RamSlot:
    """An image slot in RAM; counts writes so tests can see what reached it."""

    def __init__(self, fail_writes=False):
        self.buf = bytearray()
        self.writes = 0
        self.fail_writes = fail_writes

    def write(self, offset, data):
        if self.fail_writes:
            raise OSError(5, "EIO")
        if len(self.buf) < offset + len(data):
            self.buf.extend(bytes(offset + len(data) - len(self.buf)))
        self.buf[offset:offset + len(data)] = data
        self.writes += 1

    def read(self, offset, n):
        return bytes(self.buf[offset:offset + n])


def manifest(size=56, chunk_size=10, sha256=TWO_BLOCK_SHA256, version="2.0.0"):
    return {"version": version, "size": size, "chunk_size": chunk_size, "sha256": sha256}


def chunks(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def downloaded(data=TWO_BLOCK, m=None):
    """An Update that received every chunk of ``data`` (state VERIFYING) and its slot."""
    m = m or manifest()
    u, slot = ota.Update(), RamSlot()
    eq(u.begin(m, CAPACITY), ota.R_OK)
    for i, c in enumerate(chunks(data, m["chunk_size"])):
        eq(u.add_chunk(i, c, slot), ota.R_OK, "chunk %d" % i)
    return u, slot


def in_state(state):
    """An Update restored in ``state`` with a plausible manifest."""
    return ota.Update.from_state({"state": state, "reason": ota.R_OK,
                                  "manifest": manifest(), "next_index": 0})


# ---- manifest ----

def test_good_manifest_is_accepted():
    eq(ota.check_manifest(manifest(), CAPACITY), ota.R_OK)


def test_manifest_with_missing_or_wrong_typed_fields_is_bad():
    for bad in ({}, None, manifest(version=""), manifest(version=7), manifest(size=0),
                manifest(size=True), manifest(size="56"), manifest(chunk_size=0),
                manifest(chunk_size=ota.MAX_CHUNK_SIZE + 1), manifest(sha256="ab" * 31),
                manifest(sha256="zz" * 32), manifest(sha256=None)):
        eq(ota.check_manifest(bad, CAPACITY), ota.R_BAD_MANIFEST, repr(bad))


def test_uppercase_hex_digest_is_accepted_and_normalised():
    u = ota.Update()
    eq(u.begin(manifest(sha256=TWO_BLOCK_SHA256.upper()), CAPACITY), ota.R_OK)
    eq(u.manifest["sha256"], TWO_BLOCK_SHA256)


def test_image_larger_than_the_slot_is_too_large():
    eq(ota.check_manifest(manifest(size=CAPACITY + 1), CAPACITY), ota.R_TOO_LARGE)


def test_bad_manifest_changes_nothing():
    u = ota.Update()
    eq(u.begin(manifest(sha256="nothex"), CAPACITY), ota.R_BAD_MANIFEST)
    eq(u.state, ota.IDLE)
    eq(u.manifest, None)


# ---- chunk bookkeeping ----

def test_chunk_count_and_last_chunk_length():
    u = ota.Update()
    u.begin(manifest(size=56, chunk_size=10), CAPACITY)
    eq(u.chunk_count, 6)  # ceil(56 / 10)
    eq(u.chunk_len(0), 10)
    eq(u.chunk_len(5), 6)  # 56 - 5 * 10


def test_chunks_land_at_index_times_chunk_size():
    u, slot = downloaded()
    eq(bytes(slot.buf), TWO_BLOCK)
    eq(slot.writes, 6)


def test_repeated_chunk_is_a_duplicate_and_not_rewritten():
    u, slot = ota.Update(), RamSlot()
    u.begin(manifest(), CAPACITY)
    u.add_chunk(0, TWO_BLOCK[:10], slot)
    eq(u.add_chunk(0, TWO_BLOCK[:10], slot), ota.R_DUPLICATE)
    eq(slot.writes, 1)
    eq(u.next_index, 1)


def test_chunk_from_the_future_is_out_of_order_and_not_written():
    u, slot = ota.Update(), RamSlot()
    u.begin(manifest(), CAPACITY)
    eq(u.add_chunk(2, TWO_BLOCK[20:30], slot), ota.R_OUT_OF_ORDER)
    eq(slot.writes, 0)
    eq(u.next_index, 0)


def test_chunk_index_outside_the_image_is_bad_index():
    u, slot = ota.Update(), RamSlot()
    u.begin(manifest(), CAPACITY)
    eq(u.add_chunk(-1, b"x" * 10, slot), ota.R_BAD_INDEX)
    eq(u.add_chunk(6, b"x" * 10, slot), ota.R_BAD_INDEX)
    eq(slot.writes, 0)


def test_chunk_of_wrong_length_is_rejected():
    u, slot = ota.Update(), RamSlot()
    u.begin(manifest(), CAPACITY)
    eq(u.add_chunk(0, TWO_BLOCK[:9], slot), ota.R_BAD_LENGTH)
    eq(slot.writes, 0)
    eq(u.state, ota.DOWNLOADING)


def test_slot_write_error_fails_the_update_with_io_error():
    u, slot = ota.Update(), RamSlot(fail_writes=True)
    u.begin(manifest(), CAPACITY)
    eq(u.add_chunk(0, TWO_BLOCK[:10], slot), ota.R_IO_ERROR)
    eq(u.state, ota.FAILED)
    eq(u.reason_name, "IO_ERROR")


# ---- hashing ----

def test_abc_vector_verifies_and_update_is_ready():
    u, slot = downloaded(ABC, manifest(size=3, chunk_size=2, sha256=ABC_SHA256))
    eq(u.state, ota.VERIFYING)
    eq(u.verify(slot), ota.R_OK)
    eq(u.state_name, "READY")


def test_two_block_vector_in_chunks_across_the_block_boundary_verifies():
    u, slot = downloaded()  # chunks of 10 over the 56-byte message
    eq(u.verify(slot), ota.R_OK)
    eq(u.state, ota.READY)


def test_image_with_one_flipped_byte_fails_with_bad_hash():
    corrupt = TWO_BLOCK[:30] + b"X" + TWO_BLOCK[31:]
    u, slot = downloaded(corrupt)
    eq(u.verify(slot), ota.R_BAD_HASH)
    eq(u.state_name, "FAILED")
    eq(u.reason_name, "BAD_HASH")


def test_slot_that_lost_bytes_fails_with_bad_hash():
    u, slot = downloaded()
    slot.buf = slot.buf[:50]  # flash kept only 50 of 56 bytes
    eq(u.verify(slot), ota.R_BAD_HASH)


# ---- the rest of the lifecycle ----

def test_switch_then_confirm_ends_confirmed():
    u, slot = downloaded()
    u.verify(slot)
    u.switched()
    eq(u.state, ota.PENDING_CONFIRM)
    u.confirmed()
    eq(u.state_name, "CONFIRMED")


def test_switch_then_rollback_ends_rolled_back_not_confirmed():
    u, slot = downloaded()
    u.verify(slot)
    u.switched()
    u.rolled_back()
    eq(u.state_name, "ROLLED_BACK")
    eq(u.reason_name, "NOT_CONFIRMED")


def test_abort_from_downloading_verifying_and_ready_fails():
    for state in (ota.DOWNLOADING, ota.VERIFYING, ota.READY):
        u = in_state(state)
        u.fail(ota.R_BAD_IMAGE)
        eq(u.state, ota.FAILED, ota.STATE_NAMES[state])
        eq(u.reason, ota.R_BAD_IMAGE)


def test_boot_aborts_only_an_update_verified_but_not_installed():
    for state in (ota.VERIFYING, ota.READY):
        u = in_state(state)
        eq(u.abort_uninstalled(), "2.0.0", ota.STATE_NAMES[state])
        eq((u.state, u.reason), (ota.FAILED, ota.R_ABORTED))
    for state in (ota.IDLE, ota.DOWNLOADING, ota.PENDING_CONFIRM, ota.CONFIRMED, ota.FAILED):
        u = in_state(state)
        eq(u.abort_uninstalled(), None, ota.STATE_NAMES[state])
        eq(u.state, state)


def test_acknowledged_outcome_returns_to_idle():
    for state in (ota.CONFIRMED, ota.FAILED, ota.ROLLED_BACK):
        u = in_state(state)
        u.acknowledge()
        eq(u.state, ota.IDLE, ota.STATE_NAMES[state])
        eq(u.manifest, None)


def test_new_update_may_begin_after_any_outcome():
    for state in (ota.CONFIRMED, ota.FAILED, ota.ROLLED_BACK):
        u = in_state(state)
        eq(u.begin(manifest(version="3.0.0"), CAPACITY), ota.R_OK)
        eq(u.state, ota.DOWNLOADING, ota.STATE_NAMES[state])
        eq(u.next_index, 0)


def test_resume_after_reset_continues_at_next_chunk():
    u, slot = ota.Update(), RamSlot()
    u.begin(manifest(), CAPACITY)
    for i in range(3):
        u.add_chunk(i, TWO_BLOCK[i * 10:i * 10 + 10], slot)
    again = ota.Update.from_state(u.to_state())
    eq(again.begin(manifest(), CAPACITY), ota.R_OK)  # the head-end re-sends the manifest
    eq(again.next_index, 3)
    for i in range(3, 6):
        eq(again.add_chunk(i, TWO_BLOCK[i * 10:i * 10 + 10], slot), ota.R_OK)
    eq(again.verify(slot), ota.R_OK)


def test_different_manifest_while_downloading_restarts_at_chunk_zero():
    u, slot = ota.Update(), RamSlot()
    u.begin(manifest(), CAPACITY)
    u.add_chunk(0, TWO_BLOCK[:10], slot)
    eq(u.begin(manifest(size=3, chunk_size=2, sha256=ABC_SHA256), CAPACITY), ota.R_OK)
    eq(u.next_index, 0)
    eq(u.manifest["size"], 3)


# ---- illegal transitions ----

def test_chunk_while_idle_raises_state_error():
    err = raises(ota.OtaStateError, ota.Update().add_chunk, 0, b"x", RamSlot())
    assert "CHUNK" in str(err) and "IDLE" in str(err)


def test_new_download_while_pending_confirmation_raises():
    # the inactive slot is the rollback target until the new image confirms
    raises(ota.OtaStateError, in_state(ota.PENDING_CONFIRM).begin, manifest(), CAPACITY)


def test_switch_before_verification_raises():
    raises(ota.OtaStateError, in_state(ota.DOWNLOADING).switched)
    raises(ota.OtaStateError, in_state(ota.VERIFYING).switched)


def test_confirm_without_pending_switch_raises():
    raises(ota.OtaStateError, in_state(ota.READY).confirmed)
    raises(ota.OtaStateError, in_state(ota.IDLE).confirmed)


def test_verify_before_the_last_chunk_raises():
    raises(ota.OtaStateError, in_state(ota.DOWNLOADING).verify, RamSlot())


def test_every_pair_outside_the_table_raises_and_keeps_the_state():
    illegal = 0
    for state in range(len(ota.STATE_NAMES)):
        for event in range(len(ota.EVENT_NAMES)):
            u = in_state(state)
            if (state, event) in ota.TRANSITIONS:
                u._fire(event)
                eq(u.state, ota.TRANSITIONS[(state, event)])
                continue
            raises(ota.OtaStateError, u._fire, event)
            eq(u.state, state)
            illegal += 1
    eq(illegal, 8 * 10 - 18)  # 8 states x 10 events, 18 legal rows in the table


def test_unknown_saved_state_is_refused():
    raises(ota.OtaError, ota.Update.from_state,
           {"state": 99, "reason": 0, "manifest": None, "next_index": 0})


def test_state_round_trips_through_to_state():
    u, slot = downloaded()
    u.verify(slot)
    again = ota.Update.from_state(u.to_state())
    eq(again.to_state(), u.to_state())
    again.switched()
    eq(again.state, ota.PENDING_CONFIRM)


# ---- A/B boot choice ----

def test_fresh_boot_state_boots_the_first_slot_normally():
    b = ota.BootState(("a", "b"))
    eq(b.select(), "a")
    eq(b.last_boot, ota.BOOT_NORMAL)
    eq(b.inactive, "b")


def test_armed_slot_boots_on_trial_and_confirm_makes_it_active():
    b = ota.BootState(("a", "b"))
    b.arm("b")
    eq(b.select(), "b")
    eq(b.last_boot, ota.BOOT_TRIAL)
    eq(b.confirm(), True)
    eq((b.active, b.pending, b.inactive), ("b", None, "a"))
    eq(b.select(), "b")
    eq(b.last_boot, ota.BOOT_NORMAL)


def test_unconfirmed_slot_rolls_back_on_the_next_boot():
    b = ota.BootState(("a", "b"))
    b.arm("b")
    b.select()  # trial boot; the image dies before confirm()
    eq(b.select(), "a")
    eq(b.last_boot, ota.BOOT_ROLLED_BACK)
    eq((b.active, b.pending), ("a", None))


def test_two_trial_boots_survive_one_reset_before_confirm():
    b = ota.BootState(("a", "b"))
    b.arm("b", trial_boots=2)
    eq(b.select(), "b")
    eq(b.select(), "b")  # e.g. a power cut during the first trial
    eq(b.select(), "a")


def test_confirm_on_the_old_slot_after_rollback_changes_nothing():
    b = ota.BootState(("a", "b"))
    b.arm("b")
    b.select()
    b.select()  # rolled back to a
    eq(b.confirm(), False)
    eq(b.active, "a")


def test_arming_the_active_slot_or_arming_twice_raises():
    b = ota.BootState(("a", "b"))
    raises(ota.OtaStateError, b.arm, "a")
    b.arm("b")
    raises(ota.OtaStateError, b.arm, "b")
    raises(ota.OtaError, ota.BootState(("a", "b")).arm, "b", 0)


def test_boot_state_round_trips_mid_trial():
    b = ota.BootState(("a", "b"))
    b.arm("b", trial_boots=2)
    b.select()
    again = ota.BootState.from_state(b.to_state())
    eq(again.to_state(), b.to_state())
    eq(again.select(), "b")  # one trial boot left
    eq(again.select(), "a")
