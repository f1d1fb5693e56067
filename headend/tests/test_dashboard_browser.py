"""The dashboard in a real headless Chromium (Playwright driving the system browser).

The issue 9 acceptance walk: log in, see the fleet page, open a meter, queue a
top-up, attempt a mass disconnect and be stopped for a second approval.  The
head-end runs under uvicorn on a free local port; screenshots of each step go to
reports/browser/ (kept as CI artifacts).

Needs the Debian packages ``chromium`` (and the PyPI package ``playwright``;
its own browser download is not used).  A missing browser is a failure that
says how to install it, never a skip.
"""
import json
import os
import pathlib
import re
import socket
import threading
import time

import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from headend import commands as C
from headend import migrations
from headend import models as M
from headend.db import make_engine
from headend.tests.api_world import NOW, make_world
from headend.tests.test_dashboard import PASSWORD, seed_dashboard

CHROMIUM = os.environ.get("URJA_CHROMIUM", "/usr/bin/chromium")
SHOTS = pathlib.Path(__file__).resolve().parents[2] / "reports" / "browser"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
HOW_TO_INSTALL = """The dashboard browser test needs headless Chromium and Playwright:
  apt-get install -y chromium chromium-driver      (Debian/Ubuntu; gives %s)
  .venv/bin/pip install playwright                  (no 'playwright install' needed)
or set URJA_CHROMIUM to a Chromium binary.  Problem: %s"""


