"""Benchmark: the whole firmware app for a simulated day inside ``micropython -X heapsize=...``.

Starts a private Mosquitto and an SDM120 emulated by pymodbus on a pty (the
same peers as ``hil_tests/``), then runs ``bench/mp/app_day.py``: the real
app (``firmware.app.main.build_app``) on the unix board with every task --
pulse sampling, Modbus reads, metering steps, reporting through the flash
outbox to MQTT at QoS 1, heartbeat, CLI, watchdog -- with meter time
accelerated (default 1200x: a day in ~72 s).  A monitor task collects
garbage every 100 ms and records the most live heap.

Prints and writes ``bench/results/firmware_app.json``: peak heap after GC,
the heap each imported module costs and what ``build_app`` adds, time per
metering/reporting cycle (mean, max), messages published, journal writes;
and, with ``--bisect``, the smallest ``-X heapsize`` that survives a shorter
span.

    python bench/firmware_app.py [--heap 128k] [--factor 1200] [--seconds 86400] [--bisect]
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.mosquitto import Broker  # noqa: E402
from bench.firmware_core import build_romfs  # noqa: E402
from tools.build import build_image  # noqa: E402
from hil_tests.conftest import Sdm120, micropython  # noqa: E402
from hil_tests.test_app_unix import settings  # noqa: E402

START_T = 1795753800  # Fri 2026-11-27 10:00 IST


def run_day(image, heap, factor, seconds, broker, sdm, timeout_s, romfs=None):
    """One run; returns the parsed JSON or None when it failed (out of memory etc.)."""
    state = tempfile.mkdtemp(prefix="urja-bench-")
    try:
        cfg = settings(broker, heartbeat_s=900, modbus_period_s=60, opening_credit_paise=10 ** 7)
        factory = pathlib.Path(state) / "factory.json"
        factory.write_text(json.dumps(cfg))
        env = {"URJA_STATE_DIR": state, "URJA_CONFIG": str(factory), "URJA_TIME_FACTOR": str(factor),
               "URJA_START_T": str(START_T), "URJA_RS485_PTY": sdm.path, "PATH": "/usr/bin:/bin"}
        cmd = [micropython(), "-X", "heapsize=" + heap, str(ROOT / "bench/mp/app_day.py"),
               str(image), str(seconds)] + ([str(romfs)] if romfs else [])
        try:
            proc = subprocess.run(cmd, cwd=image, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        for line in proc.stdout.splitlines():
            if line.startswith("@@BENCH "):
                return json.loads(line[8:])
        sys.stderr.write("run with heap %s failed (exit %s):\n%s\n%s\n" % (
            heap, proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:]))
        return None
    finally:
        shutil.rmtree(state, ignore_errors=True)


def heap_kib(text):
    text = text.lower()
    return int(text.rstrip("km")) * (1024 if text.endswith("m") else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heap", default="128k")
    ap.add_argument("--factor", type=int, default=1200)
    ap.add_argument("--seconds", type=int, default=86400, help="simulated seconds (default a day)")
    ap.add_argument("--bisect", action="store_true", help="also find the smallest heap (6 h spans)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="urja-bench-mosq-")
    broker = Broker(workdir)
    broker.start()
    sdm = Sdm120(voltage=230.0, current=4.0, power=920.0, import_kwh=1.0).start()
    image = pathlib.Path(workdir) / "image"
    # the firmware as a board gets it: mpy-cross bytecode (.mpy files on the filesystem,
    # loaded into RAM: the conservative layout; ROMFS/frozen would keep it in flash)
    try:
        build_image(image, log=lambda *_: None)
        romfs = build_romfs(image, pathlib.Path(workdir) / "romfs" / "urja.romfs")
        extra_kib = romfs.stat().st_size // 1024 + 1
        wall = args.seconds / args.factor
        out = {"factor": args.factor, "simulated_s": args.seconds}
        # romfs: production layout (bytecode in flash); the image's bytes are added to
        # the heap here because the unix port holds the image in RAM
        # filesystem: .mpy files loaded into RAM
        for layout, rom, heap in (("romfs", romfs, "%dk" % (heap_kib(args.heap) + extra_kib)),
                                  ("filesystem", None, args.heap)):
            res = run_day(image, heap, args.factor, args.seconds, broker, sdm, wall * 3 + 60, rom)
            out[layout] = {"heapsize": heap, "ok": res is not None}
            if res:
                out[layout].update(res)
            if args.bisect:
                lo, hi = 16, 512  # KiB of firmware heap
                while hi - lo > 8:
                    mid = (lo + hi) // 2
                    h = mid + (extra_kib if rom else 0)
                    if run_day(image, "%dk" % h, args.factor, 6 * 3600, broker, sdm,
                               6 * 3600 / args.factor * 3 + 60, rom):
                        hi = mid
                    else:
                        lo = mid
                out[layout]["smallest_heap_kib_excl_image_6h"] = hi
        out["ok"] = out["romfs"]["ok"]
    finally:
        sdm.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out, indent=2))
    rom = out.get("romfs") or {}
    if rom.get("heap_import_bytes_by_module"):
        print("heap (ROMFS, bytes): before imports %d, imports %d, after build_app %d, peak %d" % (
            rom["heap_before_imports_excl_image"], rom["heap_imports_bytes"],
            rom["heap_after_build_excl_image"], rom["peak_heap_excl_image_bytes"]))
        for name, n in sorted(rom["heap_import_bytes_by_module"].items(), key=lambda kv: -kv[1]):
            print("    import %-32s %7d" % (name, n))
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "firmware_app.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
