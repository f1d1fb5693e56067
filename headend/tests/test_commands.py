"""The command lifecycle without MQTT: transitions, counters, signing, retries, expiry, acks.

Runs on SQLite and PostgreSQL (``db_url`` from headend/tests/conftest.py).
The meter side is the firmware's own ``DownlinkGuard`` (firmware/core/auth.py),
so a command the head-end signs is checked by the code the meter runs.
"""
import hashlib
import hmac
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import auth
from firmware.protocol import messages
from headend import commands as C
from headend import ledger as L
from headend.db import Base, make_engine
from headend.tests.conftest import register_meters

T0 = 1795737600  # 2026-11-27 00:00:00 UTC (`date -u -d 2026-11-27 +%s`)
KEY = bytes(range(32))
MY_TABLES = [C.Command.__table__, C.MeterCommandCounter.__table__,
             C.CommandTransition.__table__, C.CommandAlert.__table__, L.Payment.__table__,
             L.TopUp.__table__, L.Receipt.__table__, L.LedgerEntry.__table__]


def create_tables(engine):
    """Our tables on top of the migrated schema (until a migration adds them)."""
    Base.metadata.create_all(engine, tables=MY_TABLES)


@pytest.fixture
def db(engine):
    create_tables(engine)
    register_meters(engine, ["UJ-1", "UJ-2"])
    with Session(engine, expire_on_commit=False) as s:
        yield s


POLICY = C.RetryPolicy(puback_timeout_s=30, ack_timeout_s=120, max_ack_timeout_s=600,
                       late_ack_grace_s=300)


def queued_topup(db, amount=50000, ttl_s=3600, command_id="TU-1", meter="UJ-1"):
    cmd = C.enqueue(db, meter, "topup", [amount], T0, ttl_s=ttl_s, command_id=command_id)
    db.commit()
    return cmd


def sent(db, cmd, now=T0):
    payload = C.prepare_send(db, cmd, KEY, now, POLICY)
    db.commit()
    return payload


def ack(cmd, result, counter=None, detail=None):
    body = {"id": cmd.id, "c": cmd.counter if counter is None else counter, "r": result,
            "rn": C.RESULT_NAMES[result]}
    if detail:
        body["d"] = detail
    return body


def events_of(db, cmd):
    return [(t.event, t.from_state, t.to_state) for t in db.scalars(
        select(C.CommandTransition).where(C.CommandTransition.command_id == cmd.id)
        .order_by(C.CommandTransition.id))]


# --- the table ---------------------------------------------------------------------------

def test_illegal_moves_raise_a_named_error():
    for state, event in ((C.APPLIED, C.SEND), (C.FAILED, C.RESEND), (C.QUEUED, C.PUBACK),
                         (C.EXPIRED, C.SEND), (C.APPLIED, C.EXPIRE), (C.FAILED, C.ACK_APPLIED),
                         (C.DELIVERED, C.SEND), (C.QUEUED, C.ACK_FAILED)):
        with pytest.raises(C.IllegalTransition):
            C.next_state(state, event)


def test_final_states_are_left_only_by_a_late_ok_for_an_expired_command():
    leaving = {(s, e) for (s, e), new in C.TRANSITIONS.items()
               if s in C.FINAL_STATES and new != s}
    assert leaving == {(C.EXPIRED, C.ACK_APPLIED)}


def test_illegal_transition_on_a_stored_command_raises_and_changes_nothing(db):
    cmd = queued_topup(db)
    with pytest.raises(C.IllegalTransition):
        C.transition(db, cmd, C.PUBACK, T0)
    assert cmd.state == C.QUEUED


# --- counters and signing ----------------------------------------------------------------

def test_first_send_signs_exactly_what_the_meter_checks(db):
    cmd = queued_topup(db, amount=50000, ttl_s=3600, command_id="TU-7")
    payload = sent(db, cmd)
    wire = messages.decode_command(payload)
    # docs/protocol.md canonical bytes, written out by hand; HMAC from Python's stdlib hmac
    canonical = b"URJA1|topup|UJ-1|1|%d|TU-7|50000" % (T0 + 3600)
    assert wire["mac"] == hmac.new(KEY, canonical, hashlib.sha256).hexdigest()
    assert (wire["counter"], wire["id"], wire["fields"]) == (1, "TU-7", ["TU-7", 50000])
    assert auth.DownlinkGuard("UJ-1").check(KEY, wire, T0 + 10) == auth.OK
    assert (cmd.state, cmd.counter, cmd.attempts) == (C.SENT, 1, 1)


