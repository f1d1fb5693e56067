"""Issue 8 fault scenarios on the unix board: broker restart, tamper, peer faults, bad downlinks.

Same world as ``test_scenarios_unix.py``: real ``micropython`` meters at 300x
wall time (a 900 s interval closes every 3 s), 1 pulse = 1 Wh, the flat
1 paise/Wh tariff (``dut.FLAT_TARIFF``), a private Mosquitto per test, the
uplinks decoded off the wire by ``firmware.protocol.messages`` (``Uplinks``)
and, where the scenario needs it, the real head-end (ingest worker and
command dispatcher of ``simulator.net_headend.HeadEnd`` on SQLite, payments
through the signed webhook).  Every test checks the wire and the console.
"""
import random
import re
import time

import pytest

from firmware.core import auth
from firmware.protocol import cbor, messages
from hil_tests import dut as dut_mod
from hil_tests.conftest import DlmsPeer, Sdm120, Uplinks, wait_for

START_T = dut_mod.START_T  # Fri 2026-11-27 10:00 IST, outside friendly hours
KEY = bytes.fromhex(dut_mod.KEY_HEX)
METER = "UJ-HIL-0001"
OPENING = 2000
FAR = START_T + 30 * 86400  # expires_at of commands that must not expire


def settings(addr, **extra):
    s = dut_mod.factory_settings(METER, addr, pulse_constant=1000, energy_source="pulses",
                                 heartbeat_s=3600, opening_credit_paise=OPENING)
    s.update(extra)
    return s


def boot(dut_factory, addr, **extra):
    return dut_factory(settings=settings(addr, **extra), time_factor=300, start_t=START_T)


@pytest.fixture
def up(broker, world):
    return world.add(Uplinks(*broker, meter_id=METER))


@pytest.fixture
def headend(broker, tmp_path):
    """The real head-end (ingest + dispatcher) on SQLite, with METER provisioned.

    Plain (not shared) ingest subscription: Mosquitto 2.0.11 drops a persistent
    session's shared subscription over a restart (docs/ARCHITECTURE.md).
    """
    from headend import migrations
    from headend.db import make_engine
    from simulator.net_headend import HeadEnd

    url = "sqlite:///%s" % (tmp_path / "urja.db")
    migrations.upgrade(url)
    engine = make_engine(url)
    t0 = time.monotonic()
    he = HeadEnd(engine, *broker, clock=lambda: START_T + int((time.monotonic() - t0) * 300),
                 ingest_shared=False)
    he.provision([(METER, "electricity", KEY, OPENING, dut_mod.FLAT_TARIFF)], START_T)
    he.start()
    he.engine = engine
    try:
        yield he
    finally:
        he.stop()
        engine.dispose()


def unique_by_seq(up):
    """The uplinks once each (first arrival), and the duplicates QoS 1 re-delivered."""
    first, dups = {}, []
    for b in up.received:
        if b["s"] in first:
            dups.append(b)
        else:
            first[b["s"]] = b
    return first, dups


def wire_energy(up):
    first, _ = unique_by_seq(up)
    return sum(r[1] for b in first.values() if b["kind"] == "reading" for r in b["r"])


def online(dut, up):
    """Connected and subscribed: the meter subscribes before it publishes its first uplink."""
    dut.expect(r"urja: mqtt connected", timeout=15)
    up.wait(lambda u: u.received, 15, "the first uplink")


def drained(dut):
    info = dut.command("info")
    return info["outbox"] == "0" and info["mqtt"] == "connected"


# --- 1. broker restart during reporting ----------------------------------------------

