# app_day.py's reporting, imported only once the numbers it reports are taken (so
# its names and strings are not in the heap the day is measured in).
import gc
import json
import sys


def _heap():
    gc.collect()
    return gc.mem_alloc()


def _app_modules(own):
    return sorted(m for m in sys.modules if m not in own and m != "app_report")


def day(h, romfs, app, simulated_s, own):
    loaded = _app_modules(own)
    end = _heap()
    # the commissioning CLI, as its first received byte loads it (after the day, so the
    # day's peak is a meter nobody talks to; this says what a technician's visit adds)
    cli_bytes = reply = None
    try:
        from firmware.app import cli
        app.cli = cli.Cli(app)
        reply = app.cli.handle(b"balance")
        reader = cli.LineReader()  # noqa: F841  # held: the app keeps one while the CLI is loaded
        cli_bytes = _heap() - end
    except MemoryError:
        pass
    import micropython
    micropython.qstr_info()  # "qstr pool: ..." line: the interned names (never freed)
    print("@@BENCH " + json.dumps({
        "simulated_s": simulated_s, "romfs_image_bytes": romfs,
        "heap_before_imports_excl_image": h["base"] - romfs,
        "heap_imports_bytes": h["imports"] - h["base"],
        "heap_after_build_excl_image": h["build"] - romfs,
        "heap_build_app_bytes": h["build"] - h["imports"],
        "peak_heap_excl_image_bytes": h["peak"] - romfs, "wall_ms": h["wall_ms"],
        "peak_heap_after_gc_bytes": h["peak"], "heap_free_end_bytes": gc.mem_free(),
        "heap_total_bytes": gc.mem_free() + gc.mem_alloc(),
        "heap_cli_loaded_bytes": cli_bytes, "cli_reply_ok": bool(reply) and reply.startswith("OK"),
        "modules_loaded": loaded, "tasks": len(app.liveness.names),
        "metering_cycles": app.cycles,
        "cycle_us_mean": app.cycle_us_total // max(1, app.cycles), "cycle_us_max": app.cycle_us_max,
        "published": app.published, "outbox_depth_end": app.outbox.depth,
        "sdm_reads": app.sdm.reads if app.sdm else None,
        "dlms_reads": app.dlms.reads if app.dlms else None,
        "journal_writes_total": app.journal.writes_total, "mqtt": app.mqtt_state}))


def imports(h, romfs, per_module, main, own):
    """The import-only run: each module's heap, then the same modules' objects alone."""
    objects = {}
    for name in per_module:
        if not (name.startswith("firmware.") or name.startswith("boards.")):
            continue
        # without the names it interns: import it again once dropped (its qstrs exist by then)
        main._drop(name)
        before = _heap()
        __import__(name)
        objects[name] = _heap() - before
    print("@@BENCH " + json.dumps({
        "romfs_image_bytes": romfs, "heap_import_bytes_by_module": per_module,
        "heap_objects_bytes_by_module": objects,
        "heap_imports_bytes": h["imports"] - h["base"],
        "heap_build_app_bytes": h["build"] - h["imports"],
        "heap_after_build_excl_image": h["build"] - romfs,
        "modules_loaded": _app_modules(own)}))