def test_counters_are_per_meter_and_strictly_increasing(db):
    a = [C.allocate_counter(db, "UJ-1") for _ in range(3)]
    b = [C.allocate_counter(db, "UJ-2") for _ in range(2)]
    db.commit()
    assert (a, b) == ([1, 2, 3], [1, 2])


def test_counter_survives_a_head_end_restart(db_url, db):
    C.allocate_counter(db, "UJ-1")
    C.allocate_counter(db, "UJ-1")
    db.commit()
    db.close()
    fresh = make_engine(db_url)  # a new process would open a new engine
    try:
        with Session(fresh) as s:
            assert C.allocate_counter(s, "UJ-1") == 3
            s.commit()
    finally:
        fresh.dispose()


def test_concurrent_allocations_never_hand_out_the_same_counter(engine, db):
    C.allocate_counter(db, "UJ-1")  # create the row, so every thread updates it
    db.commit()
    got, errors = [], []

    def worker():
        try:
            for _ in range(10):
                with Session(engine) as s:
                    got.append(C.allocate_counter(s, "UJ-1"))
                    s.commit()
        except Exception as err:  # surfaced below
            errors.append(err)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(2, 42))  # 4 threads x 10, after the first (1)


# --- the lifecycle, transition by transition ------------------------------------------------

def test_puback_moves_sent_to_delivered_and_waits_for_the_ack(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.mark_delivered(db, cmd.id, 1, T0 + 1, POLICY)
    assert cmd.state == C.DELIVERED
    assert cmd.next_attempt_at == T0 + 1 + 120  # first ack wait: ack_timeout_s


def test_ok_ack_applies_the_command(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.mark_delivered(db, cmd.id, 1, T0 + 1, POLICY)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.OK, detail="credited 50000 paise"), T0 + 5)
    assert (cmd.state, cmd.result_name, cmd.finished_at) == (C.APPLIED, "OK", T0 + 5)
    assert events_of(db, cmd) == [("enqueue", C.QUEUED, C.QUEUED), ("send", C.QUEUED, C.SENT),
                                  ("puback", C.SENT, C.DELIVERED),
                                  ("ack_applied", C.DELIVERED, C.APPLIED)]


def test_replayed_ack_counts_as_applied(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.REPLAYED), T0 + 5)
    assert (cmd.state, cmd.result_name) == (C.APPLIED, "REPLAYED")


def test_duplicate_acks_after_applied_change_nothing(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.OK), T0 + 5)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.REPLAYED), T0 + 9)
    assert (cmd.state, cmd.result_name, cmd.finished_at) == (C.APPLIED, "OK", T0 + 5)


@pytest.mark.parametrize("result,name", [(auth.EXPIRED, "EXPIRED"), (9, "BAD_VALUE"),
                                         (7, "REFUSED"), (auth.BAD_MAC, "BAD_MAC")])
def test_a_rejecting_ack_fails_the_command_with_the_result_name(db, result, name):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.handle_ack(db, "UJ-1", ack(cmd, result, detail="why"), T0 + 5)
    assert (cmd.state, cmd.result_name, cmd.reason) == (C.FAILED, name, name + ": why")


def test_out_of_order_ack_requeues_and_the_reissue_gets_a_higher_counter_the_meter_accepts(db):
    meter = auth.DownlinkGuard("UJ-1")
    first = queued_topup(db, command_id="TU-1")
    second = queued_topup(db, command_id="TU-2")
    old_payload = sent(db, first)   # counter 1
    new_payload = sent(db, second)  # counter 2 overtakes it on the way to the meter
    cmd2 = messages.decode_command(new_payload)
    assert meter.check(KEY, cmd2, T0 + 1) == auth.OK
    meter.accept(cmd2)
    result = meter.check(KEY, messages.decode_command(old_payload), T0 + 1)
    assert result == auth.OUT_OF_ORDER
    C.handle_ack(db, "UJ-1", ack(first, result), T0 + 2)
    assert (first.state, first.counter, first.reissues) == (C.QUEUED, None, 1)
    reissued = messages.decode_command(sent(db, first, now=T0 + 3))
    assert (reissued["counter"], reissued["id"]) == (3, "TU-1")
    assert meter.check(KEY, reissued, T0 + 3) == auth.OK


