"""Consumer channel (headend/channel.py) and UPI links (headend/upi.py): conversations in English
and Hindi, isolation between consumers, rate limit, opt-out, and the recharge QR decoded by an
independent decoder (zxing-cpp) back to the text reply's link.

SQLite and PostgreSQL (``engine`` from headend/tests/conftest.py).
"""
import io
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from headend import channel as CH
from headend import commands as C  # noqa: F401 - registers the commands table
from headend import ledger as L
from headend import models as M
from headend import payments as P
from headend import upi
from headend.db import Base, make_sessionmaker

NOW = 1795737600          # 2026-11-27 00:00:00 UTC = 05:30 IST, a Friday
DAY = 86400
IST = 19800
MIDNIGHT_IST = NOW - IST      # 2026-11-27 00:00 IST = NOW - 5.5 h
ASHA, RAVI, MEENA, STRANGER = "+919800000001", "919800000002", "+919800000009", "+919811111111"
POLICY = CH.ChannelPolicy(vpa="pmc.power@okbank", payee_name="PMC Power",
                          public_url="https://urja.example", rate_limit=5, rate_window_s=60)
SECRET = b"channel-gateway-secret"


@pytest.fixture
def db(engine):
    Base.metadata.create_all(engine, checkfirst=True)
    with Session(engine) as s:
        t = M.Tenant(code="PMC", name="Pune Municipal")
        s.add(t)
        s.flush()
        # phones stored as people type them at registration: normalisation must find them
        asha = M.Consumer(tenant_id=t.id, account_no="A-1", name="Asha", phone="+91 98000 00001",
                          language="en")
        ravi = M.Consumer(tenant_id=t.id, account_no="A-2", name="Ravi", phone="09800000002",
                          language="hi")
        meena = M.Consumer(tenant_id=t.id, account_no="A-9", name="Meena", phone="9800000009",
                           language="en")
        s.add_all([asha, ravi, meena])
        s.flush()
        for mid, c in (("UJ-1", asha), ("UJ-2", ravi), ("UJ-3", ravi), ("UJ-9", meena)):
            s.add(M.Meter(id=mid, tenant_id=t.id, consumer_id=c.id, service="electricity"))
        s.flush()
        # UJ-1: 28 days + this morning of 125 Wh per half hour (6000 Wh a day)
        for i in range(28 * 48 + 11):
            s.add(M.Reading(meter_id="UJ-1", start_t=MIDNIGHT_IST - 28 * DAY + i * 1800,
                            energy=125, span_s=1800, received_at=NOW))
        # charged 1 paisa per Wh over the 28 days: 28 * 6000 Wh = 168000 paise
        for seq, (t_, charges) in enumerate(((MIDNIGHT_IST - 28 * DAY, 0),
                                             (MIDNIGHT_IST, 168000)), 1):
            s.add(status(M.StatusRecord, "UJ-1", seq, t_, 41250, charges))
        s.add(status(M.MeterBalance, "UJ-1", 2, NOW - 3600, 41250, 168000))
        s.add(status(M.MeterBalance, "UJ-2", 1, NOW - 60, 9900, 0))
        s.add(status(M.MeterBalance, "UJ-9", 1, NOW - 60, 777700, 0))
        s.commit()
    return engine


def status(model, meter_id, seq, t, balance, charges):
    return model(meter_id=meter_id, seq=seq, t=t, balance_paise=balance, credit_paise=balance,
                 emergency_paise=0, debt_paise=0, state="OK", relay_closed=True, limiter="off",
                 tariff_version=1, topups_total_paise=0, charges_total_paise=charges)


def say(engine, phone, text, now=NOW):
    with Session(engine, expire_on_commit=False) as s:
        out = CH.handle_message(s, phone, text, now, POLICY)
        s.commit()
        return out


def upi_params(link):
    """Decode a upi:// link with the standard library's URL parser (independent of upi.py)."""
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc) == ("upi", "pay")
    return dict(parse_qsl(parts.query, strict_parsing=True))