def test_broker_restart_while_reporting_delivers_every_reading_once_and_balances_with_the_headend(
        broker, up, headend, dut_factory):
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from headend import models as M
    from headend import reconcile as R

    dut = boot(dut_factory, tuple(broker))
    online(dut, up)
    injected = 0
    for _ in range(4):  # ~1.3 intervals of load before the fault
        injected += 30
        assert dut.control("pulses 30").startswith("ok")
        time.sleep(1.0)
    up.wait(lambda u: u.of("reading"), 15, "a reading before the restart")

    broker.stop()  # SIGTERM: Mosquitto saves its persistent sessions and exits
    assert not broker.running
    dut.expect(r"urja: mqtt link lost", timeout=20)
    cid = headend.pay(METER, 5000, "UPI-RESTART-1", headend.clock())  # paid while it is down
    for _ in range(7):  # > 2 intervals of readings queue in the flash outbox
        injected += 20
        dut.control("pulses 20")
        time.sleep(1.0)
    assert int(dut.command("info")["outbox"]) >= 2, "readings queued while the broker was down"
    mark = len(dut.console.text)
    broker.start()  # same port, same persistence file

    # queued commands may arrive during the CONNECT handshake, before the "connected" line
    for line in (r"urja: mqtt connected", r"urja: command %s -> OK" % cid):
        dut.console.expect(re.compile(line, re.M), 40, consume=False, since=mark)
    for _ in range(3):
        injected += 10
        dut.control("pulses 10")
        time.sleep(1.0)
    time.sleep(3.5)  # the last interval with energy closes
    wait_for(lambda: drained(dut), 40, "the outbox to drain")
    wait_for(lambda: wire_energy(up) == injected, 20, "every Wh on the wire")

    # the wire: every sequence number once, first arrivals in outbox order; a QoS 1
    # re-delivery after the restart is the identical message (the head-end dedupes it)
    first, dups = unique_by_seq(up)
    arrival = [b["s"] for b in up.received if b is first[b["s"]]]
    assert arrival == sorted(arrival), "uplinks arrive in sequence order"
    seqs = sorted(first)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "no sequence number missing"
    for d in dups:
        assert d == first[d["s"]], "a re-delivered uplink is byte-for-byte the same message"
    assert len(dups) <= 2, dups
    starts = [r[0] for s in seqs if first[s]["kind"] == "reading" for r in first[s]["r"]]
    assert len(starts) == len(set(starts)), "no interval reported twice"
    assert wire_energy(up) == injected
    # the dispatcher re-sends an unacked command (its copies queued while the broker
    # was down): one OK, any further copy REPLAYED, which the head-end books as delivered
    ack = [(b["r"], b["rn"]) for b in first.values() if b["kind"] == "ack" and b["id"] == cid]
    assert ack[0] == (0, "OK") and set(ack[1:]) <= {(2, "REPLAYED")}, ack
    assert not up.errors, up.errors

    # the console: the link went, came back, and the meter kept its balance
    assert dut.console.text.count("urja: mqtt connected") >= 2
    expected = OPENING + 5000 - injected  # 1 paise per Wh
    assert dut.command("balance")["balance_paise"] == str(expected)
    dut.kill("end of the scenario")  # it would keep reporting empty intervals

    # the head-end stored each uplink on the wire once, every Wh, and its ledger
    # agrees to the paisa
    def stored_vs_wire():
        first, _ = unique_by_seq(up)
        with Session(headend.engine) as s:
            n = s.scalar(select(func.count()).select_from(M.UplinkSeen)
                         .where(M.UplinkSeen.meter_id == METER))
            wh = s.scalar(select(func.sum(M.Reading.energy)).where(M.Reading.meter_id == METER))
            bal = s.get(M.MeterBalance, METER)
            return (n, wh, bal.seq if bal else None) == (
                len(first), injected, max(q for q, b in first.items() if b["kind"] == "status"))
    wait_for(stored_vs_wire, 20, "the head-end to store every uplink once")
    with Session(headend.engine) as s:
        rows = s.execute(select(M.Reading.start_t).where(M.Reading.meter_id == METER)).all()
        assert len(rows) == len({r[0] for r in rows})
        bal = s.get(M.MeterBalance, METER)
        assert bal.balance_paise == expected
        result = R.reconcile_meter(s, METER, headend.clock())
        assert (result.explanation, result.difference_paise) == (R.AGREES, 0), result.detail


