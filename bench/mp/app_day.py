# Runs inside micropython: the full firmware app for one simulated day, then prints JSON.
# argv: image dir, simulated seconds [, ROMFS image].  Environment as for firmware.app.main.
# With a ROMFS image the bytecode runs in place (as from flash on a board); the
# image then sits in this heap on the unix port and is reported separately.
import sys

ROMFS_BYTES = 0
if len(sys.argv) > 3:
    import vfs
    with open(sys.argv[3], "rb") as f:
        rom = f.read()
    ROMFS_BYTES = len(rom)
    vfs.mount(vfs.VfsRom(rom), "/rom")
    sys.path.insert(0, "/rom")
else:
    sys.path.insert(0, sys.argv[1])
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

# Heap per imported module, in dependency order, one at a time (what the app's
# code and names cost before it runs; bench/firmware_app.py prints the list).
MODULES = ("asyncio", "firmware.core.localtime", "firmware.core.auth", "firmware.core.credit",
           "firmware.core.events", "firmware.core.metering", "firmware.core.tariff",
           "firmware.core.journal", "firmware.core.meter", "boards.hal", "firmware.core.backoff",
           "firmware.core.outbox", "firmware.protocol.crc16", "firmware.protocol.cbor",
           "firmware.protocol.messages", "firmware.protocol.mqtt", "firmware.protocol.modbus",
           "firmware.protocol.sdm", "firmware.protocol.hdlc", "firmware.protocol.dlms_data",
           "firmware.protocol.dlms", "firmware.protocol.dlms_objects",
           "firmware.protocol.dlms_client", "firmware.sts.acceptor", "firmware.app.health",
           "firmware.app.uplink", "firmware.app.config", "firmware.app.readers",
           "firmware.app.mqtt_client", "firmware.app.cli", "firmware.app.main")
gc.collect()
IMPORT_BASE = gc.mem_alloc()
IMPORT_BYTES = {}
_prev = IMPORT_BASE
for _name in MODULES:
    __import__(_name)
    gc.collect()
    IMPORT_BYTES[_name] = gc.mem_alloc() - _prev
    _prev = gc.mem_alloc()
from firmware.app import main as app_main  # noqa: E402
gc.collect()
IMPORTS_TOTAL = gc.mem_alloc() - IMPORT_BASE

SPAN_S = int(sys.argv[2])


async def bench(app):
    start_t = app.now()
    runner = asyncio.create_task(app.run())
    peak = 0
    t0 = time.ticks_ms()
    while app.now() < start_t + SPAN_S:
        await asyncio.sleep(0.1)
        gc.collect()
        used = gc.mem_alloc()
        if used > peak:
            peak = used
    gc.collect()
    print("@@BENCH " + json.dumps({
        "simulated_s": app.now() - start_t, "romfs_image_bytes": ROMFS_BYTES,
        "heap_before_imports_excl_image": IMPORT_BASE - ROMFS_BYTES,
        "heap_imports_bytes": IMPORTS_TOTAL, "heap_import_bytes_by_module": IMPORT_BYTES,
        "heap_after_build_excl_image": AFTER_BUILD - ROMFS_BYTES,
        "peak_heap_excl_image_bytes": peak - ROMFS_BYTES, "wall_ms": time.ticks_diff(time.ticks_ms(), t0),
        "peak_heap_after_gc_bytes": peak, "heap_free_end_bytes": gc.mem_free(),
        "heap_total_bytes": gc.mem_free() + gc.mem_alloc(),
        "metering_cycles": app.cycles,
        "cycle_us_mean": app.cycle_us_total // max(1, app.cycles), "cycle_us_max": app.cycle_us_max,
        "published": app.published, "outbox_depth_end": app.outbox.depth,
        "journal_writes_total": app.journal.writes_total, "mqtt": app.mqtt_state}))
    runner.cancel()
    sys.exit(0)


APP = app_main.build_app()
gc.collect()
AFTER_BUILD = gc.mem_alloc()
asyncio.run(bench(APP))
