# Runs inside `micropython` (see bench/firmware_core.py), started by boot.py as
# bytecode (in place from a mounted ROMFS with --romfs, as from flash on a board):
#   micropython -X heapsize=128k boot.py core_days DAYS STATE_DIR [--romfs IMAGE]
# Simulates a meter for DAYS days of 15-minute interval steps with a real
# file-backed journal and prints the qstr pool before and after the imports,
# the heap per imported module ("imports: {...}"), then one JSON line of
# measurements: heap per phase
# (``gc.mem_alloc`` after a collection; the ROMFS image, which a board keeps in
# flash, is reported as ``romfs_image_bytes``).  Everything runs inside ``main``:
# its variables are locals, so the harness's own bookkeeping does not sit in a
# module dict in the heap it measures.
import gc
import json
import sys
import time
from array import array

import micropython

# The modules the running meter needs, in dependency order, one at a time: the
# heap each costs (bytecode stays in ROM; RAM holds functions, classes, tables,
# the module dict and new interned names).
# (One string, split when used; the table of costs is printed and let go at once:
# the harness's own data should not weigh in the heap it measures.)
MODULES = ("firmware.core.localtime firmware.core.auth firmware.core.credit"
           " firmware.core.events firmware.core.metering firmware.core.tariff"
           " firmware.core.journal firmware.core.meter boards.hal boards.unix.flash")
HOURLY_W = array("H", [220, 200, 190, 190, 200, 320, 1400, 2100, 1600, 800, 600, 650,
                       700, 650, 600, 650, 800, 1300, 1900, 2300, 2200, 1700, 900, 400])
STEP_S = 900


def make_config(config_class, example):
    # in a function of its own, so no stale pointer in main's frame keeps the
    # example dict alive (the collector scans the stack conservatively)
    return config_class.from_dict(example())


def main():
    romfs_bytes = 0
    if "--romfs" in sys.argv:
        import os
        romfs_bytes = os.stat(sys.argv[sys.argv.index("--romfs") + 1])[6]
    gc.collect()
    base_alloc = gc.mem_alloc()
    micropython.qstr_info()

    import_bytes = {}
    prev = base_alloc
    for name in MODULES.split():
        __import__(name)
        gc.collect()
        a = gc.mem_alloc()
        import_bytes[name] = a - prev
        prev = a
    micropython.qstr_info()
    print("imports:", json.dumps(import_bytes))
    import_bytes = None

    from firmware.core import auth, journal, localtime
    from firmware.core.meter import Meter, MeterConfig, example_config
    from boards.unix.flash import FileSlots

    days = int(sys.argv[2])
    state_dir = sys.argv[3]
    gc.collect()
    after_import = gc.mem_alloc()

    t0 = localtime.local_midnight_utc(localtime.days_from_civil(2026, 11, 1), localtime.IST_OFFSET_S)
    cfg = make_config(MeterConfig, example_config)
    gc.collect()
    after_config = gc.mem_alloc()
    jr = journal.Journal(FileSlots(state_dir))
    meter = Meter(cfg, now=t0, journal=jr, opening_credit_paise=100000)
    gc.collect()
    after_meter = gc.mem_alloc()

    steps = days * 96
    step_us_total = 0
    step_us_max = 0
    steps_over_5ms = 0  # a count, not a list of times: the harness must stay small
    peak_live = after_meter
    peak_alloc = after_meter
    counter = 0
    milli = 0
    for i in range(1, steps + 1):
        now = t0 + i * STEP_S
        h = ((i - 1) * STEP_S // 3600) % 24
        # W * 900 s -> imp at 3200 imp/kWh, in milli-pulses
        milli += HOURLY_W[h] * 900 * 3200 * 1000 // 3600000
        pulses = milli // 1000
        milli -= pulses * 1000
        t_start = time.ticks_us()
        meter.add_pulses(pulses, now)
        meter.power_sample(HOURLY_W[h], now)
        meter.step(now)
        if i % (96 * 5) == 0:  # a Rs 1500 UPI recharge every five days
            counter += 1
            meter.apply_command(auth.make_topup(cfg.key, cfg.meter_id, counter, now + 3600,
                                                "T%d" % counter, 150000), now)
        dt = time.ticks_diff(time.ticks_us(), t_start)
        step_us_total += dt
        if dt > step_us_max:
            step_us_max = dt
        if dt >= 5000:
            steps_over_5ms += 1
        a = gc.mem_alloc()
        if a > peak_alloc:
            peak_alloc = a
        if i % 8 == 0:
            gc.collect()
            live = gc.mem_alloc()
            if live > peak_live:
                peak_live = live

    micropython.qstr_info()
    st = meter.status()
    energy_wh, balance_paise, commits = st["energy_wh"], st["balance_paise"], meter.commits
    # the payload the journal last wrote (its slot file holds exactly one record); not
    # json.dumps(meter.to_state()), which would add a whole second copy of the state
    # to the heap that the meter itself never holds
    import os
    record_bytes = os.stat("%s/slot%d.bin" % (state_dir, jr.slot))[6] - journal.RECORD_OVERHEAD
    # the run is over: let the meter go before the report is built, so the report
    # (the harness's own output, not the meter's) does not set the smallest heap
    st = meter = jr = cfg = None
    gc.collect()
    print(json.dumps({
        "days": days,
        "steps": steps,
        "heap_total": gc.mem_alloc() + gc.mem_free(),
        "romfs_image_bytes": romfs_bytes,
        "heap_runtime_baseline": base_alloc,
        "heap_after_import": after_import,
        "heap_after_config": after_config,
        "heap_after_meter": after_meter,
        "heap_peak_live": peak_live,
        "heap_peak_alloc": peak_alloc,
        "us_per_step_mean": step_us_total // steps,
        "us_per_step_max": step_us_max,
        "steps_over_5ms": steps_over_5ms,
        "journal_commits": commits,
        "journal_writes_per_day": commits // days,
        "journal_record_bytes": record_bytes,
        "energy_wh": energy_wh,
        "balance_paise": balance_paise,
    }))


main()
