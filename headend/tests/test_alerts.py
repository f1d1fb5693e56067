"""Alerts (detectors, suppression, storms, acknowledgement) and notifications (templates,
log file, webhook / SMS / WhatsApp adapters against a real HTTP server on 127.0.0.1)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware.core import events as ev
from firmware.protocol import messages
from headend import alerts, notify
from headend import models as M
from headend.store import UplinkStore
from headend.tests.conftest import register_meters

IV = 900
T0 = 1795737600  # 2026-11-27 00:00 UTC = 05:30 IST (`date -u -d 2026-11-27 +%s`)


def body(kind, meter_id, seq, t, fields):
    return messages.decode_uplink(messages.topic(meter_id, kind),
                                  messages.encode_uplink(kind, meter_id, seq, t, fields))


def write(engine, bodies, now):
    UplinkStore(engine).write(bodies, now=now)


def heartbeat(meter_id, seq, t):
    return body("heartbeat", meter_id, seq, t, {"up": 60})


def status(meter_id, seq, t, bal, state="OK", relay=True):
    return body("status", meter_id, seq, t, {"bal": bal, "cr": max(bal, 0), "em": 0,
                                              "dt": max(-bal, 0), "st": state, "rl": relay,
                                              "ld": "NORMAL", "tv": 1, "tt": 0, "tc": 0})


def with_consumer(engine, meter_id, phone, language):
    with Session(engine) as s:
        meter = s.get(M.Meter, meter_id)
        c = M.Consumer(tenant_id=meter.tenant_id, account_no="A-" + meter_id, name="C",
                       phone=phone, language=language)
        s.add(c)
        s.flush()
        meter.consumer_id = c.id
        s.commit()


def prepared(engine, ids, service="electricity"):
    register_meters(engine, ids, service=service)
    alerts.create_tables(engine)


# --- suppression, storms, acknowledgement ------------------------------------------

def test_second_alert_of_a_kind_inside_the_window_only_counts(engine):
    prepared(engine, ["UJ-A"])
    pol = alerts.AlertPolicy(window_s=3600)
    with Session(engine) as s:
        first = alerts.raise_alert(s, "UJ-A", alerts.TAMPER, T0, "cover open", pol)
        again = alerts.raise_alert(s, "UJ-A", alerts.TAMPER, T0 + 3599, "magnet", pol)
        later = alerts.raise_alert(s, "UJ-A", alerts.TAMPER, T0 + 3600, "cover open", pol)
        s.commit()
        assert (first.notify, again.notify, later.notify) == (True, False, True)
        assert again.alert.id == first.alert.id and first.alert.count == 2
        assert later.alert.id != first.alert.id  # the window (3600 s) has passed


def test_feeder_outage_becomes_one_storm_alert_above_the_tenant_share(engine):
    ids = ["UJ-%02d" % i for i in range(10)]
    prepared(engine, ids)
    write(engine, [heartbeat(m, 1, T0) for m in ids], now=T0)
    later = T0 + 2 * 3600
    write(engine, [heartbeat(m, 2, later) for m in ids[6:]], now=later)  # 4 still talk
    pol = alerts.AlertPolicy(storm_pct=30, storm_min_meters=3, comm_loss_intervals=4)
    with Session(engine) as s:
        outs = alerts.check_comm_loss(s, later + 60, pol)
        s.commit()
        # silent: UJ-00..05 (7260 s > 4 x 900).  UJ-00..02: 3/10 = 30 %, not above 30 % ->
        # 3 meter alerts; UJ-03: 4/10 = 40 % > 30 % -> the storm; UJ-04, 05 fold into it
        notified = [(o.alert.meter_id, o.alert.storm) for o in outs if o.notify]
        assert notified == [("UJ-00", False), ("UJ-01", False), ("UJ-02", False), (None, True)]
        storm = [o.alert for o in outs if o.alert.storm][0]
        assert storm.count == 6
        assert storm.detail.startswith("4 of 10 meters")
        assert [a.id for a in alerts.open_alerts(s)] == [storm.id]
        members = s.execute(select(alerts.Alert.meter_id).where(
            alerts.Alert.storm_id == storm.id).order_by(alerts.Alert.meter_id)).scalars().all()
        assert members == ids[:6]


def test_acknowledging_a_storm_acknowledges_its_members_once(engine):
    ids = ["UJ-%02d" % i for i in range(4)]
    prepared(engine, ids)
    pol = alerts.AlertPolicy(storm_pct=50, storm_min_meters=2)
    with Session(engine) as s:
        outs = [alerts.raise_alert(s, m, alerts.COMM_LOSS, T0, "", pol) for m in ids[:3]]
        storm = outs[2].alert  # 3/4 = 75 % > 50 %
        assert storm.storm
        alerts.acknowledge(s, storm.id, "op-1", T0 + 10)
        alerts.acknowledge(s, storm.id, "op-2", T0 + 20)
        s.commit()
        rows = s.execute(select(alerts.Alert.acknowledged_by, alerts.Alert.acknowledged_at)).all()
        assert sorted(tuple(r) for r in rows) == [("op-1", T0 + 10)] * 4
        assert alerts.open_alerts(s) == []


# --- detectors --------------------------------------------------------------------------

def test_tamper_events_alert_once_and_a_rerun_does_not_realert(engine):
    prepared(engine, ["UJ-T"])
    write(engine, [body("event", "UJ-T", 1, T0, {"e": [
        [1, T0 - 60, ev.POWER_FAIL, 0], [2, T0 - 50, ev.COVER_OPEN, 0],
        [3, T0 - 40, ev.MAGNET, 0]]})], now=T0)
    with Session(engine) as s:
        outs = alerts.check_tamper(s, T0)
        assert [(o.alert.kind, o.notify) for o in outs] == [(alerts.TAMPER, True),
                                                            (alerts.TAMPER, False)]
        assert outs[0].alert.count == 2
        s.commit()
    with Session(engine) as s:
        assert alerts.check_tamper(s, T0 + 60) == []
    write(engine, [body("event", "UJ-T", 2, T0, {"e": [[4, T0, ev.NEUTRAL_MISSING, 0]]})], T0)
    with Session(engine) as s:
        assert [o.alert.count for o in alerts.check_tamper(s, T0 + 120)] == [3]


def test_low_credit_and_disconnected_come_from_the_latest_status(engine):
    prepared(engine, ["UJ-L", "UJ-D", "UJ-OK"])
    write(engine, [status("UJ-L", 1, T0, 4150, "LOW"),
                   status("UJ-D", 1, T0, -2000, "DISCONNECTED", relay=False),
                   status("UJ-OK", 1, T0, 90000)], now=T0)
    with Session(engine) as s:
        got = sorted((o.alert.meter_id, o.alert.kind) for o in alerts.check_credit(s, T0))
        assert got == [("UJ-D", alerts.DISCONNECTED), ("UJ-L", alerts.LOW_CREDIT)]


def test_comm_loss_counts_a_never_heard_meter_from_its_installation(engine):
    prepared(engine, ["UJ-NEW"])
    with Session(engine) as s:
        s.get(M.Meter, "UJ-NEW").installed_at = T0
        s.commit()
        pol = alerts.AlertPolicy(comm_loss_intervals=4)  # 4 x 900 = 3600 s
        assert alerts.check_comm_loss(s, T0 + 3600, pol) == []
        assert [o.alert.kind for o in alerts.check_comm_loss(s, T0 + 3601, pol)] == [
            alerts.COMM_LOSS]


def night_readings(meter_id, seq, nights, litres, dry=None):
    """Readings for 01:00-05:00 IST on ``nights`` nights before T0's local day + 3."""
    recs = []
    for n in range(nights):
        # local midnight IST of 2026-11-(28+n) = T0 + (n+1)*86400 - 19800
        start = T0 + (n + 1) * 86400 - 19800 + 3600
        for k in range(16):  # 4 h / 900 s
            t = start + k * IV
            recs.append([t, 0 if t == dry else litres, None, None, 0, IV])
    return body("reading", meter_id, seq, T0 + 4 * 86400,
                {"iv": IV, "u": "L", "cum": 0, "r": recs})