# --- UPI link and QR -----------------------------------------------------------------------

def test_upi_link_has_npci_fields_in_fixed_order_with_percent_encoding():
    # NPCI UPI Linking Specifications 1.6, section 1.2: pa, pn mandatory; am decimal rupees;
    # tn note; tr reference; cu=INR.  Spaces as %20 as in the spec's sample link.
    link = upi.payment_link("pmc.power@okbank", "PMC Power", 20000, "Recharge UJ-1", "UR1")
    assert link == ("upi://pay?pa=pmc.power@okbank&pn=PMC%20Power&am=200.00"
                    "&tn=Recharge%20UJ-1&tr=UR1&cu=INR")


def test_upi_amount_is_exact_from_paise():
    # 20050 paise = Rs 200 and 50 paise -> "200.50"; 100 paise -> "1.00"
    assert upi_params(upi.payment_link("a.b@upi", "X", 20050, "n", "R"))["am"] == "200.50"
    assert upi_params(upi.payment_link("a.b@upi", "X", 100, "n", "R"))["am"] == "1.00"


@pytest.mark.parametrize("kw", [dict(vpa="no-at-sign"), dict(amount_paise=99),
                                dict(amount_paise=200.0), dict(ref="has space"),
                                dict(note="x" * 51)])
def test_upi_link_refuses_what_an_app_would_refuse(kw):
    args = dict(vpa="a.b@upi", payee_name="X", amount_paise=20000, note="n", ref="R1")
    args.update(kw)
    with pytest.raises(upi.UpiError):
        upi.payment_link(**args)


def test_qr_png_decodes_with_zxing_to_the_text():
    zxingcpp = pytest.importorskip("zxingcpp")
    link = upi.payment_link("pmc.power@okbank", "PMC Power", 20000, "Recharge UJ-1", "UR1")
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(upi.qr_png(link))))
    assert [r.text for r in found] == [link]


# --- conversations -------------------------------------------------------------------------

def test_phone_numbers_in_every_common_form_normalise_to_e164():
    for text in ("+91 98000 00001", "919800000001", "09800000001", "98000-00001"):
        assert CH.normalise_phone(text) == "+919800000001"
    with pytest.raises(CH.ChannelError):
        CH.normalise_phone("12345")


def test_balance_in_english_shows_rupees_state_time_and_days_left(db):
    # 41250 paise = Rs 412.50; status at NOW-1h = 04:30 IST.  Use 6000 Wh/day at
    # 1 paisa/Wh = Rs 60/day: 41250 / 6000 = 6.875 days = 165 h -> "6 day(s)".
    out = say(db, ASHA, "balance")
    assert out.language == "en"
    assert out.text == ("Meter UJ-1: balance Rs 412.50 (OK) as of 27-11-2026 04:30. "
                        "About 6 day(s) of credit left at your recent use.")


def test_devanagari_balance_gets_a_hindi_reply(db):
    out = say(db, ASHA, "बैलेंस")
    assert out.language == "hi"
    assert out.text.startswith("मीटर UJ-1: शेष राशि ₹412.50 (OK), 27-11-2026 04:30 तक।")
    assert "लगभग 6 दिन" in out.text


def test_usage_reports_last_seven_days_and_today_so_far(db):
    # 7 days * 6000 Wh = 42.0 kWh, 6.0 kWh a day; today 00:00-05:30 IST = 11 half hours
    # * 125 Wh = 1375 Wh -> "1.3 kWh" (truncated to tenths)
    out = say(db, ASHA, "usage")
    assert out.text == ("Meter UJ-1 used 42.0 kWh in the last 7 days (6.0 kWh a day); "
                        "today so far 1.3 kWh.")


def test_help_lists_the_commands_in_english_and_hindi(db):
    assert "RECHARGE 200" in say(db, ASHA, "help").text
    assert "रिचार्ज 200" in say(db, ASHA, "मदद").text


