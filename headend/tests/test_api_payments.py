"""The payment webhook mounted in the API, and receipts (JSON + HTML) behind Scope.

The webhook handler itself (signatures, idempotency) is headend/payments.py and
its own tests; these check what the API adds: only the payment_gateway role may
post, only for meters of its own tenant, and receipts are visible only to the
meter's tenant staff and its consumer.
"""
import json

import pytest

from headend.payments import SIGNATURE_HEADER, sign_body
from headend.tests.api_world import audit_rows, make_world

SECRET = b"gateway-a-secret"


@pytest.fixture
def world(engine, monkeypatch):
    monkeypatch.setenv("URJA_PAYMENT_GATEWAY_SECRETS", "upi-a:" + SECRET.hex())
    w = make_world(engine, real_queue=True)
    yield w
    w.client.close()


def pay(world, user, meter_id="A-01", txn_ref="UPI-1", amount=50000, secret=SECRET):
    raw = json.dumps({"amount_paise": amount, "payer_vpa": "ravi@upi", "txn_ref": txn_ref,
                      "meter_id": meter_id, "gateway": "upi-a"}).encode()
    headers = dict(world.as_(user))
    headers[SIGNATURE_HEADER] = sign_body(secret, raw)
    headers["content-type"] = "application/json"
    return world.client.post("/payments/webhook", content=raw, headers=headers)


def test_gateway_payment_creates_receipt_once(world):
    first = pay(world, "gw_a")
    assert first.status_code == 201, first.text
    again = pay(world, "gw_a")
    assert again.status_code == 200
    assert again.json()["receipt"]["number"] == first.json()["receipt"]["number"]
    assert again.json()["duplicate"] is True


def test_forged_signature_is_401_through_the_api(world):
    r = pay(world, "gw_a", secret=b"not-the-secret")
    assert r.status_code == 401
    assert world.get("op_a", "/commands").json() == []


def test_gateway_of_tenant_b_cannot_credit_tenant_a_meter_even_with_valid_signature(world):
    assert pay(world, "gw_b").status_code == 404
    assert world.get("op_a", "/commands").json() == []


def test_webhook_calls_are_audited_with_their_status(world):
    pay(world, "gw_a")
    pay(world, "gw_a", secret=b"forged")
    rows = audit_rows(world.engine, action="payment.webhook")
    assert [(r.actor, r.outcome, r.meter_id) for r in rows] == [("gw-a", "201", "A-01"),
                                                                  ("gw-a", "401", "A-01")]


def test_receipt_json_and_html_for_owner_and_staff(world):
    number = pay(world, "gw_a").json()["receipt"]["number"]
    r = world.get("ravi", "/receipts/%s" % number)
    assert r.status_code == 200
    assert (r.json()["meter_id"], r.json()["amount_paise"]) == ("A-01", 50000)
    assert world.get("op_a", "/receipts/%s" % number).status_code == 200
    h = world.get("ravi", "/receipts/%s/html" % number)
    assert h.status_code == 200 and h.headers["content-type"].startswith("text/html")
    # 50000 paise = Rs 500.00
    assert number in h.text and "500.00" in h.text


@pytest.mark.parametrize("user", ["sita", "op_b", "bina"])
def test_receipt_is_invisible_to_other_consumers_and_tenants(world, user):
    number = pay(world, "gw_a").json()["receipt"]["number"]
    assert world.get(user, "/receipts/%s" % number).status_code == 404
    assert world.get(user, "/receipts/%s/html" % number).status_code == 404


def test_gateway_cannot_read_receipts(world):
    number = pay(world, "gw_a").json()["receipt"]["number"]
    assert world.get("gw_a", "/receipts/%s" % number).status_code == 403


@pytest.mark.parametrize("bad_id", ["\x00", "A-01\x00", "", "x" * 65])
def test_malformed_meter_id_is_422_not_a_server_error(world, bad_id):
    # found by the schemathesis run: PostgreSQL refuses NUL in text, which was a 500
    r = pay(world, "gw_a", meter_id=bad_id)
    assert r.status_code == 422, r.text
    assert world.get("op_a", "/commands").json() == []
