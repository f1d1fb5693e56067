"""Power-cut test: SIGKILL a MicroPython meter mid-commit, over and over.

powercut_writer.py (run by the real ``micropython`` unix port) commits its
prepaid state through ``Journal(FileSlots(dir))`` in a tight loop; FileSlots
writes page by page in place, so a kill can leave a torn slot as a power cut
leaves torn flash.  After every kill the next start must restore either the
last commit it reported or the one in flight, never anything older, and the
money must add up exactly.

URJA_POWERCUT_CYCLES (default 1000) sets the number of kills;
URJA_POWERCUT_SEED fixes the random kill times and amounts.
"""
import json
import os
import pathlib
import random
import signal
import subprocess
import time


from firmware.tests.host import mpproc

from firmware.core import journal as jr

ROOT = pathlib.Path(__file__).resolve().parents[3]
WRITER = pathlib.Path(__file__).with_name("powercut_writer.py")
START_TIMEOUT_S = 10.0
MAX_RUN_MS = 20


def read_first_line(proc):
    return mpproc.read_first_line(proc, START_TIMEOUT_S)


read_to_eof = mpproc.read_to_eof
stop = mpproc.stop


def test_journal_survives_random_power_cuts_with_exact_balances(tmp_path):
    cycles = int(os.environ.get("URJA_POWERCUT_CYCLES", "1000"))
    seed = int(os.environ.get("URJA_POWERCUT_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    exe = mpproc.micropython_command()
    slots = tmp_path / "slots"
    print("\npower-cut test: %d cycles, seed %d (URJA_POWERCUT_SEED)" % (cycles, seed))

    last_n, last_balance = 0, 50000  # the fresh state before any commit
    outcomes = {"last_reported": 0, "in_flight_landed": 0}
    torn = {jr.SLOT_EMPTY: 0, jr.SLOT_SHORT: 0}
    commits = 0
    t0 = time.monotonic()
    for cycle in range(cycles + 1):  # the extra start only checks the last kill
        proc = subprocess.Popen([exe, str(WRITER), str(slots), str(rng.randrange(1 << 30))],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            line, rest = read_first_line(proc)
            assert line.startswith("RESTORED "), line + rest.decode(errors="replace")
            boot = json.loads(line[len("RESTORED "):])
            state = boot["state"]
            n = state["commit_no"]
            where = "cycle %d (seed %d): restored commit %d, last reported %d" % (
                cycle, seed, n, last_n)

            # never older than the last commit that reported success, at most the one in flight
            assert n in (last_n, last_n + 1), where
            # money adds up exactly: no mixed or half-written state
            assert state["balance_paise"] == state["opening"] + state["topups"] - state["charges"], (
                where, state)
            if n == last_n:
                outcomes["last_reported"] += 1
                assert state["balance_paise"] == last_balance, where
            else:
                outcomes["in_flight_landed"] += 1
            if n >= 2 and boot["slot"] is not None:
                # both slots have been written before; an unusable other slot = a torn write
                other = boot["reasons"][1 - boot["slot"]]
                assert other in (jr.SLOT_VALID, jr.SLOT_EMPTY, jr.SLOT_SHORT), (where, boot["reasons"])
                if other != jr.SLOT_VALID:
                    torn[other] += 1
                    assert n == last_n, where  # a torn write never reported success
            last_n, last_balance = n, state["balance_paise"]
            if cycle == cycles:
                break

            time.sleep(rng.uniform(0, MAX_RUN_MS / 1000))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            out = rest + read_to_eof(proc)
        finally:
            stop(proc)

        # Only whole lines count: a kill can cut "COMMITTED 123" before its newline.
        for raw in out.split(b"\n")[:-1]:
            words = raw.decode().split()
            assert len(words) == 3 and words[0] == "COMMITTED", out.decode(errors="replace")[-2000:]
            k, balance = int(words[1]), int(words[2])
            assert k == last_n + 1, "commit numbers skip: %d after %d" % (k, last_n)
            last_n, last_balance = k, balance
            commits += 1

    elapsed = time.monotonic() - t0
    torn_total = torn[jr.SLOT_EMPTY] + torn[jr.SLOT_SHORT]
    print("power-cut test: %d kills in %.1f s, %d commits reported; restored the last reported "
          "commit %d times, the in-flight one %d times; %d kills tore a slot (%d mid-page-write, "
          "%d truncated to empty) and the older slot was restored"
          % (cycles, elapsed, commits, outcomes["last_reported"], outcomes["in_flight_landed"],
             torn_total, torn[jr.SLOT_SHORT], torn[jr.SLOT_EMPTY]))
    if cycles >= 200:
        # otherwise the test never exercised recovery and proves nothing
        assert torn[jr.SLOT_SHORT] > 0, "no kill landed mid-write: %r" % torn