def test_a_failure_ack_for_an_older_counter_is_ignored(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.OUT_OF_ORDER), T0 + 2)
    sent(db, cmd, now=T0 + 3)  # counter 2 now
    C.handle_ack(db, "UJ-1", ack(cmd, auth.OUT_OF_ORDER, counter=1), T0 + 4)  # the 2nd old copy
    assert (cmd.state, cmd.counter) == (C.SENT, 2)


def test_an_ack_for_an_unknown_command_raises_an_alert_not_an_exception(db):
    out = C.handle_ack(db, "UJ-1", {"id": "NOPE", "c": 4, "r": 0, "rn": "OK"}, T0)
    db.commit()
    alerts = db.scalars(select(C.CommandAlert)).all()
    assert out is None
    assert [(a.kind, a.command_id) for a in alerts] == [("unexpected_ack", "NOPE")]


def test_an_ack_from_another_meter_does_not_touch_the_command(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    C.handle_ack(db, "UJ-2", ack(cmd, auth.OK), T0 + 5)
    assert cmd.state == C.SENT


# --- retries ------------------------------------------------------------------------------

def test_a_command_is_due_again_after_the_puback_timeout(db):
    cmd = queued_topup(db)
    sent(db, cmd)
    assert C.due(db, T0 + 29) == []
    assert [c.id for c in C.due(db, T0 + 30)] == [cmd.id]


def test_a_resend_repeats_the_same_signed_bytes_and_counter(db):
    cmd = queued_topup(db)
    first = sent(db, cmd)
    C.mark_delivered(db, cmd.id, 1, T0 + 1, POLICY)
    again = sent(db, cmd, now=T0 + 121)
    assert (again, cmd.counter, cmd.attempts, cmd.state) == (first, 1, 2, C.SENT)


def test_the_ack_wait_doubles_per_attempt_up_to_the_cap():
    # 120, 240, 480, then capped at 600
    assert [POLICY.ack_wait_s(n) for n in (1, 2, 3, 4, 10)] == [120, 240, 480, 600, 600]


# --- expiry -------------------------------------------------------------------------------

def test_a_queued_command_past_its_expiry_is_expired_with_an_alert(db):
    seen = []
    cmd = queued_topup(db, ttl_s=60)
    assert C.expire_due(db, T0 + 60, POLICY, seen.append) == []  # valid up to and including
    C.expire_due(db, T0 + 61, POLICY, seen.append)
    db.commit()
    assert cmd.state == C.EXPIRED
    assert [(a.kind, a.command_id) for a in seen] == [("command_expired", cmd.id)]
    assert db.scalars(select(C.CommandAlert.kind)).all() == ["command_expired"]


def test_a_sent_command_waits_the_late_ack_grace_before_expiring(db):
    cmd = queued_topup(db, ttl_s=60)
    sent(db, cmd)
    C.expire_due(db, T0 + 60 + 300, POLICY)
    assert cmd.state == C.SENT
    C.expire_due(db, T0 + 60 + 301, POLICY)
    assert cmd.state == C.EXPIRED


def test_an_expired_command_is_never_due(db):
    queued_topup(db, ttl_s=60)
    assert C.due(db, T0 + 61) == []


def test_a_late_ok_after_expiry_means_applied_and_raises_a_late_ack_alert(db):
    cmd = queued_topup(db, ttl_s=60)
    sent(db, cmd)
    C.expire_due(db, T0 + 400, POLICY)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.OK), T0 + 500)
    db.commit()
    assert (cmd.state, cmd.result_name) == (C.APPLIED, "OK")
    kinds = sorted(db.scalars(select(C.CommandAlert.kind)).all())
    assert kinds == ["command_expired", "late_ack"]


def test_an_expired_result_for_an_expired_command_keeps_it_expired(db):
    cmd = queued_topup(db, ttl_s=60)
    sent(db, cmd)
    C.expire_due(db, T0 + 400, POLICY)
    C.handle_ack(db, "UJ-1", ack(cmd, auth.EXPIRED), T0 + 500)
    assert cmd.state == C.EXPIRED


# --- enqueue checks -----------------------------------------------------------------------

def test_enqueue_refuses_a_field_the_canonical_form_cannot_carry(db):
    with pytest.raises(C.CommandError):
        C.enqueue(db, "UJ-1", "tariff", ['{"a": "x|y"}'], T0)


def test_enqueue_refuses_an_unknown_meter(db):
    with pytest.raises(C.CommandError):
        C.enqueue(db, "UJ-404", "relay", ["connect"], T0)


def test_enqueue_refuses_a_float_amount(db):
    with pytest.raises(C.CommandError):
        C.enqueue(db, "UJ-1", "topup", [500.0], T0)