# --- 3. tamper -> alert ------------------------------------------------------------------

def test_cover_opened_on_the_board_reaches_the_headend_as_a_tamper_alert(
        broker, up, headend, dut_factory):
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from headend import alerts
    from headend import models as M

    dut = boot(dut_factory, tuple(broker))
    online(dut, up)
    assert dut.control("input cover 1") == "ok input cover 1"  # someone opens the terminal cover
    opened = up.wait(lambda u: [e for b in u.of("event") for e in b["e"] if e[2] == 3], 15,
                     "COVER_OPEN on the wire")[0]
    assert opened[3] == 0 and opened[1] >= START_T
    dut.control("input cover 0")
    up.wait(lambda u: [e for b in u.of("event") for e in b["e"] if e[2] == 4], 15,
            "COVER_CLOSE on the wire")
    assert "COVER_OPEN" in dut.command("events")["events"]

    def stored_event():
        with Session(headend.engine) as s:
            return s.execute(select(M.EventRecord.event_seq).where(
                M.EventRecord.meter_id == METER, M.EventRecord.code == 3)).all()
    wait_for(stored_event, 15, "the head-end to store the COVER_OPEN event")
    with Session(headend.engine) as s:  # the head-end's alert detectors, one round
        outcomes = alerts.run_checks(s, headend.clock())
        tamper = [(o.alert.meter_id, o.notify) for o in outcomes if o.alert.kind == alerts.TAMPER]
        s.commit()
    assert tamper == [(METER, True)]
    with Session(headend.engine) as s:
        rows = s.execute(select(alerts.Alert).where(alerts.Alert.kind == alerts.TAMPER)).scalars().all()
        assert [(a.meter_id, a.severity) for a in rows] == [(METER, "critical")]
        assert "COVER_OPEN" in rows[0].detail
        # a second round does not alert again for the same event
        assert [o for o in alerts.run_checks(s, headend.clock() + 60)
                if o.alert.kind == alerts.TAMPER] == []
    assert dut.alive


# --- 4. Modbus and DLMS peers that time out or answer garbage ------------------------------

def selftest_failure(dut, check):
    """The ``name:detail`` the CLI self-test reports for ``check``, or None when it passes."""
    try:
        dut.command("selftest")
    except dut_mod.CommandError as e:
        for part in e.text.split():
            if part.startswith(check + ":"):
                return part
    return None


READ_FAILED, READ_RESTORED = 24, 25  # docs/protocol.md event codes; value 1 Modbus, 2 DLMS


def link_events(up, link):
    """(code, value) of the READ_FAILED / READ_RESTORED events on the wire for ``link``."""
    return [(e[2], e[3]) for b in up.of("event") for e in b["e"]
            if e[2] in (READ_FAILED, READ_RESTORED) and e[3] == link]


def assert_read_fault_reported_once(dut, up, name, link):
    """One console line and one READ_FAILED event for the whole outage, however many polls
    failed; then one READ_RESTORED (wire) and one restored line (console)."""
    up.wait(lambda u: link_events(u, link) == [(READ_FAILED, link), (READ_RESTORED, link)], 15,
            "READ_FAILED then READ_RESTORED for link %d on the wire" % link)
    text = dut.console.text
    assert text.count("urja: %s read failed: " % name) == 1, text[-3000:]
    assert text.count("urja: %s read restored" % name) == 1, text[-3000:]
    assert text.index("urja: %s read failed: " % name) < text.index("urja: %s read restored" % name)
    line = re.search(r"^urja: %s read failed: (.+)$" % name, text, re.M).group(1)
    assert line.strip(), "the console line says why"


