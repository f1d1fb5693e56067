"""Offline delivery by STS token: one path per payment, meter rounding, receipts, ledger.

SQLite and PostgreSQL (``db_url`` from headend/tests/conftest.py).  Tokens
are checked by the firmware's own meter path (``Meter.apply_sts_token``)
under the decoder key of the STS 531-1-0 compliance vector (NectarAPI
tokens-service, DKGA02: vending key abababababababab, SGC 123456, TI 01,
KRN 1, PAN 600727000000000009 -> decoder key e653341f9d5bf36f), so what the
receipt promises is what a meter credits.
"""
import json

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import events as E
from firmware.core import meter as FM
from firmware.sts import acceptor as sts
from headend import commands as C
from headend import ledger as L
from headend import models as M
from headend import payments as P
from headend import tokens as TK
from headend.tests.conftest import register_meters
from headend.tests.test_commands import create_tables as create_command_tables

T0 = 1795737600          # 2026-11-27 00:00:00 UTC (`date -u -d 2026-11-27 +%s`)
MASTER = bytes(range(32))
VENDING_KEY = bytes.fromhex("abababababababab")
DECODER_KEY_HEX = "e653341f9d5bf36f"  # NectarAPI DKGA02 vector (see module doc)
PAN = "600727000000000009"
PRICE = 850               # paise per kWh on the meter
SECRETS = {"upi-gw": b"gw-secret"}
POLICY = C.RetryPolicy(puback_timeout_s=30, ack_timeout_s=120, max_ack_timeout_s=600)


@pytest.fixture
def db(engine):
    create_command_tables(engine)
    TK.create_tables(engine)
    register_meters(engine, ["UJ-1", "UJ-2"], tenant_code="PMC")
    with Session(engine) as s:
        s.add(TK.StsVendingKey.seal(MASTER, 123456, 1, VENDING_KEY))
        s.add(TK.StsMeterParams(meter_id="UJ-1", pan=PAN, sgc=123456, tariff_index=1, krn=1,
                                key_type=2, base_year=2014, paise_per_unit=PRICE))
        s.commit()
    return engine


def pay(db, amount=1000, txn="UPI-1", meter="UJ-1", now=T0, delivery=None):
    payload = {"amount_paise": amount, "payer_vpa": "asha@okbank", "txn_ref": txn,
               "meter_id": meter, "gateway": "upi-gw"}
    if delivery:
        payload["delivery"] = delivery
    raw = json.dumps(payload).encode()
    headers = {"X-Urja-Signature": P.sign_body(SECRETS["upi-gw"], raw)}
    with Session(db, expire_on_commit=False) as s:
        status, out = P.handle_payment_webhook(s, raw, headers, now=now, secrets=SECRETS,
                                               master_key=MASTER)
    assert status in (200, 201), out
    return out["receipt"]


def seen(db, meter, at, seq=1):
    with Session(db) as s:
        s.add(M.UplinkSeen(meter_id=meter, seq=seq, kind="heartbeat", t=at, received_at=at))
        s.commit()


def fresh_meter(now=T0):
    cfg = dict(FM.EXAMPLE_CONFIG)
    cfg["sts"] = {"key_hex": DECODER_KEY_HEX, "paise_per_unit": PRICE}
    return FM.Meter(FM.MeterConfig.from_dict(cfg), now)


def ledger(db, meter="UJ-1"):
    with Session(db) as s:
        return [(e.kind, e.amount_paise) for e in L.entries(s, meter)]


# --- arithmetic (pure) -------------------------------------------------------------------------

def test_vend_amount_floors_tenths_and_credits_what_the_meter_credits():
    # Rs 10.00 at Rs 8.50/kWh: 1000 * 10 // 850 = 11 tenths (1.1 kWh = 1100 Wh);
    # the meter: 1100 Wh * 850 // 1000 = 935 paise; 65 paise stay held
    assert TK.vend_amount(1000, PRICE) == (11, 935)


def test_vend_amount_stays_below_the_payment_where_the_amount_field_is_coarse():
    # Rs 2000 at Rs 1/kWh: 200000 * 10 // 100 = 20000 tenths; above 16383 the field
    # carries 16384 + 10 m (IEC 62055-41 exponent 1), so 16384 + 3610 = 19994 tenths;
    # credited 19994 * 100 Wh * 100 // 1000 = 199940 paise (60 held), never more
    assert TK.vend_amount(200000, 100) == (19994, 199940)


