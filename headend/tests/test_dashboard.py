"""The operator dashboard (headend/dashboard.py) over HTTP: login, fleet, meter page,
commands through the two-person rule, alerts, tenant switcher.

World: api_world (tenant A has 20 active meters, B has 2) plus, from ``dash_world``:
balances A-01 OK 12345 p (seeded), A-04 LOW 5000 p, A-05 DISCONNECTED -200 p,
B-01 OK (seeded); payments; an uplink heard from A-01 60 s ago and A-02 3000 s ago.
With disconnect_approval_pct = 5: 5 % of 20 = 1 meter may be disconnected per
window; 2 meters need a second approver (2 * 100 = 200 > 5 * 20 = 100).
"""
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from headend import alerts as AL
from headend import auth as A
from headend import commands as C
from headend import dashboard as D
from headend import ledger as L
from headend import models as M
from headend.tests.api_world import NOW, make_world

PASSWORD = "correct horse 42"


def seed_dashboard(engine):
    with Session(engine) as s:
        for name in ("op-a", "op-a2", "admin", "tech-a", "ravi"):
            s.scalars(select(A.User).where(A.User.username == name)).one().password_hash = \
                A.hash_password(PASSWORD)
        for mid, state, paise in (("A-04", "LOW", 5000), ("A-05", "DISCONNECTED", -200)):
            s.add(M.MeterBalance(meter_id=mid, seq=3, t=NOW - 300, balance_paise=paise,
                                 credit_paise=max(paise, 0), emergency_paise=0, debt_paise=0,
                                 state=state, relay_closed=state != "DISCONNECTED",
                                 limiter="NORMAL", tariff_version=1, topups_total_paise=0,
                                 charges_total_paise=0))
        s.add(M.UplinkSeen(meter_id="A-01", seq=9, kind="status", t=NOW - 61, received_at=NOW - 60))
        s.add(M.UplinkSeen(meter_id="A-02", seq=4, kind="heartbeat", t=NOW - 3001,
                           received_at=NOW - 3000))
        tenant_a = s.get(M.Meter, "A-01").tenant_id
        tenant_b = s.get(M.Meter, "B-01").tenant_id
        # NOW = 2026-11-27 00:00 UTC = 27 Nov 05:30 IST.  IST day of each payment:
        #   NOW - 60            -> 27 Nov 05:29 IST
        #   NOW - 5.5 h = 18:30 UTC 26 Nov -> 27 Nov 00:00 IST (first second of the day)
        #   NOW - 6 h   = 18:00 UTC 26 Nov -> 26 Nov 23:30 IST
        for ref, mid, tenant, paise, at in (("T1", "A-01", tenant_a, 20000, NOW - 60),
                                            ("T2", "A-03", tenant_a, 5000, NOW - 19800),
                                            ("T3", "A-01", tenant_a, 15000, NOW - 21600),
                                            ("T4", "B-01", tenant_b, 99900, NOW - 60)):
            s.add(L.Payment(gateway="upi", txn_ref=ref, tenant_id=tenant, meter_id=mid,
                            amount_paise=paise, payer_vpa="x@upi", received_at=at,
                            body_sha256="0" * 64))
        s.commit()


@pytest.fixture
def world(engine):
    w = make_world(engine, real_queue=True, disconnect_approval_pct=5, disconnect_window_s=3600)
    seed_dashboard(engine)
    yield w
    w.client.close()