def test_leak_needs_flow_in_every_night_interval_for_n_nights(engine):
    prepared(engine, ["W-LEAK", "W-DRY"], service="water")
    one_dry = T0 + 3 * 86400 - 19800 + 3600 + 5 * IV  # a single dry interval on night 3
    write(engine, [night_readings("W-LEAK", 1, 3, 2), night_readings("W-DRY", 1, 3, 2, one_dry)],
          now=T0 + 4 * 86400)
    # now = 2026-11-30 12:00 IST: the last 3 complete nights are 28, 29, 30 Nov
    now = T0 + 3 * 86400 - 19800 + 12 * 3600
    pol = alerts.AlertPolicy(leak_nights=3, leak_litres_per_interval=1)
    with Session(engine) as s:
        outs = alerts.check_leak(s, now, pol)
        assert [(o.alert.meter_id, o.alert.kind) for o in outs] == [("W-LEAK", alerts.LEAK)]
        assert "3 nights (min 2 L)" in outs[0].alert.detail


# --- templates and notifiers ----------------------------------------------------------------

def test_templates_in_hindi_and_english_with_rupees_from_paise():
    hi = notify.render("low_credit", "hi", meter_id="UJ-1", balance=notify.format_rupees(4150))
    en = notify.render("low_credit", "en", meter_id="UJ-1", balance=notify.format_rupees(4150))
    assert hi == ("ऊर्जा: मीटर UJ-1 में शेष राशि ₹41.50 है। कनेक्शन कटने से बचने के लिए "
                  "कृपया जल्द रिचार्ज करें।")
    assert en.startswith("Urja: meter UJ-1 balance is Rs 41.50.")
    assert notify.render("low_credit", "ta", meter_id="X", balance="1.00").startswith("Urja:")
    assert notify.format_rupees(5) == "0.05" and notify.format_rupees(-100) == "-1.00"


