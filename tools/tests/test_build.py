import subprocess
import sys

from tools.build import build_image


def test_image_holds_bytecode_and_board_files_only(tmp_path):
    files = build_image(tmp_path / "img", log=lambda *_: None)
    names = {p.relative_to(tmp_path / "img").as_posix() for p in files}
    assert "firmware/core/meter.mpy" in names
    assert "boards/esp32/wroom32.json" in names
    assert not any("/tests/" in n or n.endswith(".py") for n in names)
    assert (tmp_path / "img" / "firmware" / "core" / "credit.mpy").read_bytes()[:1] == b"M"


def test_dry_run_writes_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tools.build", str(tmp_path / "img"), "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    assert "would compile firmware/core/meter.py" in out
    assert not (tmp_path / "img").exists()


def test_bytecode_names_its_source_by_module_name_only(tmp_path):
    # the module name is interned by the import anyway; a path would be one more
    # never-freed name per module on the meter's heap
    build_image(tmp_path / "img", log=lambda *_: None)
    data = (tmp_path / "img" / "firmware" / "core" / "credit.mpy").read_bytes()
    assert b"firmware/core/credit.py" not in data
    # .mpy v6: 4-byte header, qstr and object counts (varints), then the source name
    # first: its length << 1, the bytes, a NUL
    pos = 4
    for _ in range(2):
        while data[pos] & 0x80:
            pos += 1
        pos += 1
    assert data[pos:pos + 8] == b"\x0ccredit\x00"