@pytest.mark.parametrize("fault", ["silent", "garbage", "bad_crc"])
def test_sdm120_fault_is_reported_the_meter_keeps_running_and_catches_up_the_energy(
        broker, up, world, dut_factory, fault):
    sdm = world.add(Sdm120(voltage=230.0, current=5.0, power=1150.0, import_kwh=100.0).start())
    dut = dut_factory(settings=settings(tuple(broker), energy_source="sdm", modbus_period_s=30,
                                        heartbeat_s=900),
                      time_factor=300, start_t=START_T, rs485=sdm.path)
    online(dut, up)
    up.wait(lambda u: [b for b in u.of("reading") if b["r"][-1][2] == 230000], 15,
            "a reading with the SDM120 voltage")
    assert selftest_failure(dut, "modbus") is None

    sdm.mode = fault
    sdm.set("import_kwh", 100.5)  # 500 Wh flow while the meter cannot read them
    detail = wait_for(lambda: selftest_failure(dut, "modbus"), 10, "the self-test to fail")
    assert detail.startswith("modbus:") and len(detail) > len("modbus:"), detail
    failing_from = len(up.received)
    time.sleep(4.0)  # more than one interval with the peer broken
    # on the wire: the intervals go on, without the SDM's voltage (stale values are not used)
    blind = [r for b in up.received[failing_from:] if b["kind"] == "reading" for r in b["r"]]
    assert blind and all(r[2] is None for r in blind[1:]), blind
    assert sum(r[1] for r in blind) == 0
    assert dut.alive and "crashed" not in dut.console.text

    sdm.mode = "ok"  # the peer recovers: the register delta catches up, nothing lost
    wait_for(lambda: selftest_failure(dut, "modbus") is None, 10, "the self-test to pass")
    up.wait(lambda u: wire_energy(u) == 500, 15, "the 500 Wh after the recovery")
    assert dut.command("read")["sdm_import_wh"] == "100500"
    assert dut.command("balance")["balance_paise"] == str(OPENING - 500)
    # reported on the console and the wire once per outage, not once per failed poll
    assert_read_fault_reported_once(dut, up, "modbus", 1)
    # the heartbeat counts the failed reads (at least the 4 s of polls every 0.1 s wall)
    failed = up.wait(lambda u: [b["rfm"] for b in u.of("heartbeat") if b.get("rfm")], 10,
                     "a heartbeat with the failed Modbus reads")
    assert failed[-1] >= 2 and "rfd" not in up.of("heartbeat")[-1], failed
    assert not up.errors, up.errors


@pytest.mark.parametrize("fault", ["silent", "garbage"])
def test_dlms_meter_fault_is_reported_and_the_meter_recovers(broker, up, world, dut_factory, fault):
    dlms = world.add(DlmsPeer(energy_wh=1234567, voltage_dv=2301).start())
    dut = dut_factory(settings=settings(tuple(broker), energy_source="dlms", dlms_period_s=60),
                      time_factor=300, start_t=START_T, dlms=dlms.path)
    online(dut, up)
    wait_for(lambda: dut.command("read").get("dlms_energy_import_wh") == "1234567", 15,
             "a DLMS reading")
    assert selftest_failure(dut, "dlms") is None

    dlms.mode = fault
    detail = wait_for(lambda: selftest_failure(dut, "dlms"), 15, "the self-test to fail")
    assert detail.startswith("dlms:"), detail
    dlms.set_energy(1234567 + 300)  # 300 Wh while the meter cannot read them
    time.sleep(3.0)
    assert dut.alive and "crashed" not in dut.console.text

    dlms.mode = "ok"
    wait_for(lambda: selftest_failure(dut, "dlms") is None, 15, "the self-test to pass")
    up.wait(lambda u: wire_energy(u) == 300, 15, "the 300 Wh after the recovery")
    assert dut.command("read")["dlms_energy_import_wh"] == str(1234567 + 300)
    assert dut.command("balance")["balance_paise"] == str(OPENING - 300)
    assert_read_fault_reported_once(dut, up, "dlms", 2)
    assert not up.errors, up.errors


# --- 5. malformed and replayed downlinks ---------------------------------------------------

def send(up, payload):
    up.publish(messages.command_topic(METER), payload)


