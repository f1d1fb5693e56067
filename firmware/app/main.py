"""The meter application: asyncio tasks around the functional core, on any board.

Tasks (each beats ``Liveness``; the watchdog is fed only while all beat):

- ``poll``: board housekeeping, the pulse counter -> ``Meter.add_pulses``,
  cover and power-fail inputs -> events / ``Meter.power_fail``, and the
  commissioning CLI on its UART (one coroutine: each task costs heap);
- ``metering``: ``Meter.step`` every ``step_s`` (meter time) with the latest
  voltage/current, a power sample for the load limiter, closed intervals and
  billing snapshots -> uplinks, credit changes -> relay + status;
- ``modbus``: an SDM120 on the board's RS485 (``sdm_reader.SdmReader``), live
  values, and the energy register when ``energy_source`` is ``sdm``;
- ``dlms`` (when the board has a DLMS link): the same from a DLMS meter;
- ``mqtt``: the link supervisor (``core.backoff``), then publish the outbox
  in order at QoS 1, releasing each message only after its PUBACK;
- ``downlink``: commands from the broker -> ``Meter.apply_command`` -> ack,
  and the heartbeat (health every ``heartbeat_s``) between them.

``poll`` also feeds the board watchdog while every task is alive (a task of its
own would cost heap), and the event loop's exception handler says which task
crashed (no wrapper coroutine per task).

Meter time is the board clock accelerated by ``time_factor`` (1 on a real
meter; tests use hundreds).  Run on the unix board::

    URJA_STATE_DIR=/tmp/m1 URJA_RS485_PTY=/dev/pts/7 URJA_CONFIG=factory.json \\
        micropython -m firmware.app.main

Environment (unix board): ``URJA_BOARD`` (board name or .json, default
unix), ``URJA_STATE_DIR``, ``URJA_CONTROL``, ``URJA_RS485_PTY``,
``URJA_DLMS_PTY``, ``URJA_CLI_PTY``, ``URJA_CONFIG`` (factory settings JSON,
applied when the store is empty), ``URJA_TIME_FACTOR``, ``URJA_START_T``
(set the board clock at boot), ``URJA_WATCHDOG_MS``, ``URJA_FAULT_HANG``
(``task:seconds``: that task stops beating after that many wall seconds,
to prove the watchdog; a hung ``poll`` stops feeding it too).
"""
import asyncio
import gc
import random
import sys
import time

from firmware.app.health import AcceleratedClock, Liveness
from firmware.app.mqtt_client import AckTimeout, MqttConnection
from firmware.app.uplink import Uplink, queue_backfill, records_end_cum, split
from firmware.core import auth, backoff, events, metering
from firmware.core.journal import Journal
from firmware.core import meter as meter_mod
from firmware.core.meter import Meter, backfill_range, clock_sync_time
from firmware.core.outbox import Outbox
from firmware.protocol import messages
from firmware.protocol.mqtt import MqttError, Session

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

# Loaded on demand, to keep them off the heap of meters that do not use them: the
# readers (and their Modbus or DLMS stack) for the link this meter has, the CLI at
# its first received byte, ``downlinks`` for the rare config/OTA command, and the
# commissioning settings (``config``) at boot, then again only for the CLI or a
# ``config`` downlink: the tasks run on a snapshot of the few settings they read.
TYPE_CHECKING = False
if TYPE_CHECKING:  # mypy only
    from firmware.app.cli import Cli
    from firmware.app.config import ConfigStore
    from firmware.app.dlms_reader import DlmsReader
    from firmware.app.sdm_reader import SdmReader
# The settings the running tasks read (``App.setting``); snapshot taken at boot.
_RUNTIME_SETTINGS = const(("broker_host", "broker_port", "step_s", "heartbeat_s", "energy_source",
                    "modbus_period_s", "dlms_period_s"))

FW_VERSION = "0.4.0"
METER_JOURNAL_BYTES = 8192
POLL_MS = 20  # the poll task's period; it serves the CLI UART too
CLI_IDLE_UNLOAD_MS = 300000  # wall ms without a CLI byte (and no half line): unload the CLI
OUTBOX_MAX_MESSAGES = 1024
_PUBLISH_TIMEOUT_S = const(10)
_OUTBOX_ACK_EVERY = const(8)  # release the outbox in batches: one cursor write per 8 PUBACKs
_DOWNLINK_QUEUE = const(8)
_RESTART_DRAIN_MS = const(10000)  # before an OTA restart: wait this long at most for the ack to go out


