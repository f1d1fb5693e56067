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
#
# The harness stays out of the numbers it takes: its state lives in locals (a
# module-level name or a short string constant would be interned for good, and
# the names count towards the qstr pool's next doubling), and all the reporting
# is in app_report.py, imported only after the day's peak is taken.
import gc
import sys


def _heap():
    gc.collect()
    return gc.mem_alloc()


def _run():
    import asyncio
    import os
    import time
    own = set(sys.modules)  # this script's modules (asyncio, ...): not the app's
    measure = [m for m in (os.getenv("URJA_BENCH_IMPORTS") or "").split(",") if m]
    argv = sys.argv
    romfs = os.stat(argv[argv.index("--romfs") + 1])[6] if "--romfs" in argv else 0
    h = {"base": _heap()}  # heap marks, in bytes
    per = {}
    prev = h["base"]
    for name in measure:
        __import__(name)
        per[name] = _heap() - prev
        prev = _heap()
    from firmware.app import main
    h["imports"] = _heap()
    app = main.build_app()
    h["build"] = _heap()
    if measure:
        import micropython
        micropython.qstr_info()  # the names the app's modules interned (host parses it)
        import app_report
        app_report.imports(h, romfs, per, main, own)
        return
    span = int(argv[2])

    async def day():
        start_t = app.now()
        runner = asyncio.create_task(app.run())
        peak = 0
        t0 = time.ticks_ms()
        while app.now() < start_t + span:
            await asyncio.sleep(0.1)
            used = _heap()
            if used > peak:
                peak = used
        # the day is done: all the smallest-heap search waits for (what follows is the
        # bench's own reporting and the CLI, which must not decide whether the day fit)
        print("@@DAY %d" % (peak - romfs))
        import micropython
        micropython.qstr_info()  # the names interned by the day's end (the report adds its own)
        h["peak"] = peak
        h["wall_ms"] = time.ticks_diff(time.ticks_ms(), t0)
        import app_report
        app_report.day(h, romfs, app, app.now() - start_t, own)
        runner.cancel()
        sys.exit(0)

    asyncio.run(day())


_run()
