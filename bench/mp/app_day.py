# Runs inside micropython, started by boot.py as mpy-cross bytecode (so this script's
# own code is not compiled into the heap it measures): the full firmware app for a
# simulated span, then one JSON line.
#   micropython -X heapsize=... boot.py app_day SECONDS [--romfs IMAGE]
# Environment as for firmware.app.main.  With --romfs, boot.py has mounted the image
# at /rom and the bytecode runs in place (as from flash on a board); the image's
# bytes then sit in this heap on the unix port and are reported separately.
#
# URJA_BENCH_IMPORTS (comma-separated modules): import these one at a time first
# and report the heap each costs, then build the app and stop (no run).  Without
# it the app imports what its configuration needs, as on a meter, and the run
# reports which modules it loaded (bench/firmware_app.py feeds that list back in,
# in dependency order, for the per-module numbers).
import sys
import asyncio
import gc
import json
import os
import time

BENCH_MODULES = set(sys.modules)  # this script's own (asyncio, json, ...): not the app's
MEASURE = [m for m in (os.getenv("URJA_BENCH_IMPORTS") or "").split(",") if m]
SPAN_S = int(sys.argv[2])
ROMFS_BYTES = os.stat(sys.argv[sys.argv.index("--romfs") + 1])[6] if "--romfs" in sys.argv else 0


def heap():
    gc.collect()
    return gc.mem_alloc()


IMPORT_BASE = heap()
IMPORT_BYTES = {}
_prev = IMPORT_BASE
for _name in MEASURE:
    __import__(_name)
    IMPORT_BYTES[_name] = heap() - _prev
    _prev = heap()
from firmware.app import main as app_main  # noqa: E402
AFTER_IMPORTS = heap()


def app_modules():
    return sorted(m for m in sys.modules if m not in BENCH_MODULES)


async def bench(app):
    start_t = app.now()
    runner = asyncio.create_task(app.run())
    peak = 0
    t0 = time.ticks_ms()
    while app.now() < start_t + SPAN_S:
        await asyncio.sleep(0.1)
        used = heap()
        if used > peak:
            peak = used
    wall_ms = time.ticks_diff(time.ticks_ms(), t0)
    # the day is done: all the smallest-heap search waits for (what follows is the
    # bench's own reporting and the CLI, which must not decide whether the day fit)
    print("@@DAY %d" % (peak - ROMFS_BYTES))
    loaded = app_modules()
    end = heap()
    # the commissioning CLI, as its first received byte loads it (after the day, so the
    # day's peak is a meter nobody talks to; this says what a technician's visit adds)
    cli_bytes = reply = None
    try:
        from firmware.app import cli
        app.cli = cli.Cli(app)
        reply = app.cli.handle(b"balance")
        reader = cli.LineReader()  # noqa: F841  # held: the app keeps one while the CLI is loaded
        cli_bytes = heap() - end
    except MemoryError:
        pass
    import micropython
    micropython.qstr_info()  # "qstr pool: ..." line: the interned names (never freed)
    print("@@BENCH " + json.dumps({
        "simulated_s": app.now() - start_t, "romfs_image_bytes": ROMFS_BYTES,
        "heap_before_imports_excl_image": IMPORT_BASE - ROMFS_BYTES,
        "heap_imports_bytes": AFTER_IMPORTS - IMPORT_BASE,
        "heap_after_build_excl_image": AFTER_BUILD - ROMFS_BYTES,
        "heap_build_app_bytes": AFTER_BUILD - AFTER_IMPORTS,
        "peak_heap_excl_image_bytes": peak - ROMFS_BYTES, "wall_ms": wall_ms,
        "peak_heap_after_gc_bytes": peak, "heap_free_end_bytes": gc.mem_free(),
        "heap_total_bytes": gc.mem_free() + gc.mem_alloc(),
        "heap_cli_loaded_bytes": cli_bytes, "cli_reply_ok": bool(reply) and reply.startswith("OK"),
        "modules_loaded": loaded, "tasks": len(app.liveness.names),
        "metering_cycles": app.cycles,
        "cycle_us_mean": app.cycle_us_total // max(1, app.cycles), "cycle_us_max": app.cycle_us_max,
        "published": app.published, "outbox_depth_end": app.outbox.depth,
        "sdm_reads": app.sdm.reads if app.sdm else None,
        "dlms_reads": app.dlms.reads if app.dlms else None,
        "journal_writes_total": app.journal.writes_total, "mqtt": app.mqtt_state}))
    runner.cancel()
    sys.exit(0)


def objects_only(names):
    """Heap of each module's objects alone (functions, classes, tables), without the
    names it interns: import it again once dropped (its qstrs exist by then)."""
    out = {}
    for name in names:
        if not (name.startswith("firmware.") or name.startswith("boards.")):
            continue
        app_main._drop(name)  # this runs in micropython, where _drop forgets the module
        before = heap()
        __import__(name)
        out[name] = heap() - before
    return out


APP = app_main.build_app()
AFTER_BUILD = heap()
if MEASURE:
    import micropython
    micropython.qstr_info()  # the names the app's modules interned (host parses it)
    print("@@BENCH " + json.dumps({
        "romfs_image_bytes": ROMFS_BYTES, "heap_import_bytes_by_module": IMPORT_BYTES,
        "heap_objects_bytes_by_module": objects_only(MEASURE),
        "heap_imports_bytes": AFTER_IMPORTS - IMPORT_BASE,
        "heap_build_app_bytes": AFTER_BUILD - AFTER_IMPORTS,
        "heap_after_build_excl_image": AFTER_BUILD - ROMFS_BYTES,
        "modules_loaded": app_modules()}))
    sys.exit(0)
asyncio.run(bench(APP))