def test_receipt_groups_the_digits_in_fours():
    assert TK.group_digits("29054347139309851356") == "2905 4347 1393 0985 1356"


# --- path choice at payment time ---------------------------------------------------------------

def test_payment_for_an_offline_meter_is_a_token_the_meter_credits_as_the_receipt_says(db):
    seen(db, "UJ-1", T0 - 2 * 3600)  # last uplink 2 h ago: offline
    r = pay(db, amount=1000, now=T0)
    assert r["delivery"] == "token"
    tok = r["sts_token"]
    assert (tok["tenths"], tok["credited_paise"], tok["remainder_paise"]) == (11, 935, 65)
    assert tok["quantity"] == "1.1 kWh"
    assert r["topup"] == {"command_id": "TU-1", "state": "CANCELLED"}
    # TID: minutes since 2014-01-01: (1795737600 - 1388534400) / 60 = 6786720
    assert tok["tid"] == 6786720
    meter = fresh_meter(T0 + 600)
    before = meter.account.credit_paise
    reason, detail = meter.apply_sts_token(tok["digits"], T0 + 600)
    assert (reason, meter.account.credit_paise - before) == (sts.ACCEPTED, 935), detail


def test_payment_for_an_online_meter_stays_on_the_mqtt_command(db):
    seen(db, "UJ-1", T0 - 600)
    r = pay(db, now=T0)
    assert r["delivery"] == "mqtt" and "sts_token" not in r
    assert r["topup"] == {"command_id": "TU-1", "state": "QUEUED"}


def test_payer_may_ask_for_a_token_even_when_the_meter_is_online(db):
    seen(db, "UJ-1", T0 - 60)
    assert pay(db, delivery="token")["delivery"] == "token"


def test_payer_may_insist_on_mqtt_for_an_offline_meter(db):
    assert pay(db, delivery="mqtt")["topup"]["state"] == "QUEUED"


def test_a_meter_without_sts_parameters_gets_the_command_even_when_offline(db):
    r = pay(db, meter="UJ-2")
    assert r["delivery"] == "mqtt" and r["topup"]["state"] == "QUEUED"


def test_a_cancelled_command_is_never_due_for_sending(db):
    pay(db)  # UJ-1 never seen: offline -> token
    with Session(db) as s:
        assert C.due(s, T0 + 10) == []
        assert s.get(C.Command, "TU-1").state == C.CANCELLED


def test_duplicate_webhook_shows_the_same_token_and_vends_only_one(db):
    first = pay(db)
    again = pay(db)
    assert again["sts_token"]["digits"] == first["sts_token"]["digits"]
    with Session(db) as s:
        assert len(list(s.scalars(select(TK.StsToken)))) == 1


def test_two_tokens_in_one_minute_get_consecutive_tids_and_both_are_accepted(db):
    a = pay(db, txn="A", now=T0)["sts_token"]
    b = pay(db, txn="B", now=T0 + 20)["sts_token"]
    assert (a["tid"], b["tid"]) == (6786720, 6786721)
    meter = fresh_meter(T0 + 60)
    assert meter.apply_sts_token(a["digits"], T0 + 60)[0] == sts.ACCEPTED
    assert meter.apply_sts_token(b["digits"], T0 + 60)[0] == sts.ACCEPTED


# --- remainder and ledger ----------------------------------------------------------------------

def test_the_remainder_is_held_and_carried_into_the_next_token(db):
    first = pay(db, txn="A", amount=1000)["sts_token"]
    second = pay(db, txn="B", amount=1000, now=T0 + 3600)["sts_token"]
    # 1000 + 65 held = 1065: 1065 * 10 // 850 = 12 tenths, 12 * 850 // 10 = 1020, 45 held
    assert (second["carried_in_paise"], second["tenths"], second["credited_paise"],
            second["remainder_paise"]) == (65, 12, 1020, 45)
    with Session(db) as s:
        assert TK.held_remainder_paise(s, "UJ-1") == 45
    assert first["credited_paise"] + second["credited_paise"] + 45 == 2000


