"""Payment webhook: signature, idempotency under concurrency, receipts, ledger.

SQLite and PostgreSQL (``db_url`` from headend/tests/conftest.py).
"""
import json
import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from firmware.core import auth
from headend import commands as C
from headend import ledger as L
from headend import payments as P
from headend.tests.conftest import register_meters
from headend.tests.test_commands import create_tables

T0 = 1795737600  # 2026-11-27 00:00:00 UTC
SECRET = b"gateway-shared-secret"
SECRETS = {"upi-gw": SECRET}


def body(amount=50000, txn="UPI-000123", meter="UJ-1", vpa="asha@okbank", gateway="upi-gw"):
    return json.dumps({"amount_paise": amount, "payer_vpa": vpa, "txn_ref": txn,
                       "meter_id": meter, "gateway": gateway}).encode()


def signed(raw, secret=SECRET):
    return {"X-Urja-Signature": P.sign_body(secret, raw)}


def deliver(engine, raw, headers, now=T0):
    with Session(engine, expire_on_commit=False) as s:
        return P.handle_payment_webhook(s, raw, headers, now=now, secrets=SECRETS)


def counts(engine):
    with Session(engine) as s:
        return tuple(s.scalar(select(func.count()).select_from(m))
                     for m in (L.Payment, L.TopUp, L.Receipt, C.Command, L.LedgerEntry))


@pytest.fixture
def db(engine):
    create_tables(engine)
    register_meters(engine, ["UJ-1"], tenant_code="PMC")
    return engine


