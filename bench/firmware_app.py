"""Benchmark: the whole firmware app for a simulated day inside ``micropython -X heapsize=...``.

Starts a private Mosquitto and the external meters the app reads -- an SDM120
emulated by pymodbus and a DLMS meter (``dlms_peer``), each on a pty, the same
peers as ``hil_tests/`` -- then runs ``bench/mp/app_day.py`` (mpy-cross
bytecode, started by ``bench/mp/boot.py``): the real app
(``firmware.app.main.build_app``) on the unix board with every task -- pulse
sampling, the external meter reads, metering steps, reporting through the
flash outbox to MQTT at QoS 1, heartbeat, the CLI (served by the poll task) on its pty, watchdog --
with meter time accelerated (default 1200x: a day in ~72 s).  A monitor task
collects garbage every 100 ms and records the most live heap.

One micropython process per configuration a deployment has (a meter reads ONE
external source, its board/config says which):

- ``sdm``:  an SDM120 over Modbus RTU (energy from its import register);
- ``dlms``: a DLMS/COSEM meter over HDLC (energy from its import register);
- ``both``: both links at once (energy from the SDM120), for comparison only.

Per configuration it prints and writes (``bench/results/firmware_app.json``):
the peak live heap beyond the ROMFS image (the firmware's bytecode, which a
board keeps in flash), what imports and ``build_app`` cost, the heap each
loaded module costs (a second, import-only process importing exactly the
modules the day loaded, one at a time in dependency order), the smallest
``-X heapsize`` that completes the simulated day (bisection, 4 KiB steps,
from the day's peak live heap up), whether whole days run in exactly the
issue's 128 KiB (``--target-runs`` of them, default 2: the acceptance), time
per metering/reporting cycle (mean, max), messages published, journal
writes, the names interned by the day's end (the qstr pool doubles at the
1,261st, ~14 KB at once), and the heap the CLI adds once a technician types
(loaded after the day, at its first byte).

    python bench/firmware_app.py [--configs sdm,dlms,both] [--factor 1200]
                                 [--seconds 86400] [--no-bisect] [--target-runs N]
                                 [--filesystem]

The smallest heap is searched with whole spans (``--seconds``): a short span
can fit in less than a day needs, and transients and fragmentation make the
need ~10 % above the sampled peak live heap (the monitor samples every 100 ms
of wall time, between tasks; a failing run names the allocation).  Task
interleavings at 1200x vary from run to run, so the smallest heap can move
by a step (4 KiB) between runs.

Heap numbers are from the 64-bit unix port: pointers and object headers are
twice the ESP32's, so a board needs less.  Wall times are noisy (shared CI
machine); heap numbers repeat to within a few hundred bytes.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.mosquitto import Broker  # noqa: E402
from bench.firmware_core import build_romfs, parse_qstr  # noqa: E402
from tools.build import build_image, mpy_cross_command  # noqa: E402
from hil_tests.conftest import DlmsPeer, Sdm120, micropython  # noqa: E402
from hil_tests.test_app_unix import settings  # noqa: E402

START_T = 1795753800  # Fri 2026-11-27 10:00 IST
TARGET_HEAP_BYTES = 128 * 1024  # issue 4: the app fits a 128 KB heap (beyond the image)
CONFIGS = ("sdm", "dlms", "both")
# Dependency order for the per-module import numbers: a module is charged for what it
# imports that is not loaded yet, so the lowest layers come first.  Only the modules a
# configuration's day actually loaded are imported; any not listed here go last.
IMPORT_ORDER = (
    "asyncio", "asyncio.core", "asyncio.event", "asyncio.funcs", "asyncio.lock", "asyncio.stream",
    "firmware", "firmware.core", "firmware.core.localtime", "firmware.core.auth",
    "firmware.core.credit", "firmware.core.events", "firmware.core.metering",
    "firmware.core.tariff", "firmware.core.journal", "firmware.core.meter",
    "firmware.core.registers", "boards", "boards.hal", "boards.schema",
    "firmware.core.backoff", "firmware.core.outbox", "firmware.protocol",
    "firmware.protocol.crc16", "firmware.protocol.cbor", "firmware.protocol.messages",
    "firmware.protocol.mqtt", "firmware.protocol.modbus", "firmware.protocol.sdm",
    "firmware.protocol.hdlc", "firmware.protocol.dlms_data", "firmware.protocol.dlms",
    "firmware.protocol.dlms_objects", "firmware.protocol.dlms_client",
    "firmware.sts", "firmware.sts.ea07", "firmware.sts.codec", "firmware.sts.acceptor",
    "firmware.app", "firmware.app.health", "firmware.app.uplink", "firmware.app.config",
    "firmware.app.sdm_reader", "firmware.app.dlms_reader", "firmware.app.mqtt_client", "firmware.app.platform",
    "firmware.app.cli", "firmware.app.main",
    "boards.unix", "boards.unix.flash", "boards.unix.control", "boards.unix.hal",
    "boards.unix.outbox_files")


def heap_kib(text):
    text = text.lower()
    return int(text.rstrip("km")) * (1024 if text.endswith("m") else 1)


class World:
    """The broker and the external meters, shared by every run (one run at a time)."""

    def __init__(self, workdir):
        self.broker = Broker(workdir)
        self.broker.start()
        self.sdm = Sdm120(voltage=230.0, current=4.0, power=920.0, import_kwh=1.0).start()
        self.dlms = DlmsPeer(energy_wh=1000, voltage_dv=2300).start()
        from hil_tests.dut import Pty
        self.cli = Pty()  # the CLI UART: open, nobody types (see app_day.py for the CLI's cost)

    def env(self, config):
        """URJA_* environment and factory settings for one configuration."""
        source = "dlms" if config == "dlms" else "sdm"
        cfg = settings(self.broker, heartbeat_s=900, modbus_period_s=60, dlms_period_s=60,
                       energy_source=source, opening_credit_paise=10 ** 7)
        env = {"URJA_CLI_PTY": self.cli.path}
        if config in ("sdm", "both"):
            env["URJA_RS485_PTY"] = self.sdm.path
        if config in ("dlms", "both"):
            env["URJA_DLMS_PTY"] = self.dlms.path
        return env, cfg

    def stop(self):
        self.sdm.stop()
        self.dlms.stop()
        self.cli.close()
        self.broker.stop()


def run(world, config, image, heap, factor, seconds, romfs=None, imports=None,
        day_done_is_enough=False):
    """One micropython process; returns the parsed JSON (plus the qstr pool) or None
    when it failed (out of memory, a crash, a timeout).  ``day_done_is_enough``: the
    span completed counts as success even if the report after it ran out of heap."""
    state = tempfile.mkdtemp(prefix="urja-bench-")
    try:
        extra, cfg = world.env(config)
        factory = pathlib.Path(state) / "factory.json"
        factory.write_text(json.dumps(cfg))
        env = {"URJA_STATE_DIR": state, "URJA_CONFIG": str(factory), "URJA_TIME_FACTOR": str(factor),
               "URJA_START_T": str(START_T), "PATH": "/usr/bin:/bin"}
        env.update(extra)
        if imports:
            env["URJA_BENCH_IMPORTS"] = ",".join(imports)
        cmd = [micropython(), "-X", "heapsize=" + heap, "boot.py", "app_day", str(seconds)]
        if romfs:
            cmd += ["--romfs", str(romfs)]
        # with ROMFS, start where no firmware files lie, so every module comes from the image
        cwd = romfs.parent if romfs else image
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=seconds / factor * 3 + 60)
        except subprocess.TimeoutExpired:
            sys.stderr.write("%s run with heap %s timed out\n" % (config, heap))
            return None
        res = pool = day_peak = day_pool = None
        for line in proc.stdout.splitlines():
            if line.startswith("@@BENCH "):
                res = json.loads(line[8:])
            elif line.startswith("@@DAY "):
                day_peak = int(line[6:])
            elif line.startswith("qstr pool:"):
                if pool is None and day_peak is not None:
                    day_pool = parse_qstr(line)  # the names interned by the day's end
                pool = parse_qstr(line)  # the interned names at the end (never freed)
        if proc.returncode == 0 and res is not None:
            if pool is not None:
                res["qstr_end"] = pool
            if day_pool is not None:
                res["qstr_day"] = day_pool
            return res
        if day_done_is_enough and day_peak is not None:
            return {"peak_heap_excl_image_bytes": day_peak}  # the report after it did not fit
        tail = (proc.stdout[-600:] + proc.stderr[-600:]).strip().splitlines()
        if os.environ.get("URJA_BENCH_VERBOSE"):
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        sys.stderr.write("  %s run with heap %s failed (exit %s): %s\n" % (
            config, heap, proc.returncode, tail[-1] if tail else ""))
        return None
    finally:
        shutil.rmtree(state, ignore_errors=True)


def ordered(modules):
    rank = {m: i for i, m in enumerate(IMPORT_ORDER)}
    return sorted(modules, key=lambda m: (rank.get(m, len(rank)), m))


def smallest_heap(world, config, image, romfs, factor, span_s, lo_kib, hi_kib, step_kib=4):
    """Smallest -X heapsize (KiB beyond the image, to ``step_kib``) that runs ``span_s``
    simulated seconds, by bisection; ``lo_kib`` must be known to fail (e.g. below the
    span's peak live heap), ``hi_kib`` is doubled until it runs."""
    extra = romfs.stat().st_size // 1024 + 1 if romfs else 0
    def ok(kib):  # noqa: E306
        return run(world, config, image, "%dk" % (kib + extra), factor, span_s, romfs,
                   day_done_is_enough=True) is not None
    while not ok(hi_kib):
        lo_kib, hi_kib = hi_kib, hi_kib * 2
        if hi_kib > 4096:
            return None
    while hi_kib - lo_kib > step_kib:
        mid = (lo_kib + hi_kib) // 2
        if ok(mid):
            hi_kib = mid
        else:
            lo_kib = mid
    return hi_kib


def measure(world, config, image, romfs, args):
    extra_kib = romfs.stat().st_size // 1024 + 1 if romfs else 0
    heap = "%dk" % (heap_kib(args.heap) + extra_kib)
    print("%s: a simulated day at %dx, heap %s (%s) ..." % (
        config, args.factor, heap, "ROMFS image + %s" % args.heap if romfs else "filesystem .mpy"),
        flush=True)
    res = run(world, config, image, heap, args.factor, args.seconds, romfs)
    out = {"heapsize": heap, "ok": res is not None}
    if res is None:
        return out
    out.update(res)
    parts = run(world, config, image, heap, args.factor, 0, romfs, ordered(res["modules_loaded"]))
    if parts is not None:
        out["heap_import_bytes_by_module"] = parts["heap_import_bytes_by_module"]
        # the same modules' objects without the names they intern, and the interned
        # names (qstr pool: never freed; allocated in doubling chunks, so the module
        # that crosses a chunk boundary looks expensive in the list above)
        out["heap_objects_bytes_by_module"] = parts["heap_objects_bytes_by_module"]
        if "qstr_end" in parts:
            q = parts["qstr_end"]
            # string bytes stay in the ROMFS image: the heap holds the pool's entries
            out["qstr_after_build"] = dict(q, heap_bytes=q["n_total_bytes"] - q["n_str_data_bytes"])
    if args.bisect and romfs:
        # the run's peak live heap is a lower bound for the same span: nothing less can fit
        lo = res["peak_heap_excl_image_bytes"] // 1024
        kib = smallest_heap(world, config, image, romfs, args.factor, args.seconds, lo, lo + 32)
        out["smallest_heap_kib_excl_image"] = kib
        out["smallest_heapsize"] = "%dk" % (kib + extra_kib) if kib else None
    out["peak_under_128k"] = out["peak_heap_excl_image_bytes"] <= TARGET_HEAP_BYTES
    if romfs and args.target_runs:
        # the acceptance itself: whole days in exactly the target heap (beyond the image),
        # more than once, since task interleavings at 1200x move the transient peaks
        target = "%dk" % (TARGET_HEAP_BYTES // 1024 + extra_kib)
        oks = [run(world, config, image, target, args.factor, args.seconds, romfs,
                   day_done_is_enough=True) is not None for _ in range(args.target_runs)]
        out["target_runs_ok"] = oks
        out["day_runs_in_128k"] = all(oks)
    return out


def report(config, r):
    if not r.get("ok"):
        print("%-5s FAILED at heap %s" % (config, r["heapsize"]))
        return
    print("%-5s peak %6d B beyond the image (%s 128 KiB); imports %d, build_app %d, after build %d;"
          " CLI at first byte +%d" % (
              config, r["peak_heap_excl_image_bytes"],
              "under" if r["peak_under_128k"] else "OVER", r["heap_imports_bytes"],
              r["heap_build_app_bytes"], r["heap_after_build_excl_image"], r["heap_cli_loaded_bytes"]))
    if "target_runs_ok" in r:
        print("      whole days in a 128 KiB heap (beyond the image): %d of %d runs" % (
            sum(r["target_runs_ok"]), len(r["target_runs_ok"])))
    if "smallest_heap_kib_excl_image" in r:
        print("      smallest heap for the span: %s KiB beyond the image (-X heapsize=%s)" % (
            r["smallest_heap_kib_excl_image"], r["smallest_heapsize"]))
    print("      cycle %d us mean, %d us max over %d cycles; %d published, %d journal writes,"
          " %d tasks, qstrs %d by the day's end (%d pools), %d with the report and CLI" % (
              r["cycle_us_mean"], r["cycle_us_max"], r["metering_cycles"], r["published"],
              r["journal_writes_total"], r["tasks"], r.get("qstr_day", {}).get("n_qstr", 0),
              r.get("qstr_day", {}).get("n_pool", 0), r.get("qstr_end", {}).get("n_qstr", 0)))
    mods = r.get("heap_import_bytes_by_module") or {}
    objs = r.get("heap_objects_bytes_by_module") or {}
    q = r.get("qstr_after_build")
    if q:
        print("      after build: %d interned names, qstr pool %d B on the heap" % (
            q["n_qstr"], q["heap_bytes"]))
    print("        %-39s %7s %8s" % ("module", "import", "objects"))
    for name, n in sorted(mods.items(), key=lambda kv: -kv[1]):
        if n:
            print("        %-39s %7d %8s" % (name, n, objs.get(name, "")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="example: python bench/firmware_app.py --configs sdm --no-bisect")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of sdm, dlms, both")
    ap.add_argument("--heap", default="384k", help="firmware heap for the measured day, "
                    "beyond the ROMFS image (default 384k: room to see the peak)")
    ap.add_argument("--factor", type=int, default=1200)
    ap.add_argument("--seconds", type=int, default=86400, help="simulated seconds (default a day)")
    ap.add_argument("--no-bisect", dest="bisect", action="store_false",
                    help="skip the smallest-heap search")
    ap.add_argument("--target-runs", type=int, default=2,
                    help="whole days run in exactly 128 KiB beyond the image (default 2; 0 skips)")
    ap.add_argument("--filesystem", action="store_true",
                    help="also run each config with the .mpy files loaded into RAM")
    args = ap.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            ap.error("unknown config %r (choose from %s)" % (c, ", ".join(CONFIGS)))
    workdir = tempfile.mkdtemp(prefix="urja-bench-app-")
    world = World(workdir)
    image = pathlib.Path(workdir) / "image"
    out = {"factor": args.factor, "simulated_s": args.seconds, "target_heap_bytes": TARGET_HEAP_BYTES,
           "configs": {}}
    try:
        build_image(image, log=lambda *_: None)
        runners = []
        for name in ("app_day", "app_report"):  # the harness, and its reporting (see app_day.py)
            runners.append(image / (name + ".mpy"))
            subprocess.run([mpy_cross_command(), "-o", str(runners[-1]), "-s", name + ".py",
                            str(ROOT / "bench/mp" / (name + ".py"))],
                           check=True, capture_output=True, text=True)
        shutil.copy(ROOT / "bench/mp/boot.py", image / "boot.py")
        romfs = build_romfs(image, pathlib.Path(workdir) / "romfs" / "urja.romfs", extra=runners)
        shutil.copy(image / "boot.py", romfs.parent / "boot.py")
        out["romfs_image_bytes"] = romfs.stat().st_size
        for config in configs:
            out["configs"][config] = {"romfs": measure(world, config, image, romfs, args)}
            if args.filesystem:
                out["configs"][config]["filesystem"] = measure(world, config, image, None, args)
    finally:
        world.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    deployable = [c for c in configs if c != "both"]
    out["ok"] = all(out["configs"][c]["romfs"].get("ok") for c in configs)
    out["deployable_under_128k"] = all(out["configs"][c]["romfs"].get("peak_under_128k")
                                       for c in deployable) if deployable else None
    # the target: every deployable configuration ran its days in 128 KiB
    out["deployable_days_in_128k"] = all(out["configs"][c]["romfs"].get("day_runs_in_128k")
                                         for c in deployable) if deployable else None
    print()
    for config in configs:
        report(config, out["configs"][config]["romfs"])
        if "filesystem" in out["configs"][config]:
            fs = out["configs"][config]["filesystem"]
            print("      filesystem layout (.mpy in RAM): peak %s B" % fs.get("peak_heap_excl_image_bytes"))
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "firmware_app.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