def acks(up, cid=None):
    return [b for b in up.of("ack") if cid is None or b["id"] == cid]


def balance(dut):
    return dut.command("balance")["balance_paise"]


def test_garbage_downlinks_are_acked_malformed_and_change_nothing(broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    online(dut, up)
    before = (balance(dut), dut.command("events")["last_seq"])
    valid = messages.encode_command(auth.make_topup(KEY, METER, 1, FAR, "T-OK", 700))
    garbage = [
        b"\xff\x00garbage",                         # not CBOR at all
        valid[:-5],                                 # truncated
        valid + b"\x00",                            # trailing byte
        cbor.encode([1, 2, 3]),                     # CBOR, but not a map
        cbor.encode({"kind": "topup", "id": "T-X"}),  # a map missing the signed fields
        bytes.fromhex("5bffffffffffffffff"),        # a byte string claiming 2**64 - 1 bytes
        b"\x81" * 40 + b"\x00",                     # nested 40 deep
        bytes(random.Random(8).randrange(256) for _ in range(300)),
    ]
    for n, payload in enumerate(garbage, 1):
        send(up, payload)
        got = up.wait(lambda u: acks(u)[n - 1:], 10, "the ack to garbage #%d" % n)[0]
        assert (got["id"], got["r"], got["rn"]) == ("?", auth.MALFORMED, "MALFORMED"), (n, got)
        # the console says so too, with the size and the decoder's reason
        said = dut.expect(r"^urja: command \? -> MALFORMED undecodable downlink \((\d+) bytes\): (.+)$",
                          timeout=5)
        assert int(said.group(1)) == len(payload) and got["d"] in said.group(2), (n, said.group(0))
    assert (balance(dut), dut.command("events")["last_seq"]) == before, "state unchanged"
    assert dut.alive and "crashed" not in dut.console.text
    send(up, valid)  # and a good command still works afterwards
    dut.expect(r"urja: command T-OK -> OK", timeout=10)
    assert balance(dut) == str(int(before[0]) + 700)
    assert not up.errors, up.errors


def test_forged_misaddressed_expired_replayed_and_old_commands_get_their_exact_reason(
        broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    online(dut, up)
    ok = auth.make_topup(KEY, METER, 5, FAR, "T-5", 1000)
    send(up, messages.encode_command(ok))
    dut.expect(r"urja: command T-5 -> OK", timeout=10)
    applied = balance(dut)
    assert applied == str(OPENING + 1000)
    events_before = dut.command("events")["last_seq"]

    cases = [  # (command, result code, result name) - docs/protocol.md "Result codes"
        (auth.make_topup(b"\x01" * 32, METER, 6, FAR, "T-FORGED", 99999), auth.BAD_MAC, "BAD_MAC"),
        (dict(auth.make_topup(KEY, METER, 6, FAR, "T-ALTERED", 100), fields=["T-ALTERED", 100000]),
         auth.BAD_MAC, "BAD_MAC"),
        (auth.make_topup(KEY, "UJ-HIL-9999", 6, FAR, "T-OTHER", 500), auth.WRONG_METER,
         "WRONG_METER"),
        (auth.make_topup(KEY, METER, 6, START_T - 60, "T-LATE", 500), auth.EXPIRED, "EXPIRED"),
        (ok, auth.REPLAYED, "REPLAYED"),  # the very same command again
        (auth.make_topup(KEY, METER, 5, FAR, "T-5B", 500), auth.REPLAYED, "REPLAYED"),  # same counter
        (auth.make_topup(KEY, METER, 4, FAR, "T-4", 500), auth.OUT_OF_ORDER, "OUT_OF_ORDER"),
        (auth.make_command(KEY, "selfdestruct", METER, 6, FAR, ["T-KIND"]), 8, "UNKNOWN_KIND"),
    ]
    for cmd, code, name in cases:
        send(up, messages.encode_command(cmd))
        got = up.wait(lambda u: acks(u, cmd["id"]) if cmd is not ok else acks(u, "T-5")[1:], 10,
                      "the ack of %s" % cmd["id"])[-1]
        assert (got["r"], got["rn"], got["c"]) == (code, name, cmd["counter"]), (cmd["id"], got)
        dut.expect(r"urja: command %s -> %s" % (cmd["id"], name), timeout=5)
        assert balance(dut) == applied, "a rejected command changes nothing (%s)" % cmd["id"]
    # TOPUP_REJECTED events are the audit trail; credit, counter and relay did not move
    assert dut.command("balance")["relay"] == "closed"
    assert int(dut.command("events")["last_seq"]) >= int(events_before)
    nxt = auth.make_topup(KEY, METER, 6, FAR, "T-6", 300)  # the next counter still works
    send(up, messages.encode_command(nxt))
    dut.expect(r"urja: command T-6 -> OK", timeout=10)
    assert balance(dut) == str(OPENING + 1000 + 300)
    assert dut.alive and "crashed" not in dut.console.text
    assert not up.errors, up.errors


# --- 6. time sync downlink -----------------------------------------------------------------

CLOCK_SET = 21  # docs/protocol.md event code; value = the step, s


def test_time_downlink_sets_the_clock_once_logs_the_step_and_refuses_a_jump_beyond_the_limit(
        broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker), clock_max_step_s=86400)
    online(dut, up)

    def clock_sets(u):
        return [e for b in u.of("event") for e in b["e"] if e[2] == CLOCK_SET]

    # 2 days ahead without "force": BAD_VALUE, clock untouched
    far = auth.make_command(KEY, "time", METER, 1, FAR, ["TS-FAR", START_T + 2 * 86400])
    send(up, messages.encode_command(far))
    got = up.wait(lambda u: acks(u, "TS-FAR"), 10, "the ack of TS-FAR")[0]
    assert (got["r"], got["rn"]) == (9, "BAD_VALUE") and "exceeds 86400" in got["d"], got
    assert int(dut.command("info")["t"]) < START_T + 86400

    target = START_T + 20000  # ~5.5 h ahead of a meter that has run a few minutes
    cmd = auth.make_command(KEY, "time", METER, 2, FAR, ["TS-1", target])
    mark = len(up.received)
    send(up, messages.encode_command(cmd))
    said = dut.expect(r"^urja: clock set to (\d+) \(step (-?\d+) s\)$", timeout=10)
    assert int(said.group(1)) == target
    dut.expect(r"urja: command TS-1 -> OK", timeout=5)
    got = up.wait(lambda u: acks(u, "TS-1"), 10, "the ack of TS-1")[0]
    assert (got["r"], got["rn"], got["c"]) == (0, "OK", 2), got
    ev = up.wait(clock_sets, 10, "CLOCK_SET on the wire")
    assert len(ev) == 1, ev
    step = ev[0][3]
    # the event's step is target - meter time when the command arrived (t of the event)
    assert step == target - ev[0][1] and 0 < step < 20000, ev
    assert abs(int(said.group(2)) - step) <= 30, (said.group(0), ev)  # 0.1 s wall at 300x
    # meter time now runs from the new clock: the CLI and every later uplink say so
    assert target <= int(dut.command("info")["t"]) < target + 300 * 10
    # (the ack and every uplink after it: the clock is set before the ack is queued)
    later = up.wait(lambda u: [b for b in u.received[mark:] if b["s"] >= got["s"]
                               and b["kind"] in ("heartbeat", "reading", "status")], 15,
                    "an uplink after the sync")
    assert all(b["t"] >= target for b in later), later
    assert "CLOCK_SET" in dut.command("events")["events"]

    # the same command again (a re-delivery) is REPLAYED and does not move the clock again
    send(up, messages.encode_command(cmd))
    got = up.wait(lambda u: acks(u, "TS-1")[1:], 10, "the ack of the replayed TS-1")[0]
    assert (got["r"], got["rn"]) == (2, "REPLAYED"), got
    time.sleep(0.5)
    assert len(clock_sets(up)) == 1 and dut.console.text.count("urja: clock set to") == 1

    # "force" allows a step beyond the limit (a meter whose RTC was reset, an operator's decision)
    forced = auth.make_command(KEY, "time", METER, 3, FAR, ["TS-F", target + 3 * 86400, "force"])
    send(up, messages.encode_command(forced))
    got = up.wait(lambda u: acks(u, "TS-F"), 10, "the ack of TS-F")[0]
    assert (got["r"], got["rn"]) == (0, "OK"), got
    assert int(dut.command("info")["t"]) >= target + 3 * 86400
    assert dut.alive and "crashed" not in dut.console.text
    assert not up.errors, up.errors


# --- 7. configuration downlink -------------------------------------------------------------

def test_config_downlink_saves_a_remote_setting_for_the_next_boot_and_refuses_identity_and_keys(
        broker, up, dut_factory):
    dut = boot(dut_factory, tuple(broker))
    online(dut, up)
    assert dut.command("config")["heartbeat_s"] == "3600"
    counter = iter(range(1, 100))

    def config(cid, setting, value):
        cmd = auth.make_command(KEY, "config", METER, next(counter), FAR, [cid, setting, value])
        send(up, messages.encode_command(cmd))
        return up.wait(lambda u: acks(u, cid), 10, "the ack of %s" % cid)[0]

    got = config("CF-1", "heartbeat_s", "900")
    assert (got["r"], got["rn"], got["d"]) == (0, "OK", "config heartbeat_s saved: applies next boot"), got
    dut.expect(r"urja: config heartbeat_s saved by downlink, applies at next boot", timeout=5)
    assert dut.command("config")["heartbeat_s"] == "900"
    # checked like the CLI's set; identity, keys and commissioning-time settings stay local
    for cid, setting, value, code, name, says in (
            ("CF-2", "heartbeat_s", "5", 9, "BAD_VALUE", "heartbeat_s: must be a whole number in 60..86400"),
            ("CF-3", "no_such", "1", 9, "BAD_VALUE", "no_such: unknown setting"),
            ("CF-4", "key_hex", "ab" * 32, 7, "REFUSED", "key_hex is set over the commissioning CLI"),
            ("CF-5", "meter_id", "UJ-OTHER", 7, "REFUSED", "meter_id is set over"),
            ("CF-6", "pulses_per_kwh", "1600", 7, "REFUSED", "pulse_constant is set over")):
        got = config(cid, setting, value)
        assert (got["r"], got["rn"]) == (code, name) and says in got["d"], (cid, got)
    cfg = dut.command("config")
    assert (cfg["heartbeat_s"], cfg["pulse_constant"], cfg["meter_id"], cfg["key_hex"]) == (
        "900", "1000", METER, "set")

    # a rejected config command did not use up its counter: the next one with it works
    cmd = auth.make_command(KEY, "config", METER, 2, FAR, ["CF-7", "clock_max_step_s", "600"])
    send(up, messages.encode_command(cmd))
    got = up.wait(lambda u: acks(u, "CF-7"), 10, "the ack of CF-7")[0]
    assert got["r"] == 0, got

    # at the next boot the meter runs with it: a heartbeat every 900 s (3 s wall at 300x)
    mark = len(up.received)
    dut.restart(start_t=int(dut.command("info")["t"]) + 60)  # the clock kept running
    dut.expect(r"urja: mqtt connected", timeout=15)

    def beats(u):
        got = [b for b in u.received[mark:] if b["kind"] == "heartbeat"]
        return got if len(got) >= 3 else None
    got = up.wait(beats, 20, "three heartbeats after the reboot")
    gaps = [b2["t"] - b1["t"] for b1, b2 in zip(got, got[1:])]
    assert all(900 <= g <= 910 for g in gaps), gaps  # not the 3600 s it booted with
    assert dut.command("config")["clock_max_step_s"] == "600"
    assert not up.errors, up.errors