def test_signature_is_rfc4231_hmac_sha256_hex():
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert P.sign_body(b"Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_a_signed_payment_creates_payment_topup_receipt_command_and_ledger_entry(db):
    raw = body()
    status, out = deliver(db, raw, signed(raw))
    assert status == 201 and out["duplicate"] is False
    r = out["receipt"]
    assert (r["number"], r["amount_paise"], r["amount_rupees"]) == ("PMC-R00000001", 50000,
                                                                    "500.00")
    assert r["topup"] == {"command_id": "TU-1", "state": "QUEUED"}
    assert counts(db) == (1, 1, 1, 1, 1)
    with Session(db) as s:
        cmd = s.get(C.Command, "TU-1")
        assert (cmd.kind, cmd.fields, cmd.meter_id) == ("topup", ["TU-1", 50000], "UJ-1")


def test_the_same_payment_delivered_five_times_at_once_is_stored_once(db):
    raw = body()
    results, errors = [], []
    gate = threading.Barrier(5)

    def gateway_retry():
        try:
            gate.wait()
            results.append(deliver(db, raw, signed(raw)))
        except Exception as err:  # surfaced below
            errors.append(err)
    threads = [threading.Thread(target=gateway_retry) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(status for status, _ in results) == [200, 200, 200, 200, 201]
    assert {out["receipt"]["number"] for _, out in results} == {"PMC-R00000001"}
    assert counts(db) == (1, 1, 1, 1, 1)  # payment, top-up, receipt, command, ledger entry


def test_a_sequential_redelivery_answers_the_same_receipt(db):
    raw = body()
    first = deliver(db, raw, signed(raw))
    again = deliver(db, raw, signed(raw), now=T0 + 3600)
    assert again == (200, {"receipt": first[1]["receipt"], "duplicate": True})


def test_a_forged_signature_is_401_and_stores_nothing(db):
    raw = body()
    status, out = deliver(db, raw, signed(raw, secret=b"attacker-guess"))
    assert status == 401
    assert counts(db) == (0, 0, 0, 0, 0)


def test_a_body_altered_after_signing_is_401_and_stores_nothing(db):
    headers = signed(body(amount=100))
    status, _ = deliver(db, body(amount=10000000), headers)
    assert status == 401
    assert counts(db) == (0, 0, 0, 0, 0)


def test_a_missing_signature_is_401(db):
    assert deliver(db, body(), {})[0] == 401
    assert counts(db) == (0, 0, 0, 0, 0)


def test_an_unknown_gateway_is_401_even_with_a_well_formed_signature(db):
    raw = body(gateway="other")
    assert deliver(db, raw, signed(raw))[0] == 401
    assert counts(db) == (0, 0, 0, 0, 0)


def test_signature_header_name_is_case_insensitive(db):
    raw = body()
    status, _ = deliver(db, raw, {"x-urja-signature": P.sign_body(SECRET, raw)})
    assert status == 201


def test_a_float_amount_is_422_and_stores_nothing(db):
    raw = json.dumps({"amount_paise": 500.5, "payer_vpa": "a@b", "txn_ref": "T",
                      "meter_id": "UJ-1", "gateway": "upi-gw"}).encode()
    assert deliver(db, raw, signed(raw))[0] == 422
    assert counts(db) == (0, 0, 0, 0, 0)


def test_a_payment_for_an_unknown_meter_is_404_and_stores_nothing(db):
    raw = body(meter="UJ-404")
    assert deliver(db, raw, signed(raw))[0] == 404
    assert counts(db) == (0, 0, 0, 0, 0)


def test_a_reused_txn_ref_with_another_amount_is_409_and_keeps_the_first(db):
    first = body(amount=50000)
    deliver(db, first, signed(first))
    other = body(amount=90000)
    assert deliver(db, other, signed(other))[0] == 409
    assert counts(db) == (1, 1, 1, 1, 1)


def test_not_json_is_400(db):
    raw = b"amount=5"
    assert deliver(db, raw, signed(raw))[0] == 400


def test_the_same_txn_ref_at_two_gateways_is_two_payments(db):
    a = body(gateway="upi-gw")
    SECRETS["card-gw"] = b"card-secret"
    try:
        b = body(gateway="card-gw")
        assert deliver(db, a, signed(a))[0] == 201
        assert deliver(db, b, signed(b, b"card-secret"))[0] == 201
    finally:
        del SECRETS["card-gw"]
    assert counts(db)[0] == 2


def test_receipt_html_escapes_what_the_payer_sent(db):
    raw = body(vpa="<script>x</script>@upi")
    deliver(db, raw, signed(raw))
    with Session(db) as s:
        view = L.receipt_view(s, "PMC-R00000001")
    assert "<script>" not in view["html"]
    assert "&lt;script&gt;x&lt;/script&gt;@upi" in view["html"]
    assert "&#x20b9; 500.00" in view["html"]
    assert view["json"]["payer_vpa"] == "<script>x</script>@upi"


def test_an_unknown_receipt_number_is_none(db):
    with Session(db) as s:
        assert L.receipt_view(s, "PMC-R99999999") is None


def test_rupees_are_formatted_from_integer_paise():
    # 12345 paise = Rs 123.45; 5 paise = Rs 0.05; -250 paise = Rs -2.50
    assert [L.rupees(p) for p in (12345, 5, 0, -250)] == ["123.45", "0.05", "0.00", "-2.50"]


def test_ledger_holds_the_money_until_the_meter_acks_the_topup(db):
    raw = body(amount=50000)
    deliver(db, raw, signed(raw))
    with Session(db, expire_on_commit=False) as s:
        assert L.undelivered_paise(s, "UJ-1") == 50000
        cmd = s.get(C.Command, "TU-1")
        C.prepare_send(s, cmd, bytes(32), T0, C.RetryPolicy())
        C.handle_ack(s, "UJ-1", {"id": "TU-1", "c": cmd.counter, "r": auth.OK, "rn": "OK"},
                     T0 + 60)
        C.handle_ack(s, "UJ-1", {"id": "TU-1", "c": cmd.counter, "r": auth.REPLAYED,
                                 "rn": "REPLAYED"}, T0 + 90)  # a duplicate copy's ack
        s.commit()
        kinds = [(e.kind, e.amount_paise) for e in L.entries(s, "UJ-1")]
        assert kinds == [(L.PAYMENT_RECEIVED, 50000), (L.TOPUP_APPLIED, 50000)]
        assert L.undelivered_paise(s, "UJ-1") == 0


def test_a_failed_topup_is_booked_as_undelivered(db):
    raw = body(amount=50000)
    deliver(db, raw, signed(raw))
    with Session(db, expire_on_commit=False) as s:
        cmd = s.get(C.Command, "TU-1")
        C.prepare_send(s, cmd, bytes(32), T0, C.RetryPolicy())
        C.handle_ack(s, "UJ-1", {"id": "TU-1", "c": cmd.counter, "r": auth.BAD_MAC,
                                 "rn": "BAD_MAC"}, T0 + 60)
        s.commit()
        kinds = [e.kind for e in L.entries(s, "UJ-1")]
        assert kinds == [L.PAYMENT_RECEIVED, L.TOPUP_UNDELIVERED]
        assert L.undelivered_paise(s, "UJ-1") == 50000