def test_ledger_books_the_token_once_when_the_meter_reports_it_applied(db):
    tok = pay(db, amount=1000)["sts_token"]
    with Session(db) as s:
        s.add(M.EventRecord(meter_id="UJ-1", event_seq=7, t=T0 + 900, code=E.TOPUP_APPLIED,
                            value=935, seq=3))
        s.commit()
        assert TK.match_meter_events(s, "UJ-1", T0 + 1000) == 1
        assert TK.match_meter_events(s, "UJ-1", T0 + 2000) == 0
        s.commit()
        assert L.undelivered_paise(s, "UJ-1") == 65  # 1000 received - 935 applied = held
    assert ledger(db) == [("PAYMENT_RECEIVED", 1000), ("TOKEN_ISSUED", 935),
                          ("STS_REMAINDER", 65), ("TOPUP_APPLIED", 935)]
    assert tok["state"] == "ISSUED"


def test_an_event_of_another_amount_does_not_mark_the_token_applied(db):
    pay(db, amount=1000)
    with Session(db) as s:
        s.add(M.EventRecord(meter_id="UJ-1", event_seq=1, t=T0 + 900, code=E.TOPUP_APPLIED,
                            value=1000, seq=1))
        s.commit()
        assert TK.match_meter_events(s, "UJ-1", T0 + 1000) == 0


def test_a_token_payment_never_books_topup_undelivered_for_its_cancelled_command(db):
    pay(db)
    with Session(db) as s:
        C.expire_due(s, T0 + 30 * 86400, POLICY)
        s.commit()
    assert "TOPUP_UNDELIVERED" not in [k for k, _ in ledger(db)]


# --- switching a queued payment ----------------------------------------------------------------

def test_a_queued_never_sent_command_can_switch_to_a_token(db):
    seen(db, "UJ-1", T0 - 60)
    pay(db)  # online: command
    with Session(db, expire_on_commit=False) as s:
        tok = TK.switch_to_token(s, 1, T0 + 7200, MASTER)
        assert s.get(C.Command, "TU-1").state == C.CANCELLED
    assert tok.credited_paise == 935


def test_a_sent_command_cannot_switch_so_the_meter_can_never_get_both(db):
    seen(db, "UJ-1", T0 - 60)
    pay(db)
    with Session(db, expire_on_commit=False) as s:
        C.prepare_send(s, s.get(C.Command, "TU-1"), bytes(32), T0 + 1, POLICY)
        s.commit()
        with pytest.raises(TK.TokenError, match="SENT"):
            TK.switch_to_token(s, 1, T0 + 7200, MASTER)
        assert s.get(C.Command, "TU-1").state == C.SENT
        assert list(s.scalars(select(TK.StsToken))) == []


def test_an_out_of_order_requeued_command_was_sent_and_cannot_switch(db):
    seen(db, "UJ-1", T0 - 60)
    pay(db)
    with Session(db, expire_on_commit=False) as s:
        cmd = s.get(C.Command, "TU-1")
        C.prepare_send(s, cmd, bytes(32), T0 + 1, POLICY)
        C.handle_ack(s, "UJ-1", {"id": "TU-1", "c": cmd.counter, "r": 3, "rn": "OUT_OF_ORDER"},
                     T0 + 2)
        s.commit()
        assert cmd.state == C.QUEUED
        with pytest.raises(TK.TokenError):
            TK.switch_to_token(s, 1, T0 + 7200, MASTER)


# --- keys and receipts -------------------------------------------------------------------------

def test_vending_key_is_encrypted_at_rest_and_a_wrong_master_key_does_not_open_it(db):
    with Session(db) as s:
        row = s.get(TK.StsVendingKey, (123456, 1))
        assert VENDING_KEY not in row.ciphertext + row.nonce + row.tag
        assert row.open(MASTER) == VENDING_KEY
        with pytest.raises(TK.TokenError):
            row.open(bytes(32))


def test_decoder_key_is_the_dkga02_vector(db):
    with Session(db) as s:
        params = s.get(TK.StsMeterParams, "UJ-1")
        assert "%016x" % TK.decoder_key(s, params, MASTER) == DECODER_KEY_HEX


def test_html_receipt_shows_the_grouped_token_and_the_held_remainder(db):
    r = pay(db)
    with Session(db) as s:
        page = L.receipt_view(s, r["number"])["html"]
    assert r["sts_token"]["digits_grouped"] in page
    assert "&#x20b9; 9.35" in page and "&#x20b9; 0.65" in page
