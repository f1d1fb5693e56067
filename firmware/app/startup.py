"""Boot-only code of the app: ``main.build_app`` and ``App.start_meter`` run it once.

Imported for that and let go again (``main._drop``): the code and its strings are
not on the heap while the meter runs.
"""
import json

from firmware.app.main import (
    App, METER_JOURNAL_BYTES, OUTBOX_MAX_MESSAGES, RegisterFeed, _drop, _env,
)
from firmware.app.uplink import Uplink
from firmware.core import metering
from firmware.core.journal import Journal
from firmware.core.meter import Meter
from firmware.core.outbox import Outbox


def start_meter(app):
    """``App.start_meter``: build the meter from the stored configuration (the journal
    restores its state); True once it runs, False when not commissioned."""
    from firmware.app.config import ConfigError

    try:
        mc = app.config.meter_config()
    except ConfigError as e:
        print("urja: not commissioned:", e)
        return False
    c = app.config
    opening_paise, max_step_s = c.get("opening_credit_paise"), c.get("clock_max_step_s")
    pulse_constant, slave, physical = c.get("pulse_constant"), c.get("modbus_slave"), \
        c.get("dlms_physical")
    # every setting is read: let the store and its module go before the journal, the
    # meter and the reader stack are built (boot's heap peak is the binding one)
    c = None
    app.release_config()
    app.journal = Journal(app.board.slots, max_payload=METER_JOURNAL_BYTES)
    now = app.clock.now()
    app.meter = Meter(mc, now, app.journal, opening_credit_paise=opening_paise)
    app.meter.max_clock_step_s = max_step_s
    app._floor_t = app.meter.last_step_t
    app._last_step_t = app.meter.last_step_t
    app.outbox = Outbox(app.parts.outbox_segments, app.parts.outbox_slots,
                        max_messages=OUTBOX_MAX_MESSAGES)
    app.uplink = Uplink(app.outbox, mc.meter_id, "Wh" if mc.service == "electricity" else "L")
    if app.board.pulse_counter is not None:
        app.pulse_delta = metering.CounterDelta(app.board.pulse_counter.bits)
        app.pulse_delta.update(app.board.pulse_counter.value())
    app._last_pulse_units = app.meter.energy_units
    if app.setting("energy_source") in ("sdm", "dlms"):
        app.energy_feed = RegisterFeed(pulse_constant)
    if app.board.rs485 is not None:
        from firmware.app.sdm_reader import SdmReader  # Modbus stack: only with an RS485 link
        app.sdm = SdmReader(app.board.rs485, slave, app.ms)
    if app.parts.dlms is not None:
        from firmware.app.dlms_reader import DlmsReader  # DLMS stack: only with a DLMS link
        app.dlms = DlmsReader(app.parts.dlms, app.ms, physical)
    app.sync_relay()
    if app.ota is not None:
        from firmware.app import downlinks
        downlinks.ota_after_boot(app, now)
        _drop("firmware.app.downlinks")
    app._report(now, status=True)
    print("urja: meter %s up, journal seq %d, outbox depth %d next seq %d" % (
        mc.meter_id, app.journal.sequence, app.outbox.depth, app.outbox.next_seq))
    return True


def build_app(version, ota_dir, board):
    """``main.build_app``: the board, the App on it, factory settings, the meter started."""
    from boards.hal import load_board
    from firmware.app.platform import board_parts

    overrides = {}
    state = _env("URJA_STATE_DIR")
    if state:
        overrides["state_dir"] = state
        overrides["control"] = _env("URJA_CONTROL") or "unix:%s/control.sock" % state
    wd = _env("URJA_WATCHDOG_MS")
    if wd:
        overrides["watchdog_timeout_ms"] = int(wd)
    hw = load_board(board or _env("URJA_BOARD") or "unix", overrides)
    _drop("boards.schema")  # the board file is validated; not needed again until the next boot
    start_t = _env("URJA_START_T")
    slots = None
    if ota_dir or hw.config.get("platform") == "esp32":
        from firmware.app.platform import board_ota
        slots = board_ota(hw, ota_dir)
    app = App(hw, board_parts(hw), int(_env("URJA_TIME_FACTOR") or "1"),
              int(start_t) if start_t else None, version=version, ota_slots=slots)
    # Every part is built by now: keep only the fields read after boot (the watchdog's
    # timeout when run() starts it, and the board's identity); the rest of the board
    # file's nested dicts would sit on the heap for the meter's life (~2 KB).
    hw.config = {k: hw.config[k] for k in ("name", "platform", "watchdog_timeout_ms")
                 if k in hw.config}
    factory = _env("URJA_CONFIG")
    if factory:
        with open(factory) as f:
            app.commission_from(json.load(f))
    hang = _env("URJA_FAULT_HANG")
    if hang:
        name, after_s = hang.split(":")
        app.hang[name] = int(after_s) * 1000
    start_meter(app)
    _drop("firmware.app.platform")  # boot-only too (``app.parts`` keeps its class alive)
    return app
