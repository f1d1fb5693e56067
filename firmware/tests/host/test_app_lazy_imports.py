"""A meter loads only the code its configuration uses (issue 4: the app in a 128 KB heap).

Checked in a fresh ``micropython`` process each time, where ``sys.modules`` is
exactly what the app imported: the Modbus stack only with an SDM reader, the
DLMS stack only with a DLMS reader, neither, nor the CLI or the STS acceptor,
just by importing the app.
"""
import json
import pathlib
import subprocess

from firmware.tests.host.mpproc import micropython_command

ROOT = pathlib.Path(__file__).resolve().parents[3]

SCRIPT = r"""
import sys, json
sys.path.insert(0, %r)
import firmware.app.main


class Uart:
    baud = 9600

    def read(self, n):
        return b""

    def write(self, data):
        return len(data)


which = sys.argv[1]
if which == "sdm":
    from firmware.app.sdm_reader import SdmReader
    SdmReader(Uart(), 1, lambda: 0)
elif which == "dlms":
    from firmware.app.dlms_reader import DlmsReader
    DlmsReader(Uart(), lambda: 0)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("firmware"))))
"""

MODBUS = {"firmware.protocol.modbus", "firmware.protocol.sdm", "firmware.protocol.crc16"}
DLMS = {"firmware.protocol.hdlc", "firmware.protocol.dlms", "firmware.protocol.dlms_data",
        "firmware.protocol.dlms_objects", "firmware.protocol.dlms_client"}
RARE = {"firmware.app.cli", "firmware.app.downlinks", "firmware.app.config",
        "firmware.app.sdm_reader", "firmware.app.dlms_reader", "firmware.sts.acceptor", "firmware.sts.codec", "firmware.core.ota"}


def _loaded(tmp_path, which):
    script = tmp_path / "lazy.py"
    script.write_text(SCRIPT % str(ROOT))
    proc = subprocess.run([micropython_command(), str(script), which], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_the_app_loads_no_reader_stack_cli_config_or_sts(tmp_path):
    loaded = _loaded(tmp_path, "none")
    assert "firmware.app.main" in loaded
    assert not loaded & (MODBUS | DLMS | RARE), sorted(loaded & (MODBUS | DLMS | RARE))


def test_an_sdm_reader_loads_modbus_and_no_dlms(tmp_path):
    loaded = _loaded(tmp_path, "sdm")
    assert MODBUS <= loaded, sorted(MODBUS - loaded)
    assert not loaded & (DLMS | {"firmware.app.dlms_reader"}), sorted(loaded & DLMS)


def test_a_dlms_reader_loads_dlms_and_no_modbus(tmp_path):
    loaded = _loaded(tmp_path, "dlms")
    assert DLMS <= loaded, sorted(DLMS - loaded)
    assert not loaded & (MODBUS | {"firmware.app.sdm_reader"}), sorted(loaded & MODBUS)