def _env(name):
    getenv = getattr(__import__("os"), "getenv", None)
    return getenv(name) if getenv is not None else None


async def _sleep_ms(ms):
    await asyncio.sleep(ms / 1000)


def _monotonic_ms(data=[0, None]):  # noqa: B006  # [total, last ticks]: kept here, not in a class (heap)
    """Milliseconds that never wrap (ticks_ms accumulated with ticks_diff on MicroPython)."""
    ticks = getattr(time, "ticks_ms", None)
    if ticks is None:
        return int(time.monotonic() * 1000)  # type: ignore[attr-defined]  # CPython
    t = ticks()
    if data[1] is not None:
        data[0] += time.ticks_diff(t, data[1])  # type: ignore[attr-defined]
    data[1] = t
    return data[0]


def _ticks_us():
    f = getattr(time, "ticks_us", None)
    if f is None:
        return int(time.monotonic() * 1000000)  # type: ignore[attr-defined]  # CPython
    return f()  # wraps after ~18 min on the unix port: one sample at most is off


def _mem_free():
    f = getattr(gc, "mem_free", None)
    return f() if f is not None else None


class RegisterFeed:
    """An external meter's cumulative import (Wh) -> impulses for ``Meter.add_pulses``.

    The first reading after boot is the baseline (nothing is counted); then
    each increase becomes impulses at the meter's pulse constant, carrying the
    remainder so no Wh is lost to rounding.  Decreases and implausible jumps
    are ignored by ``metering.CumulativeRegister``.
    """

    def __init__(self, imp_per_kwh, max_step_wh=100000):
        self.imp_per_kwh = imp_per_kwh
        self.register = None
        self.max_step_wh = max_step_wh
        self.carry = 0

    def update(self, reading_wh):
        """Impulses for this reading (0 on the baseline), and the register status."""
        if self.register is None:
            if not isinstance(reading_wh, int) or reading_wh < 0:
                return 0, metering.REG_INVALID
            self.register = metering.CumulativeRegister(reading_wh, 0, self.max_step_wh)
            return 0, metering.REG_OK
        delta = self.register.update(reading_wh)
        total = delta * self.imp_per_kwh + self.carry
        self.carry = total % 1000
        return total // 1000, self.register.status


def _drop(name):
    """Forget a module imported for one rare job (``sys.modules`` and its package's
    attribute), so the GC can take it back; the next use imports it again.

    MicroPython only: it is the meter's heap that needs it, and CPython processes
    (head-end, simulator, tests) share these modules and their classes widely.
    """
    if sys.implementation.name != "micropython":
        return
    sys.modules.pop(name, None)
    cut = name.rfind(".")
    parent = sys.modules.get(name[:cut])
    if parent is not None and hasattr(parent, name[cut + 1:]):
        delattr(parent, name[cut + 1:])