def test_log_notifier_appends_one_json_line_per_message(tmp_path):
    path = tmp_path / "notify.jsonl"
    n = notify.LogNotifier(str(path))
    n.send(notify.Message("+919800000001", "hi", "नमस्ते", "alert-1", "low_credit", "UJ-1"))
    n.send(notify.Message(None, "en", "two", "alert-2", "tamper"))
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [x["ref"] for x in lines] == ["alert-1", "alert-2"]
    assert lines[0]["text"] == "नमस्ते"


class Gateway:
    """A real HTTP server on 127.0.0.1 answering with ``codes`` in turn, recording requests."""

    def __init__(self, codes=(200,)):
        self.codes = list(codes)
        self.requests = []
        gw = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                gw.requests.append((self.path, dict(self.headers), json.loads(raw)))
                code = gw.codes.pop(0) if len(gw.codes) > 1 else gw.codes[0]
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_5xx_with_doubling_backoff_then_succeeds():
    gw = Gateway([503, 502, 200])
    waits = []
    try:
        n = notify.WebhookNotifier(gw.url + "/hook", retries=3, backoff_s=0.5, sleep=waits.append)
        d = n.send(notify.Message(None, "en", "x", "alert-7", "tamper", "UJ-1"))
        assert (d.ok, d.attempts, d.status) == (True, 3, 200)
        assert waits == [0.5, 1.0]
        assert [r[2]["ref"] for r in gw.requests] == ["alert-7"] * 3
    finally:
        gw.close()


def test_webhook_does_not_retry_a_client_error():
    gw = Gateway([400])
    try:
        d = notify.WebhookNotifier(gw.url, retries=3, sleep=lambda s: None).send(
            notify.Message(None, "en", "x", "alert-8", "tamper"))
        assert (d.ok, d.attempts, d.status) == (False, 1, 400)
        assert len(gw.requests) == 1
    finally:
        gw.close()