def test_unknown_command_in_english_points_to_help(db):
    out = say(db, ASHA, "what is my bill")
    assert out.command == "unknown"
    assert out.text == 'Sorry, we did not understand "what is my bill". Send HELP for the list of commands.'


def test_unknown_command_in_devanagari_points_to_help_in_hindi(db):
    out = say(db, ASHA, "बिल कितना है")
    assert out.language == "hi"
    assert out.text.startswith('क्षमा करें, "बिल कितना है" समझ नहीं आया।')


def test_text_without_language_hint_uses_the_consumers_language(db):
    # Ravi's record says Hindi; "UJ-2" is neither a Hindi nor an English word
    assert say(db, RAVI, "UJ-2").language == "hi"


def test_another_consumers_meter_is_refused_and_its_balance_not_shown(db):
    out = say(db, ASHA, "balance UJ-9")
    assert out.text == "Meter UJ-9 is not linked to this number. Your meters: UJ-1."
    assert "7777" not in out.text


def test_each_consumer_sees_only_their_own_meter(db):
    # 777700 paise = Rs 7777.00 on Meena's UJ-9; Asha's UJ-1 must not appear
    out = say(db, MEENA, "balance")
    assert out.text.startswith("Meter UJ-9: balance Rs 7777.00 (OK)")
    assert "UJ-1" not in out.text


def test_another_consumers_meter_gets_the_same_refusal_as_a_missing_one(db):
    mine = say(db, ASHA, "balance UJ-9").text.replace("UJ-9", "X")
    missing = say(db, ASHA, "balance UJ-404").text.replace("UJ-404", "X")
    assert mine == missing


def test_recharge_for_another_consumers_meter_is_refused_without_a_link(db):
    out = say(db, ASHA, "recharge 200 UJ-9")
    assert "upi://" not in out.text and out.media_url is None


def test_several_meters_without_an_id_show_each_balance(db):
    out = say(db, RAVI, "balance")
    lines = out.text.split("\n")
    assert len(lines) == 2
    assert lines[0].startswith("Meter UJ-2: balance Rs 99.00 (OK)")
    assert lines[1] == "Meter UJ-3 has not reported its balance yet. Please try again later."


def test_meter_id_is_matched_without_case(db):
    assert say(db, RAVI, "balance uj-2").text.startswith("Meter UJ-2: balance Rs 99.00")


def test_recharge_answers_a_upi_link_and_its_qr_url(db):
    out = say(db, ASHA, "recharge 200")
    link = out.text.split(": ", 1)[1].split("  QR code: ")[0]
    p = upi_params(link)
    assert (p["pa"], p["pn"], p["am"], p["cu"], p["tn"]) == (
        "pmc.power@okbank", "PMC Power", "200.00", "INR", "Recharge UJ-1")
    assert out.media_url == "https://urja.example/channel/qr/%s.png" % p["tr"]
    assert out.text.endswith(out.media_url)
    with Session(db) as s:
        req = s.get(CH.RechargeRequest, p["tr"])
        assert (req.meter_id, req.amount_paise, req.link) == ("UJ-1", 20000, link)


def test_hindi_recharge_with_devanagari_digits(db):
    # "२००" is 200 in Devanagari digits
    out = say(db, ASHA, "रिचार्ज २००")
    assert out.language == "hi"
    assert out.text.startswith("मीटर UJ-1 के लिए ₹200.00 किसी भी UPI ऐप से भरें: upi://pay?")


def test_recharge_with_paise_is_exact(db):
    assert "am=150.50&" in say(db, ASHA, "recharge 150.50").text


def test_recharge_out_of_range_explains_the_limits(db):
    # POLICY defaults: Rs 10.00 .. Rs 10000.00
    for text in ("recharge 5", "recharge", "recharge 20000", "recharge 1.234"):
        out = say(db, ASHA, text)
        assert out.text == ("Please send the amount in rupees, from Rs 10.00 to Rs 10000.00, "
                            "e.g. RECHARGE 200."), text