def browser(world, username):
    """A fresh client (own cookie jar) logged in as ``username``."""
    c = TestClient(world.client.app)
    r = c.post("/ui/login", data={"username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def csrf(html):
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def section(html, sid):
    m = re.search(r'<section id="%s">(.*?)</section>' % sid, html, re.S)
    assert m, "no section %s" % sid
    return m.group(1)


def bar_values(html, svg_id):
    svg = re.search(r'<svg id="%s".*?</svg>' % svg_id, html, re.S).group(0)
    return [int(v) for v in re.findall(r'data-value="(-?\d+)"', svg)]


# --- login ----------------------------------------------------------------------

def test_fleet_page_without_session_redirects_to_login(world):
    r = world.client.get("/ui/", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=/ui/"


def test_wrong_password_shows_error_and_sets_no_cookie(world):
    r = world.client.post("/ui/login", data={"username": "op-a", "password": "nope"},
                          follow_redirects=False)
    assert r.status_code == 401
    assert "wrong username or password" in r.text
    assert D.COOKIE not in r.cookies


def test_login_sets_httponly_strict_session_cookie(world):
    r = world.client.post("/ui/login", data={"username": "op-a", "password": PASSWORD},
                          follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_session_cookie_is_a_working_api_bearer_token(world):
    r = world.client.post("/ui/login", data={"username": "op-a", "password": PASSWORD},
                          follow_redirects=False)
    token = r.cookies[D.COOKIE]
    api = world.client.get("/meters/A-01", headers={"Authorization": "Bearer " + token})
    assert api.status_code == 200


def test_login_does_not_redirect_off_site(world):
    r = world.client.post("/ui/login", data={"username": "op-a", "password": PASSWORD,
                                             "next": "//evil.example/ui/"},
                          follow_redirects=False)
    assert r.headers["location"] == "/ui/"


def test_consumer_is_refused_the_dashboard(world):
    c = browser(world, "ravi")
    r = c.get("/ui/")
    assert r.status_code == 403
    assert "for utility staff" in r.text


def test_logout_revokes_the_token(world):
    c = browser(world, "op-a")
    token = c.cookies[D.COOKIE]
    csrf_value = csrf(c.get("/ui/").text)
    c.post("/ui/logout", data={"csrf": csrf_value}, follow_redirects=False)
    api = world.client.get("/meters", headers={"Authorization": "Bearer " + token})
    assert api.status_code == 401


# --- fleet --------------------------------------------------------------------------

def test_fleet_counts_meters_by_credit_state(world):
    html = browser(world, "op-a").get("/ui/").text
    tiles = dict((s, int(n)) for s, n in re.findall(
        r'data-state="([A-Z_ ]+)"><b>(\d+)</b>', html))
    # 20 active meters in A: A-01 OK, A-04 LOW, A-05 DISCONNECTED, 20 - 3 = 17 without data
    assert tiles == {"OK": 1, "LOW": 1, "EMERGENCY": 0, "DISCONNECT_PENDING": 0,
                     "DISCONNECTED": 1, "NO DATA": 17}


def test_attention_list_has_low_and_disconnected_meters_of_own_tenant_only(world):
    part = section(browser(world, "op-a").get("/ui/").text, "attention")
    assert re.findall(r">([AB]-\d\d)</a>", part) == ["A-04", "A-05"]
    assert "-₹2.00" in part and "₹50.00" in part


def test_comm_loss_lists_meters_silent_longer_than_the_setting(world):
    part = section(browser(world, "op-a").get("/ui/").text, "comm-loss")
    ids = re.findall(r">(A-\d\d)</a>", part)
    # comm_loss_after_s = 2700: A-01 heard 60 s ago is talking; A-02 (3000 s) and the
    # 18 never-heard meters are silent: 20 - 1 = 19
    assert "A-01" not in ids and len(ids) == 19
    # A-02 last heard NOW - 3000 = 26 Nov 23:10 UTC = 27 Nov 04:40 IST
    assert "2026-11-27 04:40" in part


def test_revenue_sums_payments_per_ist_day(world):
    part = section(browser(world, "op-a").get("/ui/").text, "revenue")
    rows = dict((day, (int(n), amount)) for day, n, amount in re.findall(
        r"<tr><td>(\d\d-\d\d)</td><td class=\"num\">(\d+)</td><td class=\"num\">([^<]+)</td>",
        part))
    # 27 Nov: 20000 + 5000 = 25000 p = Rs 250.00 (2); 26 Nov: 15000 p (1); B's 99900 p not here
    assert rows["27-11"] == (2, "₹250.00")
    assert rows["26-11"] == (1, "₹150.00")
    assert rows["21-11"] == (0, "₹0.00")
    assert bar_values(part, "revenue-chart") == [0, 0, 0, 0, 0, 15000, 25000]


def test_balance_distribution_puts_each_meter_in_its_band(world):
    html = browser(world, "op-a").get("/ui/").text
    # bands <0 | 0-10000 | 10000-50000 | 50000-100000 | >=100000 paise:
    # A-05 -200 -> <0; A-04 5000 -> 0-100 Rs; A-01 12345 -> 100-500 Rs
    assert bar_values(html, "balance-chart") == [1, 1, 1, 0, 0]


def test_read_success_counts_meters_read_today(world):
    part = section(browser(world, "op-a").get("/ui/").text, "read-success")
    # readings of A-01 start at NOW - 3600 .. NOW - 900 = 26 Nov 23:30 .. 27 Nov 00:45 UTC
    # = 27 Nov 05:00 .. 06:15 IST: one meter of 20 read on 27 Nov -> 1 * 100 // 20 = 5 %
    assert "<tr><td>27-11</td><td class=\"num\">1</td><td class=\"num\">5</td></tr>" in part
    assert bar_values(part, "read-chart") == [0, 0, 0, 0, 0, 0, 5]


# --- one meter -------------------------------------------------------------------------

def test_meter_page_draws_load_profile_from_readings(world):
    html = browser(world, "op-a").get("/ui/meters/A-01").text
    part = section(html, "load-profile")
    assert bar_values(part, "load-chart") == [100, 101, 102, 103]
    # bar heights scale to the largest (103 -> 160 px): 100 * 160 // 103 = 155, 101 -> 156,
    # 102 -> 158
    assert re.findall(r'height="(\d+)" data-value', part) == ["155", "156", "158", "160"]


def test_other_tenants_meter_page_is_not_found(world):
    r = browser(world, "op-a").get("/ui/meters/B-01")
    assert r.status_code == 404


def test_topup_form_queues_a_command_shown_on_the_meter_page(world):
    c = browser(world, "op-a")
    token = csrf(c.get("/ui/commands").text)
    r = c.post("/ui/commands", data={"csrf": token, "meter_ids": "A-03", "action": "topup",
                                     "amount": "199.50"})
    assert r.status_code == 201
    assert 'id="command-result"' in r.text and "queued" in r.text
    with Session(world.engine) as s:
        cmds = list(s.scalars(select(C.Command).where(C.Command.meter_id == "A-03")))
    assert [(x.kind, x.args, x.state) for x in cmds] == [("topup", "[19950]", "QUEUED")]
    page = section(c.get("/ui/meters/A-03").text, "commands")
    assert 'data-command="%s"' % cmds[0].id in page and "<b>QUEUED</b>" in page


def test_mass_disconnect_is_held_pending_second_approval_and_queues_nothing(world):
    c = browser(world, "op-a")
    token = csrf(c.get("/ui/commands").text)
    r = c.post("/ui/commands", data={"csrf": token, "meter_ids": "A-06, A-07",
                                     "action": "disconnect"})
    assert r.status_code == 202
    assert "pending second approval" in r.text
    with Session(world.engine) as s:
        assert list(s.scalars(select(C.Command))) == []


def test_requester_cannot_approve_but_second_operator_can(world):
    c1 = browser(world, "op-a")
    r = c1.post("/ui/commands", data={"csrf": csrf(c1.get("/ui/commands").text),
                                      "meter_ids": "A-06 A-07", "action": "disconnect"})
    req_id = int(re.search(r"Request #(\d+)", r.text).group(1))
    assert "/approve" not in c1.get("/ui/commands").text
    c2 = browser(world, "op-a2")
    page = c2.get("/ui/commands").text
    assert "/ui/requests/%d/approve" % req_id in page
    r = c2.post("/ui/requests/%d/approve" % req_id, data={"csrf": csrf(page)})
    assert r.status_code == 200  # followed the redirect back to /ui/commands
    with Session(world.engine) as s:
        queued = sorted((x.meter_id, x.args) for x in s.scalars(select(C.Command)))
    assert queued == [("A-06", '["disconnect"]'), ("A-07", '["disconnect"]')]


def test_form_without_csrf_is_refused_and_queues_nothing(world):
    c = browser(world, "op-a")
    r = c.post("/ui/commands", data={"meter_ids": "A-03", "action": "topup", "amount": "10"})
    assert r.status_code == 403
    with Session(world.engine) as s:
        assert list(s.scalars(select(C.Command))) == []


def test_bad_amount_is_a_form_error(world):
    c = browser(world, "op-a")
    r = c.post("/ui/commands", data={"csrf": csrf(c.get("/ui/commands").text),
                                     "meter_ids": "A-03", "action": "topup", "amount": "1.234"})
    assert r.status_code == 422 and "up to 2 decimals" in r.text


def test_technician_may_not_send_commands(world):
    c = browser(world, "tech-a")
    page = c.get("/ui/commands").text
    assert 'id="command-form"' not in page
    r = c.post("/ui/commands", data={"csrf": csrf(c.get("/ui/").text), "meter_ids": "A-03",
                                     "action": "topup", "amount": "10"})
    assert r.status_code == 403


def test_command_on_other_tenants_meter_is_not_found(world):
    c = browser(world, "op-a")
    r = c.post("/ui/commands", data={"csrf": csrf(c.get("/ui/commands").text),
                                     "meter_ids": "B-01", "action": "topup", "amount": "10"})
    assert r.status_code == 404


# --- alerts, tenant switcher ---------------------------------------------------------------

def test_acknowledged_alert_leaves_the_open_list(world):
    with Session(world.engine) as s:
        alert_id = AL.raise_alert(s, "A-04", AL.LOW_CREDIT, NOW - 100, "balance low").alert.id
        s.commit()
    c = browser(world, "op-a")
    page = c.get("/ui/").text
    assert 'data-alert="%d"' % alert_id in section(page, "alerts")
    r = c.post("/ui/alerts/%d/ack" % alert_id, data={"csrf": csrf(page)})
    assert 'data-alert="%d"' % alert_id not in section(r.text, "alerts")
    with Session(world.engine) as s:
        assert s.get(AL.Alert, alert_id).acknowledged_by == "op-a"


def test_platform_admin_switches_tenant_and_sees_only_it(world):
    c = browser(world, "admin")
    page = c.get("/ui/").text
    assert 'id="tenant-switcher"' in page
    r = c.post("/ui/tenant", data={"csrf": csrf(page), "tenant": str(world.tenant["B"])})
    assert "Bhopal MC" in r.text
    # tenant B: 2 active meters, only B-01 has a balance (OK)
    assert "(2 active)" in r.text
    assert re.findall(r">([AB]-\d\d)</a>", section(r.text, "attention")) == []


def test_tenant_operator_has_no_switcher(world):
    assert 'id="tenant-switcher"' not in browser(world, "op-a").get("/ui/").text


# --- pure helpers --------------------------------------------------------------------------

def test_rupees_to_paise_reads_whole_and_decimal_rupees():
    # 200 Rs = 20000 p; 199.5 Rs = 19950 p; 0.05 Rs = 5 p
    assert [D.rupees_to_paise(x) for x in ("200", "199.5", "0.05")] == [20000, 19950, 5]


def test_rupees_to_paise_refuses_zero_negative_and_three_decimals():
    for bad in ("0", "-5", "1.234", "abc", "", "1e3"):
        with pytest.raises(ValueError):
            D.rupees_to_paise(bad)


def test_bar_chart_scales_to_the_tallest_bar():
    # width 300 / 3 bars = 100 px slots; pad 4 -> bars 96 px wide at x = 2, 102, 202;
    # heights 0, 50 * 100 // 100 = 50, 100
    bars = D.bar_chart([0, 50, 100], width=300, height=100, pad=4)
    assert [(b["x"], b["w"], b["h"], b["y"]) for b in bars] == [
        (2, 96, 0, 100), (102, 96, 50, 50), (202, 96, 100, 0)]


# --- reconciliation and days of credit left on the meter page ------------------------------

FLAT = {"id": "F", "version": 1, "service": "electricity", "unit_size": 1000,
        "slabs": [[None, 1000]], "fixed_paise_per_day": 0}   # 1000 paise per kWh = 1 paisa per Wh


def add_status(s, meter_id, seq, t, balance, topups, charges, state="OK"):
    s.add(M.StatusRecord(meter_id=meter_id, seq=seq, t=t, balance_paise=balance,
                         credit_paise=max(balance, 0), emergency_paise=0, debt_paise=0,
                         state=state, relay_closed=True, limiter="NORMAL", tariff_version=1,
                         topups_total_paise=topups, charges_total_paise=charges))


def test_meter_page_shows_reconciliation_that_agrees_to_the_paisa(world):
    from headend import reconcile as R
    # A-01's records: 100 + 101 + 102 + 103 = 406 Wh at 1 paisa/Wh = 406 paise, all closed by
    # NOW; opening Rs 100 = 10000 p, no top-ups -> shadow 10000 - 406 = 9594 = the meter's
    with Session(world.engine) as s:
        R.open_account(s, "A-01", 10000, NOW - 7200, [FLAT])
        add_status(s, "A-01", 20, NOW, 9594, 0, 406)
        s.commit()
    part = section(browser(world, "op-a").get("/ui/meters/A-01").text, "reconciliation")
    assert 'data-explanation="AGREES"' in part and "explained" in part
    assert '<td class="num" id="reconcile-diff">0</td>' in part
    assert "₹95.94" in part
    with Session(world.engine) as s:   # the page stored the comparison it showed
        assert [(r.status_seq, r.difference_paise) for r in s.scalars(
            select(R.ReconciliationResult))] == [(20, 0)]


def test_meter_page_shows_an_unexplained_difference_and_raises_the_alert(world):
    from headend import reconcile as R
    # the meter says it charged 1000 p for the same 406 Wh: balance 10000 - 1000 = 9000,
    # shadow 9594 -> difference 9000 - 9594 = -594 paise, not explained by open intervals
    with Session(world.engine) as s:
        R.open_account(s, "A-01", 10000, NOW - 7200, [FLAT])
        add_status(s, "A-01", 20, NOW, 9000, 0, 1000)
        s.commit()
    part = section(browser(world, "op-a").get("/ui/meters/A-01").text, "reconciliation")
    assert 'data-explanation="MISMATCH"' in part and "unexplained" in part
    assert '<td class="num" id="reconcile-diff">-594</td>' in part
    with Session(world.engine) as s:
        assert [a.kind for a in s.scalars(select(AL.Alert).where(
            AL.Alert.meter_id == "A-01"))] == [AL.RECONCILIATION]


def test_meter_page_without_shadow_account_says_nothing_to_reconcile(world):
    part = section(browser(world, "op-a").get("/ui/meters/A-01").text, "reconciliation")
    assert 'data-explanation="none"' in part and "No shadow account" in part


def test_meter_page_shows_days_of_credit_left_from_the_forecast(world):
    # 4800 Wh on each of the 28 IST days before today, charged 1 paisa/Wh (status
    # totals 0 -> 28 * 4800); balance 12000 p at 4800 p a day from 05:30 IST: the rest of
    # today (18.5 h = 3700 p) + 1 day (4800 p) + 3500 p = 17.5 h -> 18.5 + 24 + 17.5 = 60 h
    from firmware.core import localtime as LT
    today = LT.local_day(NOW, LT.IST_OFFSET_S)
    with Session(world.engine) as s:
        for d in range(today - 28, today):
            s.add(M.Reading(meter_id="A-03", start_t=LT.local_midnight_utc(d, LT.IST_OFFSET_S),
                            energy=4800, span_s=86400, flags=0, received_at=NOW))
        add_status(s, "A-03", 1, LT.local_midnight_utc(today - 28, LT.IST_OFFSET_S), 0, 0, 0)
        add_status(s, "A-03", 2, LT.local_midnight_utc(today, LT.IST_OFFSET_S), 0, 0,
                   28 * 4800)
        s.add(M.MeterBalance(meter_id="A-03", seq=2, t=NOW - 60, balance_paise=12000,
                             credit_paise=12000, emergency_paise=0, debt_paise=0, state="OK",
                             relay_closed=True, limiter="NORMAL", tariff_version=1,
                             topups_total_paise=0, charges_total_paise=28 * 4800))
        s.commit()
    c = browser(world, "op-a")
    part = section(c.get("/ui/meters/A-03").text, "forecast")
    assert 'data-days-left="2" data-hours-left="60"' in part
    assert "About 2 day(s) (60 h) of credit left at the recent use of 4800 Wh a day." in part
    # A-01 has readings only from today: no complete day to learn from
    none = section(c.get("/ui/meters/A-01").text, "forecast")
    assert 'data-days-left="none"' in none and "no readings in the last 28 days" in none


# --- top-up latency ----------------------------------------------------------------------

def add_topup(s, ref, meter_id, tenant_id, received_at, latency_s):
    """A paid top-up whose command the meter applied ``latency_s`` later (None: still queued)."""
    p = L.Payment(gateway="upi", txn_ref=ref, tenant_id=tenant_id, meter_id=meter_id,
                  amount_paise=1000, payer_vpa="x@upi", received_at=received_at,
                  body_sha256="0" * 64)
    s.add(p)
    s.flush()
    cmd = C.enqueue(s, meter_id, "topup", [1000], received_at, command_id=L.topup_command_id(p.id))
    s.add(L.TopUp(payment_id=p.id, meter_id=meter_id, amount_paise=1000, command_id=cmd.id,
                  created_at=received_at))
    if latency_s is not None:
        cmd.state, cmd.finished_at = C.APPLIED, received_at + latency_s


def test_topup_latency_plot_shows_p50_and_p99_per_ist_day(world):
    # 27 Nov IST: 10 top-ups applied after 1..10 s -> nearest rank p50 = 5th = 5 s,
    # p99 = ceil(9.9) = 10th = 10 s.  26 Nov IST (NOW - 6 h): one after 30 s -> 30, 30.
    # One paid at NOW - 30 not applied yet.  B's top-up (99 s) is another tenant's.
    with Session(world.engine) as s:
        ta, tb = s.get(M.Meter, "A-01").tenant_id, s.get(M.Meter, "B-01").tenant_id
        for k in range(10):
            add_topup(s, "L%d" % k, "A-%02d" % (k + 6), ta, NOW - 600 + k, k + 1)
        add_topup(s, "L26", "A-06", ta, NOW - 21600, 30)
        add_topup(s, "LQ", "A-07", ta, NOW - 30, None)
        add_topup(s, "LB", "B-01", tb, NOW - 600, 99)
        s.commit()
    part = section(browser(world, "op-a").get("/ui/").text, "topup-latency")
    rows = re.findall(r'<tr data-day="(\d\d-\d\d)"><td>[^<]*</td><td class="num">(\d+)</td>'
                      r'<td class="num">([^<]+)</td><td class="num">([^<]+)</td>', part)
    assert rows[-2:] == [("26-11", "1", "30", "30"), ("27-11", "10", "5", "10")]
    assert rows[0] == ("21-11", "0", "–", "–")
    svg = re.search(r'<svg id="latency-chart".*?</svg>', part, re.S).group(0)
    p50 = re.findall(r'data-series="p50" data-value="([^"]+)"', svg)
    p99 = re.findall(r'data-series="p99" data-value="([^"]+)"', svg)
    assert p50 == ["–"] * 5 + ["30", "5"] and p99 == ["–"] * 5 + ["30", "10"]
    # bar heights on one scale (30 s = 160 px): 10 s -> 53 px, 5 s -> 26 px
    assert 'height="53" data-series="p99" data-value="10"' in svg
    assert 'height="26" data-series="p50" data-value="5"' in svg
    assert "11 top-ups applied in the last 7 days; 1 paid but not applied yet." in part


def test_percentile_is_nearest_rank():
    assert D.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50) == 5
    assert D.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99) == 10
    assert D.percentile([7], 99) == 7


# --- pagination -------------------------------------------------------------------------

@pytest.fixture
def small_pages(engine):
    """The dashboard world with 5 rows per page."""
    w = make_world(engine, real_queue=True, disconnect_approval_pct=5, disconnect_window_s=3600,
                   ui_page_size=5)
    seed_dashboard(engine)
    yield w
    w.client.close()


def pager_of(html, param):
    m = re.search(r'<nav class="pager"[^>]*data-param="%s" data-page="(\d+)" data-pages="(\d+)">'
                  r'(.*?)</nav>' % param, html, re.S)
    assert m, "no pager for %s" % param
    return int(m.group(1)), int(m.group(2)), m.group(3)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQL paths run on both above
def test_meter_list_pages_through_all_meters_of_the_tenant(small_pages):
    c = browser(small_pages, "op-a")
    # tenant A: 20 meters, 5 a page -> 4 pages; page 2 = A-06 .. A-10
    html = c.get("/ui/meters?page=2").text
    assert re.findall(r'<tr data-meter="([^"]+)">', html) == ["A-06", "A-07", "A-08", "A-09",
                                                              "A-10"]
    number, pages, nav = pager_of(html, "page")
    assert (number, pages) == (2, 4) and "6–10 of 20" in nav
    assert 'href="/ui/meters?page=3"' in nav and 'rel="prev" href="/ui/meters?page=1"' in nav
    seen = []
    for n in range(1, 5):
        seen += re.findall(r'<tr data-meter="([^"]+)">', c.get("/ui/meters?page=%d" % n).text)
    assert seen == ["A-%02d" % i for i in range(1, 21)]
    # past the end: the last page; garbage: the first
    assert re.findall(r'<tr data-meter="([^"]+)">', c.get("/ui/meters?page=99").text)[0] == "A-16"
    assert re.findall(r'<tr data-meter="([^"]+)">', c.get("/ui/meters?page=x").text)[0] == "A-01"


def test_comm_loss_and_alert_lists_page_independently(small_pages):
    with Session(small_pages.engine) as s:
        # 7 alerts -> 2 pages of 5 (7 kinds, so no storm summary folds them together)
        for i, kind in enumerate((AL.TAMPER, AL.LEAK, AL.COMM_LOSS, AL.DATA_GAP,
                                  AL.COMMAND_EXPIRED, AL.LOW_CREDIT, AL.DISCONNECTED)):
            AL.raise_alert(s, "A-%02d" % (i + 6), kind, NOW - 100 + i, "detail")
        s.commit()
    c = browser(small_pages, "op-a")
    html = c.get("/ui/?comm_page=4&alert_page=2").text
    comm = section(html, "comm-loss")
    # 19 silent meters (A-02..A-20 minus none heard: A-01 talks) -> 4 pages; page 4 = 16..19
    assert re.findall(r">(A-\d\d)</a>", comm) == ["A-17", "A-18", "A-19", "A-20"]
    assert "): 19</h2>" in comm
    assert pager_of(comm, "comm_page")[:2] == (4, 4)
    alerts = section(html, "alerts")
    assert len(re.findall(r'data-alert="\d+"', alerts)) == 2      # the 2 oldest of 7
    assert "Open alerts: 7" in alerts
    _, _, nav = pager_of(alerts, "alert_page")
    # a link keeps the other list's page
    assert 'href="/ui/?comm_page=4&amp;alert_page=1"' in nav


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQL paths run on both above
def test_command_requests_and_a_meters_commands_are_paged(small_pages):
    c = browser(small_pages, "op-a")
    token = csrf(c.get("/ui/commands").text)
    for k in range(7):
        r = c.post("/ui/commands", data={"csrf": token, "meter_ids": "A-03", "action": "topup",
                                         "amount": str(10 + k)})
        assert r.status_code == 201
    page2 = section(c.get("/ui/commands?page=2").text, "requests")
    assert len(re.findall(r'data-request="\d+"', page2)) == 2
    assert pager_of(page2, "page")[:2] == (2, 2)
    meter = section(c.get("/ui/meters/A-03?cmd_page=2").text, "commands")
    assert len(re.findall(r'data-command="', meter)) == 2 and "6–7 of 7" in meter


# --- Hindi ------------------------------------------------------------------------------

def test_catalogues_have_the_same_keys_and_hindi_is_hindi():
    en, hi = D.catalogue("en"), D.catalogue("hi")
    assert sorted(en) == sorted(hi)
    # every Hindi text that is not a symbol or a code carries Devanagari
    latin_ok = {"col.pct", "col.p50", "col.p99", "consumer.language"}
    assert [k for k, v in hi.items() if k not in latin_ok
            and not any("\u0900" <= ch <= "\u097f" for ch in v)] == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # SQL paths run on both above
def test_language_switch_renders_the_fleet_and_meter_pages_in_hindi(world):
    c = browser(world, "op-a")
    r = c.get("/ui/lang/hi?next=/ui/meters/A-04", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/meters/A-04"
    fleet = c.get("/ui/").text
    assert '<html lang="hi">' in fleet
    for text in ("मीटर बेड़े का सारांश", "क्रेडिट स्थिति के अनुसार मीटर (20 सक्रिय)",
                 "कम बैलेंस और कटे हुए मीटर", "खुली चेतावनियाँ: 0", "लॉग आउट", "कटा हुआ"):
        assert text in fleet, text
    assert "Fleet overview" not in fleet
    meter = c.get("/ui/meters/A-04").text
    assert "मीटर A-04" in meter and "बचे हुए क्रेडिट के दिन" in meter and "घटनाएँ" in meter
    # data stays as it is: amounts and ids
    assert "₹50.00" in meter
    # and back
    c.get("/ui/lang/en?next=/ui/")
    assert "Fleet overview" in c.get("/ui/").text


@pytest.fixture
def no_data():
    """The app on an empty in-memory database: for pages that read nothing."""
    from headend.api import create_app
    from headend.config import Settings
    with TestClient(create_app(Settings(database_url="sqlite://"))) as client:
        yield client


def test_login_page_follows_the_browsers_language(no_data):
    html = no_data.get("/ui/login", headers={"Accept-Language": "hi-IN,hi;q=0.9"}).text
    assert "ऊर्जा ऑपरेटर लॉग इन" in html and "पासवर्ड" in html
    assert "Urja operator login" in no_data.get("/ui/login").text


def test_language_switch_does_not_redirect_off_site(no_data):
    for bad in ("//evil.example/", "https://evil.example/ui/", "/ui\\evil"):
        r = no_data.get("/ui/lang/hi", params={"next": bad}, follow_redirects=False)
        assert r.headers["location"] == "/ui/", bad
