"""Benchmark: STS token decode time per token inside MicroPython (unix port).

Vends N tokens here (CPython), then runs a small script in ``micropython``
that decodes them with firmware/sts/codec.py and checks each CRC.  Prints
ms per token and writes bench/results/sts.json.  Target: < 50 ms per token.

    .venv/bin/python bench/sts.py [-n 200] [--heapsize 128k]
"""
import argparse
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware.sts import codec  # noqa: E402

KEY = 0x0ABC12DEF3456789
TARGET_MS = 50.0

MP_SCRIPT = """
import sys, time, gc
sys.path.insert(0, %(root)r)
from firmware.sts import codec
tokens = %(tokens)r
gc.collect()
free0 = gc.mem_free()
t0 = time.ticks_us()
ok = 0
for t in tokens:
    if codec.decode(t, %(key)d).crc_ok:
        ok += 1
us = time.ticks_diff(time.ticks_us(), t0)
print("RESULT", len(tokens), ok, us, free0)
"""


def micropython():
    exe = os.environ.get("URJA_MICROPYTHON") or shutil.which(
        "micropython", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("micropython")
    if not exe:
        sys.exit("micropython not found: run ./dev setup (or set URJA_MICROPYTHON)")
    return exe


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="tokens to decode (default 200)")
    ap.add_argument("--heapsize", default="", help="micropython -X heapsize (e.g. 128k)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sts.json"))
    args = ap.parse_args(argv)

    rng = random.Random(62055)
    tokens = [codec.encode_credit(rng.randrange(3), rng.randrange(16), rng.randrange(1 << 24),
                                  rng.randrange(100000), KEY) for _ in range(args.n)]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(MP_SCRIPT % {"root": str(ROOT), "tokens": tokens, "key": KEY})
        script = f.name
    cmd = [micropython()] + (["-X", "heapsize=" + args.heapsize] if args.heapsize else []) + [script]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    finally:
        os.unlink(script)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not line:
        sys.exit("micropython failed:\n" + proc.stdout + proc.stderr)
    _, n, ok, us, free0 = line[0].split()
    ms_per_token = int(us) / 1000.0 / int(n)
    result = {"bench": "sts_decode", "runtime": "micropython unix port", "tokens": int(n),
              "crc_ok": int(ok), "ms_per_token": round(ms_per_token, 4), "target_ms": TARGET_MS,
              "within_target": ms_per_token < TARGET_MS, "heapsize": args.heapsize or "default",
              "heap_free_before_bytes": int(free0)}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("STS decode under micropython: %.3f ms/token over %s tokens (%s CRC ok), target < %.0f ms"
          % (ms_per_token, n, ok, TARGET_MS))
    print("wrote", out)
    return 0 if int(ok) == int(n) and ms_per_token < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