def test_recharge_with_several_meters_asks_which(db):
    out = say(db, RAVI, "recharge 200")
    assert out.language == "en" and "UJ-2, UJ-3" in out.text and out.media_url is None


def test_unregistered_number_is_told_to_register(db):
    assert say(db, STRANGER, "balance").text.startswith("This number is not linked")
    assert say(db, STRANGER, "बैलेंस").text.startswith("यह नंबर किसी ऊर्जा मीटर से जुड़ा नहीं")


def test_rate_limit_refuses_politely_once_then_stays_silent(db):
    # limit 5 per 60 s: messages 1-5 answered, 6th gets the refusal, 7th nothing
    answers = [say(db, ASHA, "balance", NOW + i).text for i in range(7)]
    assert all(a.startswith("Meter UJ-1") for a in answers[:5])
    assert answers[5] == ("You have sent many messages in a short time. "
                          "Please wait a minute and try again.")
    assert answers[6] is None


def test_rate_limit_refusal_is_in_hindi_for_a_hindi_sender(db):
    answers = [say(db, ASHA, "बैलेंस", NOW + i).text for i in range(6)]
    assert answers[5].startswith("आपने थोड़े समय में बहुत से संदेश भेजे हैं")


def test_rate_limit_is_per_number(db):
    for i in range(7):
        say(db, ASHA, "balance", NOW + i)
    assert say(db, RAVI, "balance uj-2", NOW + 7).text.startswith("Meter UJ-2")


def test_rate_limit_clears_after_the_window(db):
    for i in range(7):
        say(db, ASHA, "balance", NOW + i)
    # messages at NOW..NOW+6; at NOW+66 the window (NOW+6, NOW+66] holds only this one
    assert say(db, ASHA, "balance", NOW + 66).text.startswith("Meter UJ-1")


def test_stop_confirms_then_silences_until_start(db):
    assert say(db, ASHA, "STOP").text.startswith("You will get no more Urja messages")
    assert say(db, ASHA, "balance", NOW + 1).text is None
    with Session(db) as s:
        assert CH.opted_out(s, "09800000001")
    assert say(db, ASHA, "START", NOW + 2).text.startswith("Welcome back")
    assert say(db, ASHA, "balance", NOW + 3).text.startswith("Meter UJ-1")


def test_hindi_stop_word_opts_out(db):
    assert say(db, RAVI, "बंद").text.startswith("इस नंबर पर अब ऊर्जा के संदेश नहीं आएँगे")
    with Session(db) as s:
        assert CH.opted_out(s, RAVI)


def test_saved_language_choice_wins_over_the_texts_language(db):
    assert say(db, ASHA, "hindi").text == "अब उत्तर हिंदी में आएँगे।"
    assert say(db, ASHA, "balance", NOW + 1).language == "hi"
    assert say(db, ASHA, "अंग्रेज़ी", NOW + 2).text == "Replies will now be in English."
    assert say(db, ASHA, "बैलेंस", NOW + 3).language == "en"


def test_receipt_shows_the_latest_payment_of_own_meters_only(db):
    secrets = {"upi-gw": b"gw"}
    for txn, meter, amount in (("T1", "UJ-1", 20000), ("T2", "UJ-9", 50000),
                               ("T3", "UJ-1", 30000)):
        raw = json.dumps({"amount_paise": amount, "payer_vpa": "x@upi", "txn_ref": txn,
                          "meter_id": meter, "gateway": "upi-gw"}).encode()
        with Session(db, expire_on_commit=False) as s:
            status_code, _ = P.handle_payment_webhook(
                s, raw, {"X-Urja-Signature": P.sign_body(b"gw", raw)}, now=NOW, secrets=secrets)
            assert status_code == 201
    with Session(db) as s:
        number = s.scalars(select(L.Receipt.number).join(
            L.Payment, L.Payment.id == L.Receipt.payment_id).where(L.Payment.txn_ref == "T3")).one()
    out = say(db, ASHA, "receipt")
    # T3 (UJ-1, Rs 300.00) is Asha's newest; T2 is Meena's and must not show
    assert out.text == ("Receipt %s: Rs 300.00 for meter UJ-1 on 27-11-2026 05:30, "
                        "UPI ref T3, top-up QUEUED." % number)