class App:
    """One meter's application on a board; ``run()`` starts the tasks.

    It is the CLI's ``firmware.app.cli.CliContext`` (``now``, ``commissioning``,
    ``info``, ``live``, ``selftest``, ``meter_changed``, ``meter``, ``config``)
    without inheriting from it, so the CLI module loads only when a byte arrives.

    >>> app = App(board, board_parts(board), time_factor=300)
    >>> asyncio.run(app.run())
    """

    def __init__(self, board, parts, time_factor=1, start_t=None, ms=None, version=FW_VERSION,
                 ota_slots=None):
        self.board = board
        self.version = version
        self.ota = ota_slots  # the board's A/B slots (``boards.unix.ota_dirs.OtaDirs``) or None
        self.ota_trial = False  # this boot is a new image on trial: confirm once MQTT is up
        self.restart_pending = False
        self.parts = parts
        self.ms = ms or _monotonic_ms
        if start_t is not None:
            board.clock.set(start_t)
        self.clock = AcceleratedClock(board.clock.now, self.ms, time_factor)  # its start_ms: boot
        self._config: ConfigStore = None  # type: ignore[assignment]  # see ``config``
        self._settings = {}  # _RUNTIME_SETTINGS while the store is not loaded
        self.liveness = Liveness()
        self.live_values = {}  # latest external readings, our units
        self.live_t = {}  # source -> meter time of its last good read
        self.meter: Meter = None  # type: ignore[assignment]  # set by start_meter
        self.outbox: Outbox = None  # type: ignore[assignment]  # set by start_meter
        self.uplink: Uplink = None  # type: ignore[assignment]  # set by start_meter
        self.journal: Journal = None  # type: ignore[assignment]  # set by start_meter
        self.mqtt_state = "off"
        self.published = 0
        self._published_upto = 0
        self._backfills = []  # [next seq, last seq] ranges of held uplinks to publish again
        self.republished = 0
        self._outbox_event = asyncio.Event()
        self._downlinks = []
        self._downlink_event = asyncio.Event()
        self._last_status = None
        self._floor_t = 0
        self.hang = {}  # task -> wall ms after boot when it stops beating (fault injection)
        self.cli: Cli = None  # type: ignore[assignment]  # loaded at the CLI's first byte
        self._cli_reader = None  # its LineReader while loaded
        self._cli_last_ms = 0
        self.sdm: SdmReader = None  # type: ignore[assignment]  # set by start_meter
        self.dlms: DlmsReader = None  # type: ignore[assignment]  # set by start_meter
        self.pulse_delta: metering.CounterDelta = None  # type: ignore[assignment]  # set by start_meter
        self.energy_feed: RegisterFeed = None  # type: ignore[assignment]  # set by start_meter
        self.power_w = None
        self._last_pulse_units = 0
        self._last_step_t = 0
        self.cycles = 0  # metering cycles (step + uplinks queued), and their cost
        self.cycle_us_total = 0
        self.cycle_us_max = 0

    # -- settings -------------------------------------------------------------------
    @property
    def config(self):
        """The commissioning settings (``firmware.app.config.ConfigStore``), read from their
        slots when first asked for: at boot, then by the CLI or a ``config`` downlink."""
        if self._config is None:
            from firmware.app.config import ConfigStore
            self._config = ConfigStore(self.parts.config_slots)
        return self._config

    def setting(self, name):
        """A setting the tasks read: from the store while it is loaded (a CLI ``set``
        shows at once, as before), else from the snapshot ``release_config`` took."""
        if self._config is None and name in self._settings:
            return self._settings[name]
        return self.config.get(name)

    def release_config(self):
        """Keep the settings the tasks read, and let the store and its module go (heap).

        Not once the CLI is loaded: it holds the module, and a second copy of it would
        have a second ``ConfigError`` class.
        """
        if self._config is None or self.cli is not None:
            return
        for name in _RUNTIME_SETTINGS:
            self._settings[name] = self._config.get(name)
        self._config = None
        _drop("firmware.app.config")

    # -- construction -------------------------------------------------------------
    def commission_from(self, settings):
        """Apply factory settings (a dict) when nothing is stored yet; True if applied."""
        if self.config.values:
            return False
        self.config.set_many(settings, self.clock.now())
        return True

    def start_meter(self):
        """Build the meter from the stored configuration (journal restores its state);
        True once it runs, False when not commissioned (the console says why).  Boot-only
        code: in ``firmware.app.startup``, loaded for it and let go again (heap)."""
        from firmware.app import startup
        try:
            return startup.start_meter(self)
        finally:
            _drop("firmware.app.startup")

    # -- CliContext -----------------------------------------------------------------
    def now(self):
        t = self.clock.now()
        return t if t >= self._floor_t else self._floor_t  # meter time never goes back

    def commissioning(self):
        c = self.board.commissioning
        return bool(c is not None and c.value())

    def uptime_s(self):
        return self.clock.elapsed_ms() // 1000

    def info(self):
        c = self.config
        return [("fw", self.version), ("board", self.board.name), ("t", self.now()),
                ("uptime_s", self.uptime_s()),
                ("broker", "%s:%d" % (c.get("broker_host"), c.get("broker_port"))),
                ("wifi", c.get("wifi_ssid")), ("pulse_constant", c.get("pulse_constant")),
                ("source", c.get("energy_source")), ("mqtt", self.mqtt_state),
                ("outbox", self.outbox.depth if self.outbox is not None else None)]

    def live(self):
        out = [("power_w", self.power_w)]
        for name in sorted(self.live_values):
            out.append((name, self.live_values[name]))
        return out

    def selftest(self):
        res = []
        res.append(("config", not self.config.load_error and not self.config.missing(),
                    self.config.load_error or ",".join(self.config.missing()) or "ok"))
        if self.journal is not None:
            res.append(("journal", self.journal.slot is not None,
                        "seq%d" % self.journal.sequence if self.journal.slot is not None else "empty"))
        res.append(("clock", self.now() > 1700000000, str(self.now())))
        if self.sdm is not None:
            res.append(("modbus", self.sdm.reads > 0 and not self.sdm.error,
                        self.sdm.error or "reads%d" % self.sdm.reads))
        if self.dlms is not None:
            res.append(("dlms", self.dlms.reads > 0 and not self.dlms.error,
                        self.dlms.error or "reads%d" % self.dlms.reads))
        stale = self.liveness.stale(self.ms())
        res.append(("tasks", not stale, ",".join(stale) or "alive"))
        hf = _mem_free()
        if hf is not None:
            res.append(("heap", hf > 8192, "free%d" % hf))
        return res

    def meter_changed(self, now):
        self.sync_relay()
        self._report(now, status=True)

    # -- shared actions -------------------------------------------------------------
    def sync_relay(self):
        """The board relay follows the credit machine, after every change."""
        if self.meter is None or self.board.relay is None:
            return
        want = self.meter.relay_closed
        if self.board.relay.closed() != want:
            print("urja: relay", "closed" if want else "open")
        self.board.relay.set(want)

    def _report(self, now, status=False):
        """Queue pending events, and a status when asked or when the credit picture moved."""
        m = self.meter
        if m is None or self.uplink is None:
            return
        self.uplink.events(now, m.log)
        a = m.account
        key = (a.state, a.relay_closed, a.load_state)
        if status or key != self._last_status:
            self.uplink.status(now, m)
            self._last_status = key
        self._outbox_event.set()

    def beat(self, name):
        due = self.hang.get(name)
        if due is not None and self.clock.elapsed_ms() >= due:
            return False
        self.liveness.beat(name, self.ms())
        return True

    async def _hung(self, name):
        print("urja: task %s hangs (fault injection)" % name)
        while True:
            await _sleep_ms(1000)

    # -- tasks -------------------------------------------------------------------------
    async def poll_task(self, wdt=None):
        """Board inputs and the CLI every ``POLL_MS``; and ``wdt`` (the board watchdog, if
        given) fed at most every min(500, timeout / 4) ms while every task beats: here, not
        in a task of its own (heap).  A hung poll stops feeding it too."""
        cover = False
        power_fail = False
        cli = self.parts.cli is not None
        if wdt is not None:
            period = min(500, wdt.timeout_ms // 4)
            fed_ms = self.ms() - period  # the first check at once
            warned = False
        while True:
            if not self.beat("poll"):
                # the board's poll still runs (it is what resets the unix board)
                self.board.poll()
                await _sleep_ms(POLL_MS)
                continue
            if wdt is not None and self.ms() - fed_ms >= period:
                fed_ms = self.ms()
                stale = self.liveness.stale(fed_ms)
                if not stale:
                    wdt.feed()
                    warned = False
                elif not warned:
                    print("urja: watchdog not fed, silent tasks:", ",".join(stale))
                    warned = True
            self.board.poll()
            if cli:
                self.cli_poll()
            m = self.meter
            if m is not None:
                now = self.now()
                if self.pulse_delta is not None and self.energy_feed is None:
                    n = self.pulse_delta.update(self.board.pulse_counter.value())
                    if n:
                        m.add_pulses(n, now)
                if self.board.cover is not None and self.board.cover.value() != cover:
                    cover = not cover
                    m.log.append(now, events.COVER_OPEN if cover else events.COVER_CLOSE, 0)
                    self._report(now)
                if self.board.power_fail is not None and self.board.power_fail.value() != power_fail:
                    power_fail = not power_fail
                    if power_fail:
                        m.power_fail(now)
            await _sleep_ms(POLL_MS)

    async def metering_task(self):
        m = self.meter
        step_s = self.setting("step_s")
        while True:
            if not self.beat("metering"):
                await self._hung("metering")
            now = self.now()
            nxt = (now // step_s + 1) * step_s
            await asyncio.sleep(self.clock.wall_s(nxt - now))
            now = self.now()
            if now < nxt or now <= self._last_step_t:
                continue  # woke a little early: sleep on to the step boundary
            t_us = _ticks_us()
            mv, ma = self._sample(now)
            out = m.step(now, mv, ma)
            self._last_step_t = now
            records = [r for kind, r in out if kind == "interval"]
            if records:
                self.uplink.readings(now, m.config.interval_s, records_end_cum(m), records)
            for kind, snap in out:
                if kind != "interval":
                    self.uplink.snapshot(now, snap)
            self.sync_relay()
            self._report(now, status=bool(records))
            us = _ticks_us() - t_us
            self.cycles += 1
            self.cycle_us_total += us
            if us > self.cycle_us_max:
                self.cycle_us_max = us

    def _fresh(self, source, now):
        t = self.live_t.get(source)
        return t is not None and now - t <= 3 * self.setting("step_s") + 60

    def _sample(self, now):
        """Demand for the load limiter (the external meter's power, else from the pulses)
        given to the meter, then the (mV, mA) for its step: each None when not known."""
        m = self.meter
        v = self.live_values
        sdm = self._fresh("sdm", now)
        dlms = self._fresh("dlms", now)
        w = None
        if sdm:
            w = v.get("sdm_active_power_w")
        elif dlms:
            w = v.get("dlms_active_power_w")
        units = m.energy_units
        dt = now - self._last_step_t
        if w is None and dt > 0 and m.config.service == "electricity":
            w = (units - self._last_pulse_units) * 3600 // dt
        self._last_pulse_units = units
        if w is not None:
            self.power_w = w
            m.power_sample(w if w >= 0 else 0, now)
            self.sync_relay()
        if sdm and v.get("sdm_voltage_dv") is not None:
            ma = v.get("sdm_current_ma")
            return v["sdm_voltage_dv"] * 100, ma if ma is None or ma >= 0 else None
        if dlms and v.get("dlms_voltage_mv") is not None:
            return v["dlms_voltage_mv"], v.get("dlms_current_ma")
        return None, None

    async def read_task(self, name):
        """The ``modbus`` task (the SDM120, ``self.sdm``) or the ``dlms`` one: live values
        every ``<name>_period_s``, the energy register when ``energy_source`` is this
        meter, and a console line and a READ_FAILED / READ_RESTORED event (value = link)
        when the link changes state (not on every poll)."""
        sdm = name == "modbus"
        reader: "SdmReader | DlmsReader" = self.sdm if sdm else self.dlms
        source = "sdm" if sdm else "dlms"
        failed = False
        while True:
            if not self.beat(name):
                await self._hung(name)
            values = await reader.read()
            now = self.now()
            if failed != (values is None):
                failed = not failed
                link = events.READ_LINK_MODBUS if sdm else events.READ_LINK_DLMS
                if failed:
                    print("urja: %s read failed: %s" % (name, reader.error))
                    self.meter.log.append(now, events.READ_FAILED, link)
                else:
                    print("urja: %s read restored after %d failed reads" % (name, reader.failures))
                    self.meter.log.append(now, events.READ_RESTORED, link)
                self._report(now)
            if values is not None:
                for key in values:
                    self.live_values[source + "_" + key] = values[key]
                self.live_t[source] = now
                wh = values.get("import_wh" if sdm else "energy_import_wh")
                if wh is not None and self.energy_feed is not None \
                        and self.setting("energy_source") == source:
                    pulses, status = self.energy_feed.update(wh)
                    if pulses:
                        self.meter.add_pulses(pulses, now)
                    if status == metering.REG_DECREASE:
                        self.meter.log.append(now, events.REGISTER_DECREASE, 0)
            await asyncio.sleep(self._period_wall(name + "_period_s"))

    def _period_wall(self, key):
        return max(0.2, self.clock.wall_s(self.setting(key)))

    def heartbeat(self, now):
        """Queue a heartbeat uplink (health) now."""
        hb = {"up": self.uptime_s(), "rssi": None, "ob": self.outbox.depth,
              "dr": self.outbox.dropped_total, "fw": self.version,
              "jw": self.journal.writes_today}
        hf = _mem_free()
        if hf is not None:
            hb["hf"] = hf
        if self.sdm is not None:
            hb["rfm"] = self.sdm.failures
        if self.dlms is not None:
            hb["rfd"] = self.dlms.failures
        self.uplink.heartbeat(now, hb)
        self._outbox_event.set()

    # -- MQTT -----------------------------------------------------------------------------
    def _on_message(self, publish):
        if len(self._downlinks) >= _DOWNLINK_QUEUE:
            self._downlinks.pop(0)  # the broker re-sends unacked QoS 1 only on reconnect; drop oldest
        self._downlinks.append(publish.payload)
        self._downlink_event.set()

    async def downlink_task(self):
        """Commands as they arrive, and a heartbeat every ``heartbeat_s`` (the first at
        once) while waiting for them: one coroutine, not two (heap)."""
        period = self.setting("heartbeat_s")
        beat_at = self.now()
        while True:
            if not self.beat("downlink"):
                await self._hung("downlink")
            now = self.now()
            if now >= beat_at:
                self.heartbeat(now)
                beat_at = now + period
            if not self._downlinks:
                self._downlink_event.clear()
                try:
                    # wake at least every second, and in time for the next heartbeat
                    await asyncio.wait_for(self._downlink_event.wait(),
                                           min(1.0, self.clock.wall_s(beat_at - now)) + 0.001)
                except asyncio.TimeoutError:
                    pass
                continue
            self.handle_command(self._downlinks.pop(0))
            if self.restart_pending:
                # restart into the new image once the ack is out (or after _RESTART_DRAIN_MS)
                deadline = self.ms() + _RESTART_DRAIN_MS
                while self.outbox.peek(1, after=self._published_upto) and self.ms() < deadline:
                    self.beat("downlink")
                    await _sleep_ms(50)
                print("urja: restarting for the new firmware")
                restart = getattr(self.board, "restart", None)
                if restart is None:
                    raise SystemExit(0)
                restart()

    def handle_command(self, payload):
        """Decode, authenticate and apply one downlink; queue its ack. Returns the result code."""
        now = self.now()
        try:
            cmd = messages.decode_command(payload)
        except messages.MessageError as e:
            print("urja: command ? -> MALFORMED undecodable downlink (%d bytes): %s" % (
                len(payload), e))
            self.uplink.ack(now, "?", 0, auth.MALFORMED, "MALFORMED", str(e)[:60])
            self._outbox_event.set()
            return auth.MALFORMED
        result, detail = self.meter.apply_command(cmd, now, self.downlink_act)
        cid = cmd["id"] if isinstance(cmd.get("id"), str) else "?"
        counter = cmd["counter"] if isinstance(cmd.get("counter"), int) else 0
        n = lo = None
        if result == auth.OK and cmd.get("kind") == "backfill":
            # ``uplink.queue_backfill`` on this app's outbox and ranges, waking the pump
            first, last = backfill_range(cmd["fields"])
            n, lo, queued = queue_backfill(self.outbox, self._backfills, self._published_upto,
                                           first, last)
            if queued:
                self._outbox_event.set()
        if result == auth.OK and cmd.get("kind") == "time":
            # Move meter time to UTC t (the core accepted and journaled it).  The board
            # clock takes the step, so the accelerated test clock moves with it.  Meter
            # time never goes back: after a backward step ``now()`` holds at the last
            # step until the clock passes it (no interval closes twice).
            t = clock_sync_time(cmd["fields"])
            step = t - self.clock.now()
            self.board.clock.set(self.board.clock.now() + step)
            self._floor_t = max(self._floor_t, self._last_step_t)
            print("urja: clock set to %d (step %d s)" % (t, step))
            now = self.now()  # the ack and the status after it carry the new time
        names = meter_mod.RESULT_NAMES  # built when asked for: not held on the heap between commands
        self.uplink.ack(now, cid, counter, result, names.get(result, str(result)), detail[:60], n, lo)
        print("urja: command %s -> %s %s" % (cid, names.get(result, result), detail))
        self.sync_relay()
        self._report(now, status=result == auth.OK)
        return result

    # -- downlinks the app applies: config, ota (``firmware/app/downlinks.py``) ----------
    def downlink_act(self, kind, fields, now):
        """``Meter.apply_command``'s hook for ``config``, ``ota``, ``ota_chunk`` once the
        command is authentic: (result, detail), or None for a kind nobody knows.  Their code
        is imported at the first such command (heap: most meters never get one)."""
        if kind != "config" and kind != "ota" and kind != "ota_chunk":
            return None
        from firmware.app import downlinks
        try:
            return downlinks.apply(self, kind, fields, now)
        finally:
            _drop("firmware.app.downlinks")
            self.release_config()

    def _next_publish(self):
        """(seq, record, backfill range or None) of the next uplink to publish, or None."""
        while self._backfills:
            rng = self._backfills[0]
            batch = self.outbox.history(rng[0], rng[1], 1)
            if batch:
                return batch[0][0], batch[0][1], rng
            self._backfills.pop(0)  # done (or the ring erased the rest meanwhile)
        batch = self.outbox.peek(1, after=self._published_upto)
        if batch:
            return batch[0][0], batch[0][1], None
        return None

    async def mqtt_task(self):
        sup = backoff.Supervisor(
            backoff.Backoff(base_ms=500, cap_ms=30000, randrange=random.randrange),
            self.ms(), connect_timeout_ms=15000, stable_ms=30000)
        host = self.setting("broker_host")
        port = self.setting("broker_port")
        error = ""  # the last connect or link error, for the console
        mid = self.meter.config.meter_id
        while True:
            if not self.beat("mqtt"):
                await self._hung("mqtt")
            action = sup.tick(self.ms())
            if action != backoff.CONNECT:
                self.mqtt_state = backoff.STATE_NAMES[sup.state].lower()
                await _sleep_ms(min(500, max(10, sup.retry_at_ms - self.ms())))
                continue
            self.mqtt_state = "connecting"
            # keepalive from _pump's loop, not a task of its own (heap)
            # a fresh Session per connection: the outbox, not the session, owns unacked
            # readings, so nothing is sent twice from two places after a reconnect
            session = Session(mid, keepalive_s=60, clean_session=False,
                              will_topic=messages.online_topic(mid), will_message=b"0",
                              will_qos=1, will_retain=True, retry_s=0)
            conn = MqttConnection(session, on_message=self._on_message, keepalive_task=False)
            try:
                await conn.connect(host, port, timeout_s=10)
            except Exception as e:  # OSError, refused, timeout: try again later
                error = "%s: %s" % (type(e).__name__, e)
                await conn.abort()
                sup.connect_failed(self.ms())
                continue
            sup.connect_ok(self.ms())
            self.mqtt_state = "connected"
            try:
                await self._pump(conn, "%s:%d" % (host, port))
            except (MqttError, OSError) as e:
                error = "%s: %s" % (type(e).__name__, e)
            await conn.abort("link lost: " + error)
            sup.link_lost(self.ms())
            self.mqtt_state = "disconnected"
            print("urja: mqtt link lost:", error)

    async def _pump(self, conn, where=""):
        """Subscribe, announce, then publish the outbox oldest first, one PUBACK at a time.

        Backfill ranges (``backfill``) go first, re-read from the outbox's history.
        """
        mid = self.meter.config.meter_id
        await conn.subscribe([(messages.command_topic(mid), 1)])
        await conn.publish(messages.online_topic(mid), b"1", qos=1, retain=True)
        # said once subscribed: a command published after this line reaches the meter
        print("urja: mqtt connected to %s" % where)
        if self.ota_trial:
            from firmware.app import downlinks
            downlinks.ota_confirm(self)
            _drop("firmware.app.downlinks")
        unreleased = 0
        while conn.is_connected:
            self.beat("mqtt")
            await conn.tick()  # at least every second: the wait below is 1 s at most
            nxt = self._next_publish()
            if nxt is None:
                if unreleased:
                    self.outbox.ack(self._published_upto, self.now())
                    unreleased = 0
                self._outbox_event.clear()
                try:
                    await asyncio.wait_for(self._outbox_event.wait(), 1)
                except asyncio.TimeoutError:
                    pass
                continue
            seq, record, again = nxt
            kind, body = split(record)
            try:
                await conn.publish(messages.topic(mid, kind), body, qos=1, timeout_s=_PUBLISH_TIMEOUT_S)
            except AckTimeout:
                raise MqttError("no PUBACK for seq %d" % seq)
            if again is not None:
                again[0] = seq + 1
                self.republished += 1
                continue
            self._published_upto = seq
            self.published += 1
            unreleased += 1
            if unreleased >= _OUTBOX_ACK_EVERY:
                self.outbox.ack(seq, self.now())
                unreleased = 0
        if unreleased:
            self.outbox.ack(self._published_upto, self.now())

    # -- CLI ----------------------------------------------------------------------------------
    def cli_poll(self):
        """Serve the CLI UART (``poll_task`` calls it every ``POLL_MS``): read until it is
        empty (a pasted line must not overrun a small UART buffer), the CLI module loaded
        at the first byte and let go again when the technician has gone."""
        uart = self.parts.cli
        reader = self._cli_reader
        data = uart.read(64)
        if not data:
            if reader is not None and not reader.buf and not reader.overlong \
                    and self.ms() - self._cli_last_ms >= CLI_IDLE_UNLOAD_MS:
                self._cli_reader = None  # the technician has gone: give the heap back
                self.cli = None  # type: ignore[assignment]
                _drop("firmware.app.cli")
                self.release_config()
            return
        if reader is None:  # the first byte: most meters never see one (heap)
            from firmware.app import cli  # and the settings store it works on
            self.cli = cli.Cli(self)
            reader = self._cli_reader = cli.LineReader()
        while data:
            self._cli_last_ms = self.ms()
            for line in reader.feed(data):
                reply = self.cli.handle(line)
                if reply is not None:
                    uart.write(reply.encode() + b"\r\n")
            data = uart.read(64)

    # -- run ----------------------------------------------------------------------------------
    def tasks(self):
        """(name, coroutine function, max silence in wall ms) of the tasks this board runs
        (``run`` gives ``poll`` the watchdog)."""
        out: list = [("poll", self.poll_task, 2000)]
        if self.meter is not None:
            step_wall_ms = int(self.clock.wall_s(self.setting("step_s")) * 1000)
            out.append(("metering", self.metering_task, step_wall_ms + 5000))
            out.append(("mqtt", self.mqtt_task, 20000))
            out.append(("downlink", self.downlink_task, 5000))
            if self.sdm is not None:
                out.append(("modbus", lambda: self.read_task("modbus"),
                            int(self._period_wall("modbus_period_s") * 1000) + 10000))
            if self.dlms is not None:
                out.append(("dlms", lambda: self.read_task("dlms"),
                            int(self._period_wall("dlms_period_s") * 1000) + 15000))
        return out

    def _crashed(self, loop, context):
        """The event loop's exception handler: a task ended by an exception that nobody awaits
        (MicroPython calls it at once).  A crashed task stops beating: the watchdog resets
        the board."""
        t = context["future"]
        if t not in self._tasks:  # not one of ours (MicroPython's ``Loop`` is a class)
            return loop.default_exception_handler(loop, context)
        e = context["exception"]
        print("urja: task %s crashed: %s: %s" % (
            self.liveness.names[self._tasks.index(t)], type(e).__name__, e))
        if hasattr(sys, "print_exception"):
            sys.print_exception(e)  # type: ignore[attr-defined]

    async def run(self, watchdog=True):
        now_ms = self.ms()
        wdt = self.board.start_watchdog() if watchdog else None
        self._tasks = []  # in ``liveness.names`` order: ``_crashed`` names a task by its place
        for name, fn, silence_ms in self.tasks():
            self.liveness.register(name, silence_ms, now_ms)
            t = asyncio.create_task(fn(wdt) if name == "poll" else fn())
            self._tasks.append(t)
            if hasattr(t, "add_done_callback"):  # CPython: its loop reports only once a task is collected
                t.add_done_callback(lambda t: t.cancelled() or t.exception() is None or self._crashed(
                    None, {"exception": t.exception(), "future": t}))
        if not hasattr(t, "add_done_callback"):
            asyncio.get_event_loop().set_exception_handler(self._crashed)
        print("urja: running tasks", ",".join(self.liveness.names))
        while True:
            await asyncio.sleep(3600)


def build_app(version=FW_VERSION, ota_dir=None, board=None):
    """The App for this board and environment (see the module docstring), meter started.

    ``ota_dir``: the A/B state folder the boot selector ran this image from
    (``boards/unix/ota_dirs.py``); without it a unix meter refuses ``ota`` commands.
    ``board``: the board file (name or path); default ``URJA_BOARD`` or ``unix``.  An
    ESP32 (``tools/flash.py`` entry: ``main(board="/board.json")``) always takes its
    A/B slots from its OTA partitions.  Boot-only code: in ``firmware.app.startup``.
    """
    from firmware.app import startup
    try:
        return startup.build_app(version, ota_dir, board)
    finally:
        _drop("firmware.app.startup")


def main(version=FW_VERSION, ota_dir=None, board=None):
    """Run the meter; an image's entry (``boards/unix/ota_dirs.py`` ``ENTRY``) passes its
    version and the A/B state folder it was booted from, a deployed ESP32's
    (``tools/flash.py`` ``ENTRY_SOURCE``) its board file."""
    asyncio.run(build_app(version, ota_dir, board).run())


if __name__ == "__main__":
    main()
