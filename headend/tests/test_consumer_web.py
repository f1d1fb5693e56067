"""The consumer's mobile web page (headend/consumer_web.py): login by phone number and a
one-time code sent through the consumer notifier, own meters only, balance and usage in
Hindi and English, recharge with a UPI link and a QR image that decodes to it, receipts.

World: test_channel's consumers (Asha UJ-1, Ravi UJ-2 + UJ-3 in Hindi, Meena UJ-9), SQLite
and PostgreSQL.  The codes travel through a real ``notify.LogNotifier`` file, read back the
way an SMS would be read.
"""
import io
import json
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from headend import channel as CH
from headend import consumer_web as CW
from headend import notify
from headend import payments as P
from headend.db import make_sessionmaker
from headend.tests.test_channel import ASHA, NOW, POLICY, RAVI, STRANGER, db  # noqa: F401

SECRET = b"consumer-web-test-secret"
# login edge cases only count rows of one table: SQLite is enough for them (the pages'
# queries run on PostgreSQL too, in the other tests)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class Site:
    def __init__(self, engine, tmp_path):
        self.engine = engine
        self.outbox = tmp_path / "sms.jsonl"
        self.clock = [NOW]
        app = FastAPI()
        sessions = make_sessionmaker(engine)
        app.include_router(CH.make_router(sessions, POLICY, secret=b"x", clock=self.now))
        app.include_router(CW.make_router(sessions, POLICY, secret=SECRET,
                                          notifier=notify.LogNotifier(str(self.outbox)),
                                          clock=self.now))
        self.app = app

    def now(self):
        return self.clock[0]

    def browser(self):
        return TestClient(self.app)

    def sent(self):
        if not self.outbox.exists():
            return []
        return [json.loads(line) for line in self.outbox.read_text("utf-8").splitlines()]

    def ask_code(self, client, phone):
        r = client.post("/my/login", data={"phone": phone})
        challenge = re.search(r'name="challenge" value="([^"]+)"', r.text)
        return r, challenge.group(1) if challenge else None

    def code_in(self, message):
        return re.search(r"\b(\d{6})\b", message["text"]).group(1)

    def login(self, phone):
        c = self.browser()
        r, challenge = self.ask_code(c, phone)
        assert r.status_code == 200, r.text
        code = self.code_in(self.sent()[-1])
        r = c.post("/my/verify", data={"phone": phone, "challenge": challenge, "code": code},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/my/", r.text
        return c


@pytest.fixture
def site(db, tmp_path):  # noqa: F811 - test_channel's world
    return Site(db, tmp_path)


def csrf(html):
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def test_code_goes_to_the_phone_and_the_page_shows_only_own_meters(site):
    c = site.login("98000 00001")
    [msg] = site.sent()
    assert (msg["to"], msg["kind"], msg["language"]) == (ASHA, "login_code", "en")
    assert msg["text"].startswith("Urja: %s is your login code" % site.code_in(msg))
    html = c.get("/my/").text
    # the conversation's own texts: 41250 p = Rs 412.50, 6000 Wh a day at 1 p/Wh -> 6 days
    assert ("Meter UJ-1: balance Rs 412.50 (OK) as of 27-11-2026 04:30. "
            "About 6 day(s) of credit left at your recent use.") in html
    assert "Meter UJ-1 used 42.0 kWh in the last 7 days (6.0 kWh a day)" in html
    assert re.findall(r'data-meter="([^"]+)"', html) == ["UJ-1"]
    assert "UJ-9" not in html and "7777" not in html


def test_hindi_consumer_gets_the_page_in_hindi_and_can_switch(site):
    c = site.login(RAVI)
    assert site.sent()[-1]["text"].startswith("ऊर्जा: उपभोक्ता पन्ने के लिए आपका लॉग इन कोड")
    html = c.get("/my/").text
    assert '<html lang="hi">' in html
    assert "मीटर UJ-2: शेष राशि ₹99.00 (OK)" in html and "रसीदें" in html
    assert re.findall(r'data-meter="([^"]+)"', html) == ["UJ-2", "UJ-3"]
    r = c.get("/my/lang/en?next=/my/")
    assert "Meter UJ-2: balance Rs 99.00 (OK)" in r.text and "Receipts" in r.text


@sqlite_only
def test_page_is_small_mobile_html_without_scripts(site):
    html = site.login(ASHA).get("/my/").text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<script" not in html and len(html.encode()) < 12000


@sqlite_only
def test_wrong_code_is_refused_and_five_failures_lock_the_number(site):
    c = site.browser()
    _, challenge = site.ask_code(c, ASHA)
    right = site.code_in(site.sent()[-1])
    wrong = "%06d" % ((int(right) + 1) % 1000000)
    for _ in range(5):
        r = c.post("/my/verify", data={"phone": ASHA, "challenge": challenge, "code": wrong})
        assert r.status_code == 401 and "That code is wrong" in r.text
    # locked: even the right code is refused now
    r = c.post("/my/verify", data={"phone": ASHA, "challenge": challenge, "code": right})
    assert r.status_code == 429 and "Too many attempts" in r.text
    assert CW.COOKIE not in c.cookies


@sqlite_only
def test_a_code_works_once(site):
    c = site.browser()
    _, challenge = site.ask_code(c, ASHA)
    form = {"phone": ASHA, "challenge": challenge, "code": site.code_in(site.sent()[-1])}
    assert c.post("/my/verify", data=form, follow_redirects=False).status_code == 303
    assert site.browser().post("/my/verify", data=form).status_code == 401


@sqlite_only
def test_an_expired_code_is_refused(site):
    c = site.browser()
    _, challenge = site.ask_code(c, ASHA)
    site.clock[0] = NOW + CW.CODE_TTL_S + 1
    r = c.post("/my/verify", data={"phone": ASHA, "challenge": challenge,
                                   "code": site.code_in(site.sent()[-1])})
    assert r.status_code == 401


@sqlite_only
def test_a_code_for_one_number_does_not_log_in_another(site):
    c = site.browser()
    _, challenge = site.ask_code(c, ASHA)
    r = c.post("/my/verify", data={"phone": RAVI, "challenge": challenge,
                                   "code": site.code_in(site.sent()[-1])})
    assert r.status_code == 401


@sqlite_only
def test_unregistered_number_gets_the_same_answer_and_no_message(site):
    r, _ = site.ask_code(site.browser(), STRANGER)
    r2, _ = site.ask_code(site.browser(), ASHA)
    assert r.status_code == r2.status_code == 200
    assert "a 6-digit code is on its way" in r.text
    assert [m["to"] for m in site.sent()] == [ASHA]


@sqlite_only
def test_code_requests_are_limited_per_number(site):
    for _ in range(CW.MAX_CODES):
        assert site.ask_code(site.browser(), ASHA)[0].status_code == 200
    r, _ = site.ask_code(site.browser(), ASHA)
    assert r.status_code == 429 and len(site.sent()) == CW.MAX_CODES
    with Session(site.engine) as s:   # logged with the channel's messages (its rate limit too)
        assert s.scalar(select(func.count()).select_from(CH.InboundMessage).where(
            CH.InboundMessage.phone == ASHA, CH.InboundMessage.command == CW.CODE_CMD)) == 3


@sqlite_only
def test_pages_need_a_valid_session(site):
    c = site.browser()
    assert c.get("/my/", follow_redirects=False).headers["location"] == "/my/login"
    # a cookie naming another number without the server's MAC is worthless
    forged = CW.session_cookie(b"not the secret", ASHA, NOW + 3600)
    c.cookies.set(CW.COOKIE, forged, path="/my")
    assert c.get("/my/", follow_redirects=False).status_code == 303
    real = site.login(ASHA)
    site.clock[0] = NOW + CW.SESSION_TTL_S + 1
    assert real.get("/my/", follow_redirects=False).status_code == 303


def test_recharge_gives_a_upi_link_and_a_qr_image_that_decodes_to_it(site):
    zxingcpp = pytest.importorskip("zxingcpp")
    c = site.login(ASHA)
    r = c.post("/my/recharge", data={"csrf": csrf(c.get("/my/").text), "meter_id": "UJ-1",
                                     "amount": "200"})
    assert r.status_code == 200
    link = re.search(r'id="upi-link" href="([^"]+)"', r.text).group(1).replace("&amp;", "&")
    assert link.startswith("upi://pay?pa=pmc.power@okbank&pn=PMC%20Power&am=200.00&")
    qr = re.search(r'id="upi-qr" src="([^"]+)"', r.text).group(1)
    png = c.get(qr)
    assert png.headers["content-type"] == "image/png"
    assert [x.text for x in zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))] == [link]
    with Session(site.engine) as s:
        req = s.get(CH.RechargeRequest, re.search(r"tr=(\w+)", link).group(1))
        assert (req.meter_id, req.amount_paise, req.phone) == ("UJ-1", 20000, ASHA)