def test_receipt_without_payments_says_so(db):
    assert say(db, ASHA, "रसीद").text == "आपके मीटर के लिए अभी तक कोई भुगतान नहीं मिला।"


def test_every_message_is_logged_with_whether_it_was_answered(db):
    for i in range(7):
        say(db, ASHA, "balance", NOW + i)
    with Session(db) as s:
        rows = s.execute(select(CH.InboundMessage.replied).where(
            CH.InboundMessage.phone == ASHA).order_by(CH.InboundMessage.id)).scalars().all()
    assert rows == [True] * 6 + [False]


# --- the webhook over HTTP -----------------------------------------------------------------

@pytest.fixture
def client(db):
    app = FastAPI()
    app.include_router(CH.make_router(make_sessionmaker(db), POLICY, secret=SECRET,
                                      clock=lambda: NOW))
    return TestClient(app)


def post(client, body, secret=SECRET):
    raw = json.dumps(body).encode()
    return client.post("/channel/webhook", content=raw,
                       headers={"X-Urja-Signature": P.sign_body(secret, raw),
                                "content-type": "application/json"})


def test_webhook_qr_image_decodes_to_the_same_link_as_the_text_reply(client):
    zxingcpp = pytest.importorskip("zxingcpp")
    r = post(client, {"from": "+919800000001", "text": "recharge 200", "channel": "whatsapp"})
    assert r.status_code == 200
    out = r.json()
    link = out["text"].split(": ", 1)[1].split("  QR code: ")[0]
    png = client.get(urlsplit(out["media_url"]).path)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    decoded = [x.text for x in zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))]
    assert decoded == [link]


def test_webhook_hindi_balance(client):
    r = post(client, {"from": "+919800000002", "text": "शेष UJ-2"})
    assert r.json()["text"].startswith("मीटर UJ-2: शेष राशि ₹99.00")


def test_webhook_refuses_a_forged_signature_and_stores_nothing(client, db):
    r = post(client, {"from": ASHA, "text": "balance"}, secret=b"wrong")
    assert r.status_code == 401
    with Session(db) as s:
        assert s.scalar(select(func.count()).select_from(CH.InboundMessage)) == 0


def test_webhook_refuses_a_body_without_text(client):
    assert post(client, {"from": ASHA}).status_code == 422
    assert post(client, {"from": "12", "text": "balance"}).status_code == 422


def test_webhook_without_a_configured_secret_refuses_everyone(db, monkeypatch):
    monkeypatch.delenv(CH.SECRET_ENV, raising=False)
    app = FastAPI()
    app.include_router(CH.make_router(make_sessionmaker(db), POLICY, clock=lambda: NOW))
    r = TestClient(app).post("/channel/webhook", content=b"{}")
    assert r.status_code == 401


def test_unknown_qr_reference_is_404(client):
    assert client.get("/channel/qr/URDEADBEEF.png").status_code == 404
    assert client.get("/channel/qr/..%2Fetc.png").status_code == 404


# --- a payment carrying the recharge link's reference ------------------------------------------

def pay(engine, meter_id, amount, txn, tr=None):
    body = {"amount_paise": amount, "payer_vpa": "x@upi", "txn_ref": txn, "meter_id": meter_id,
            "gateway": "upi-gw"}
    if tr is not None:
        body["tr"] = tr
    raw = json.dumps(body).encode()
    with Session(engine, expire_on_commit=False) as s:
        return P.handle_payment_webhook(s, raw, {"X-Urja-Signature": P.sign_body(b"gw", raw)},
                                        now=NOW + 120, secrets={"upi-gw": b"gw"})


