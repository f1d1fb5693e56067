# MicroPython program driven by test_journal_powercut.py: a meter that commits
# its prepaid state as fast as it can until it is SIGKILLed (our power cut).
#   micropython firmware/tests/host/powercut_writer.py <slot directory> <seed>
# Prints one line "RESTORED <json>" (state found at boot, which slot, and why
# each slot was or was not usable), then "COMMITTED <commit_no> <balance_paise>"
# after each commit returns.  stdout on the unix port is unbuffered, so a
# printed line means the commit before it had completed.
import json
import sys
import time
import random

OPENING_PAISE = 50000  # Rs 500 opening balance
RECENT_IDS = 100  # ~21 bytes each: keeps the payload near 2.5 KB, about ten 256-byte pages


def _root():
    # this file is <root>/firmware/tests/host/powercut_writer.py
    parts = sys.argv[0].replace("\\", "/").split("/")
    return "/".join(parts[:-4]) or "."


def fresh_state():
    return {"commit_no": 0, "balance_paise": OPENING_PAISE, "opening": OPENING_PAISE,
            "topups": 0, "charges": 0, "recent_topup_ids": []}


def main():
    sys.path.insert(0, _root())
    from boards.unix.flash import FileSlots
    from firmware.core.journal import Journal

    directory, seed = sys.argv[1], int(sys.argv[2])
    random.seed(seed)
    journal = Journal(FileSlots(directory), max_payload=8192)
    payload = journal.load()
    state = json.loads(payload) if payload is not None else fresh_state()
    report = {"state": state, "slot": journal.slot, "sequence": journal.sequence,
              "reasons": journal.slot_reasons}
    print("RESTORED " + json.dumps(report))
    flush = getattr(sys.stdout, "flush", None)
    if flush:
        flush()
    while True:
        n = state["commit_no"] + 1
        if state["balance_paise"] < 5000 or random.getrandbits(1):
            amount = random.randrange(1000, 200000)  # Rs 10 .. Rs 2,000 recharge
            state["balance_paise"] += amount
            state["topups"] += amount
            ids = state["recent_topup_ids"]
            ids.append("UPI-%08d-%06d" % (n, amount))
            if len(ids) > RECENT_IDS:
                ids.pop(0)
        else:
            amount = random.randrange(1, 5000)  # one interval's energy charge
            state["balance_paise"] -= amount
            state["charges"] += amount
        state["commit_no"] = n
        journal.commit(json.dumps(state).encode(), int(time.time()))
        print("COMMITTED %d %d" % (n, state["balance_paise"]))
        if flush:
            flush()


main()
