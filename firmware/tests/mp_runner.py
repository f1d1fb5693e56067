# Runs one dual-runtime test module inside MicroPython and prints one JSON
# line per test, for the pytest plugin in conftest.py to read back.
#   micropython firmware/tests/mp_runner.py firmware.tests.test_x [test_name ...]
import sys
import io
import json
import gc
import time

MARK = "@@URJA-TEST "


def _root():
    # this file is <root>/firmware/tests/mp_runner.py
    here = sys.argv[0]
    parts = here.replace("\\", "/").split("/")
    return "/".join(parts[:-3]) or "."


def main():
    sys.path.insert(0, _root())
    modname = sys.argv[1]
    wanted = sys.argv[2:]
    mod = __import__(modname)
    for part in modname.split(".")[1:]:
        mod = getattr(mod, part)
    names = wanted or sorted(n for n in dir(mod) if n.startswith("test_"))
    for name in names:
        fn = getattr(mod, name, None)
        result = {"name": name, "ok": False, "error": "", "ms": 0}
        if fn is None:
            result["error"] = "no such test in module"
        else:
            gc.collect()
            t0 = time.ticks_ms()
            try:
                fn()
                result["ok"] = True
            except Exception as err:  # report every failure, keep running the rest
                buf = io.StringIO()
                sys.print_exception(err, buf)
                result["error"] = buf.getvalue()
            result["ms"] = time.ticks_diff(time.ticks_ms(), t0)
        print(MARK + json.dumps(result))


main()