@pytest.fixture
def receipts_out(tmp_path, monkeypatch):
    """Where the channel's receipt messages go: a real LogNotifier file, read back."""
    from headend import notify
    path = tmp_path / "receipts.jsonl"
    monkeypatch.setattr(CH, "RECEIPT_NOTIFIER", notify.LogNotifier(str(path)))
    return lambda: [json.loads(x) for x in path.read_text("utf-8").splitlines()] \
        if path.exists() else []


def test_payment_with_the_links_reference_sends_the_receipt_to_the_number_that_asked(
        db, receipts_out):
    # Ravi (Hindi) asks on WhatsApp for a Rs 150 link for UJ-2; the gateway pays it with tr
    link_reply = say(db, RAVI, "रिचार्ज 150 UJ-2")
    ref = upi_params(link_reply.text.split(": ", 1)[1].split("  QR")[0])["tr"]
    status, out = pay(db, "UJ-2", 15000, "UPI-777", tr=ref)
    assert status == 201
    [msg] = receipts_out()
    number = out["receipt"]["number"]
    # to Ravi's number as the channel stores it (E.164), in his language, this payment's receipt
    assert (msg["to"], msg["language"], msg["kind"]) == ("+919800000002", "hi", "receipt")
    assert msg["text"] == ("रसीद %s: मीटर UJ-2 के लिए ₹150.00, 27-11-2026 05:32, UPI संदर्भ "
                           "UPI-777, रिचार्ज स्थिति QUEUED।" % number)
    with Session(db) as s:
        pid = s.scalars(select(L.Payment.id).where(L.Payment.txn_ref == "UPI-777")).one()
        req = CH.recharge_of_payment(s, pid)
        assert (req.ref, req.phone, req.meter_id) == (ref, "+919800000002", "UJ-2")
    # a gateway retry is a duplicate: same receipt, no second message
    assert pay(db, "UJ-2", 15000, "UPI-777", tr=ref)[0] == 200
    assert len(receipts_out()) == 1


def test_payment_with_a_reference_issued_for_another_meter_is_refused(db, receipts_out):
    ref = upi_params(say(db, ASHA, "recharge 200").text.split(": ", 1)[1]
                     .split("  QR")[0])["tr"]
    status, out = pay(db, "UJ-9", 20000, "UPI-778", tr=ref)
    assert status == 409 and "another meter" in out["error"]
    with Session(db) as s:
        assert s.scalar(select(func.count()).select_from(L.Payment)) == 0
    assert receipts_out() == []


def test_payment_without_our_reference_is_recorded_and_sends_nothing(db, receipts_out):
    assert pay(db, "UJ-1", 20000, "UPI-779")[0] == 201
    assert pay(db, "UJ-1", 20000, "UPI-780", tr="SOMEOTHERREF1")[0] == 201
    assert receipts_out() == []
    with Session(db) as s:
        ids = s.scalars(select(L.Payment.id).order_by(L.Payment.id)).all()
        assert [CH.recharge_of_payment(s, i) for i in ids] == [None, None]


def test_receipt_is_not_sent_to_a_number_that_opted_out(db, receipts_out):
    ref = upi_params(say(db, ASHA, "recharge 200").text.split(": ", 1)[1]
                     .split("  QR")[0])["tr"]
    say(db, ASHA, "STOP", NOW + 1)
    assert pay(db, "UJ-1", 20000, "UPI-781", tr=ref)[0] == 201
    assert receipts_out() == []


def test_a_malformed_reference_is_a_bad_field(db):
    status, out = pay(db, "UJ-1", 20000, "UPI-782", tr="has space")
    assert status == 422 and "tr must be" in out["error"]