def test_unreachable_webhook_fails_after_all_retries():
    gw = Gateway()
    url = gw.url
    gw.close()  # nothing listens on that port any more
    d = notify.WebhookNotifier(url, retries=2, sleep=lambda s: None).send(
        notify.Message(None, "en", "x", "alert-9", "tamper"))
    assert (d.ok, d.attempts) == (False, 3)
    assert "ConnectError" in d.error


def test_sms_and_whatsapp_adapters_post_the_documented_shapes():
    gw = Gateway([200])
    try:
        msg = notify.Message("+919800000001", "hi", "ऊर्जा: रिचार्ज करें", "alert-3",
                             "low_credit", "UJ-1")
        assert notify.SmsGatewayNotifier(gw.url + "/sms", "sk-1", sender="URJAPP").send(msg).ok
        assert notify.WhatsAppNotifier(gw.url + "/v20.0/123/messages", "wa-tok").send(msg).ok
        (p1, h1, b1), (p2, h2, b2) = gw.requests
        assert p1 == "/sms" and h1["Authorization"] == "Bearer sk-1"
        assert b1 == {"sender": "URJAPP", "to": "+919800000001", "text": "ऊर्जा: रिचार्ज करें",
                      "unicode": True, "ref": "alert-3"}
        assert p2 == "/v20.0/123/messages" and h2["Authorization"] == "Bearer wa-tok"
        assert b2 == {"messaging_product": "whatsapp", "to": "919800000001", "type": "text",
                      "text": {"body": "ऊर्जा: रिचार्ज करें"}}
    finally:
        gw.close()


def test_consumer_alert_goes_by_sms_in_hindi_and_storm_to_the_operator_webhook(engine):
    ids = ["UJ-%02d" % i for i in range(3)]
    prepared(engine, ids)
    with_consumer(engine, "UJ-00", "+919800000001", "hi")
    write(engine, [status("UJ-00", 1, T0, 4150, "LOW")], now=T0)
    sms, hook = Gateway([200]), Gateway([200])
    pol = alerts.AlertPolicy(storm_pct=50, storm_min_meters=2)
    try:
        with Session(engine) as s:
            outs = alerts.check_credit(s, T0, pol)
            outs += [alerts.raise_alert(s, m, alerts.COMM_LOSS, T0, "silent", pol) for m in ids[:2]]
            sent = notify.notify_outcomes(
                s, outs, consumer=notify.SmsGatewayNotifier(sms.url, "k"),
                operator=notify.WebhookNotifier(hook.url, sleep=lambda x: None))
            s.commit()
            # low credit -> SMS (Hindi); comm loss UJ-00 (1/3 = 33 %, not > 50 %) -> webhook;
            # UJ-01 makes 2/3 = 67 % > 50 % -> the storm -> webhook
            assert [m.kind for m, d in sent] == ["low_credit", "comm_loss", "comm_loss"]
            assert all(d.ok for _, d in sent)
            assert sms.requests[0][2]["text"].startswith("ऊर्जा: मीटर UJ-00 में शेष राशि ₹41.50")
            assert [r[2]["meter_id"] for r in hook.requests] == ["UJ-00", None]
            assert "tenant" in hook.requests[1][2]["text"]
            flagged = s.execute(select(alerts.Alert.notified)).scalars().all()
            assert flagged.count(True) == 3
    finally:
        sms.close()
        hook.close()


def test_low_credit_forecast_is_in_the_alert_catalogue_without_importing_the_forecast():
    # a fresh interpreter: nothing but headend.alerts loaded, so no module can have patched it
    import subprocess
    import sys
    code = ("import sys; from headend import alerts; "
            "print('headend.forecast' in sys.modules, alerts.LOW_CREDIT_FORECAST in alerts.KINDS, "
            "alerts.SEVERITY[alerts.LOW_CREDIT_FORECAST])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "info"]


def test_the_forecast_raises_the_catalogue_kind():
    from headend import forecast
    assert forecast.LOW_CREDIT_FORECAST is alerts.LOW_CREDIT_FORECAST == "low_credit_forecast"