def sync_playwright_or_fail():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(HOW_TO_INSTALL % (CHROMIUM, err), pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(HOW_TO_INSTALL % (CHROMIUM, "no executable at %s" % CHROMIUM), pytrace=False)
    return sync_playwright


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """(base_url, world): the seeded dashboard world served by uvicorn on 127.0.0.1."""
    url = "sqlite:///%s" % (tmp_path / "urja.db")
    migrations.upgrade(url)
    engine = make_engine(url)
    world = make_world(engine, real_queue=True, disconnect_approval_pct=5,
                       disconnect_window_s=3600)
    seed_dashboard(engine)
    with Session(engine) as s:  # a day's shape on A-04 so the meter page has charts to show
        for k, wh in enumerate((40, 35, 30, 60, 180, 220, 150, 90)):
            s.add(M.Reading(meter_id="A-04", start_t=NOW - 8 * 900 + 900 * k, energy=wh,
                            span_s=900, flags=0, received_at=NOW - 60))
        for k, paise in enumerate((9000, 7000, 5000)):
            s.add(M.StatusRecord(meter_id="A-04", seq=k + 1, t=NOW - 3 * 3600 + 3600 * k,
                                 balance_paise=paise, credit_paise=paise, emergency_paise=0,
                                 debt_paise=0, state="OK" if paise > 5000 else "LOW",
                                 relay_closed=True, limiter="NORMAL", tariff_version=1,
                                 topups_total_paise=20000, charges_total_paise=20000 - paise))
        s.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(world.client.app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("uvicorn did not start on port %d" % port)
        time.sleep(0.05)
    try:
        yield "http://127.0.0.1:%d" % port, world
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


def test_operator_logs_in_tops_up_and_mass_disconnect_waits_for_approval(served):
    base, world = served
    sync_playwright = sync_playwright_or_fail()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(15000)

            page.goto(base + "/ui/")
            assert page.url == base + "/ui/login?next=/ui/"
            page.screenshot(path=str(SHOTS / "01-login.png"), full_page=True)
            page.fill("input[name=username]", "op-a")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")

            page.wait_for_selector("text=Fleet overview")
            assert page.url == base + "/ui/"
            # 20 active meters in tenant A; A-04 LOW and A-05 DISCONNECTED need attention
            assert "20 active" in page.inner_text("#states")
            assert page.locator("#balance-chart rect").count() == 5
            page.screenshot(path=str(SHOTS / "02-fleet.png"), full_page=True)

            page.click("#attention >> text=A-04")
            page.wait_for_selector("h1:has-text('Meter A-04')")
            assert page.inner_text("#balance") == "₹50.00"
            assert page.locator("#load-chart rect").count() == 8
            assert page.locator("#balance-history-chart rect").count() == 3
            page.screenshot(path=str(SHOTS / "03-meter.png"), full_page=True)

            page.click("#command-link")
            page.wait_for_selector("#command-form")
            assert page.input_value("textarea[name=meter_ids]") == "A-04"
            page.check("input[value=topup]")
            page.fill("input[name=amount]", "200")
            page.click("#command-form button[type=submit]")
            result = page.inner_text("#command-result")
            assert "queued" in result and "₹200.00" in result and "A-04" in result
            page.screenshot(path=str(SHOTS / "04-topup-queued.png"), full_page=True)

            page.goto(base + "/ui/meters/A-04")
            assert "QUEUED" in page.inner_text("#commands")
            page.screenshot(path=str(SHOTS / "04b-meter-command-queued.png"), full_page=True)
            page.goto(base + "/ui/commands")

            page.fill("textarea[name=meter_ids]", "A-06, A-07")
            page.check("input[value=disconnect]")
            page.click("#command-form button[type=submit]")
            held = page.inner_text("#command-result")
            assert "pending second approval" in held
            assert "PENDING_APPROVAL" in page.inner_text("#requests")
            page.screenshot(path=str(SHOTS / "05-mass-disconnect-held.png"), full_page=True)
        finally:
            browser.close()

    with Session(world.engine) as s:
        queued = [(c.meter_id, c.kind, c.args) for c in s.scalars(select(C.Command))]
    # the top-up of Rs 200 = 20000 paise is queued; the two disconnects are not
    assert queued == [("A-04", "topup", "[20000]")]
    for name in ("01-login", "02-fleet", "03-meter", "04-topup-queued",
                 "04b-meter-command-queued", "05-mass-disconnect-held"):
        assert (SHOTS / (name + ".png")).stat().st_size > 1000


def test_consumer_logs_in_on_a_phone_sees_balance_and_gets_a_upi_qr(served, tmp_path, monkeypatch):
    """The consumer page at a phone's viewport: number, code from the SMS outbox, balance,
    recharge -> UPI link and its QR image (screenshots 06-09)."""
    base, world = served
    outbox = tmp_path / "sms.jsonl"
    monkeypatch.setenv("URJA_NOTIFY_LOG", str(outbox))   # the consumer notifier: a log file
    for key in ("URJA_SMS_URL", "URJA_WHATSAPP_URL"):
        monkeypatch.delenv(key, raising=False)
    with Session(world.engine) as s:   # Ravi (Hindi) owns; give him a number
        s.get(M.Consumer, world.consumer["ravi"]).phone = "9800000002"
        s.commit()
    sync_playwright = sync_playwright_or_fail()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 390, "height": 844},
                                      device_scale_factor=2, is_mobile=True, has_touch=True,
                                      locale="hi-IN")
            page = ctx.new_page()
            page.set_default_timeout(15000)
            page.goto(base + "/my/")
            assert page.url == base + "/my/login"
            page.screenshot(path=str(SHOTS / "06-consumer-login.png"), full_page=True)
            page.fill("#phone", "98000 00002")
            page.click("#login-form button")
            page.wait_for_selector("#code-form")
            code = re.search(r"\b(\d{6})\b", json.loads(outbox.read_text("utf-8")
                                                        .splitlines()[-1])["text"]).group(1)
            page.fill("#code", code)
            page.screenshot(path=str(SHOTS / "07-consumer-code.png"), full_page=True)
            page.click("#code-form button")
            page.wait_for_selector("#meter-A-01")
            # Ravi's record says Hindi: A-01's balance 12345 p = ₹123.45, and only his meters
            assert "मीटर A-01: शेष राशि ₹123.45 (OK)" in page.inner_text("#meter-A-01")
            assert page.locator("section[data-meter]").count() == 2
            # one column that fits the phone: no horizontal scrolling
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(SHOTS / "08-consumer-balance.png"), full_page=True)
            page.fill("#amount-A-01", "200")
            page.click("#meter-A-01 button")
            page.wait_for_selector("#upi-qr")
            link = page.get_attribute("#upi-link", "href")
            assert link.startswith("upi://pay?") and "am=200.00" in link
            assert page.inner_text("#upi-text") == link
            # the QR image loaded (the browser decoded the PNG the channel serves)
            assert page.evaluate("document.getElementById('upi-qr').naturalWidth") > 100
            page.screenshot(path=str(SHOTS / "09-consumer-upi-qr.png"), full_page=True)
        finally:
            browser.close()
    for name in ("06-consumer-login", "07-consumer-code", "08-consumer-balance",
                 "09-consumer-upi-qr"):
        assert (SHOTS / (name + ".png")).stat().st_size > 1000