def test_recharge_of_another_consumers_meter_is_refused_like_a_missing_one(site):
    c = site.login(ASHA)
    token = csrf(c.get("/my/").text)
    r = c.post("/my/recharge", data={"csrf": token, "meter_id": "UJ-9", "amount": "200"})
    assert r.status_code == 404 and "Meter UJ-9 is not linked to this number" in r.text
    assert "upi://" not in r.text
    r = c.post("/my/recharge", data={"csrf": token, "meter_id": "UJ-1", "amount": "5"})
    assert r.status_code == 422 and "from Rs 10.00 to Rs 10000.00" in r.text
    r = c.post("/my/recharge", data={"csrf": "0" * 32, "meter_id": "UJ-1", "amount": "200"})
    assert r.status_code == 403
    with Session(site.engine) as s:
        assert s.scalar(select(func.count()).select_from(CH.RechargeRequest)) == 0


def test_receipts_page_lists_own_receipts_only(site):
    for txn, meter, amount in (("T1", "UJ-1", 20000), ("T2", "UJ-9", 50000)):
        raw = json.dumps({"amount_paise": amount, "payer_vpa": "x@upi", "txn_ref": txn,
                          "meter_id": meter, "gateway": "gw"}).encode()
        with Session(site.engine) as s:
            status, _ = P.handle_payment_webhook(s, raw, {"X-Urja-Signature": P.sign_body(
                b"k", raw)}, now=NOW, secrets={"gw": b"k"})
            assert status == 201
    html = site.login(ASHA).get("/my/receipts").text
    lines = re.findall(r'<p class="receipt">([^<]+)</p>', html)
    assert len(lines) == 1 and "Rs 200.00 for meter UJ-1" in lines[0] and "UPI ref T1" in lines[0]
