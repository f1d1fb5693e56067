"""urja-flash: exact command lines (dry run), a real build, ports, and every error path.

No board is attached here, so esptool and mpremote are never run against
hardware: flashing and deploying are checked through ``--dry-run`` and through
the checks that stop before any command runs.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

from tools import flash
from tools.build import ROOT

PY = sys.executable  # commands run as `<python> -m esptool` / `<python> -m mpremote`


def fake_port(device, vid=None, pid=None, description="n/a"):
    port = ListPortInfo(device)
    port.vid, port.pid, port.description = vid, pid, description
    port.hwid = "USB VID:PID=%04X:%04X" % (vid, pid) if vid is not None else "n/a"
    return port


@pytest.fixture
def no_ports(monkeypatch):
    monkeypatch.setattr(list_ports, "comports", lambda *a, **k: [])


@pytest.fixture
def one_cp2102(monkeypatch):
    # 10c4:ea60 is "CP210x UART Bridge" in usb.ids (linux-usb.org)
    port = fake_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102 USB to UART Bridge Controller")
    monkeypatch.setattr(list_ports, "comports", lambda *a, **k: [port])


@pytest.fixture
def esp_bin(tmp_path):
    # An ESP image starts with the magic byte 0xE9 (esptool docs, "Firmware Image Format").
    path = tmp_path / "ESP32_GENERIC-v1.29.bin"
    path.write_bytes(b"\xe9\x03\x02\x20" + bytes(60))
    return path


def run_main(capsys, *argv):
    code = flash.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def files_under(folder):
    return [pathlib.Path(d) / f for d, _, names in os.walk(folder) for f in names]


# --- build -------------------------------------------------------------------

def test_build_reports_the_file_count_and_bytes_that_are_on_disk(tmp_path, capsys):
    image = tmp_path / "image"
    code, out, _ = run_main(capsys, "build", "--out", str(image), "--json")
    report = json.loads(out)
    on_disk = files_under(image)  # counted independently of the tool
    assert code == 0
    assert report["files"] == len(on_disk)
    assert report["bytes"] == sum(p.stat().st_size for p in on_disk)
    assert sum(report["by_folder"].values()) == report["bytes"]
    assert (image / "firmware" / "core" / "meter.mpy").read_bytes()[:1] == b"M"
    assert report["romfs"] is None


def test_build_with_romfs_writes_a_romfs_image_holding_the_firmware(tmp_path, capsys):
    image, romfs = tmp_path / "image", tmp_path / "urja.romfs"
    code, out, _ = run_main(capsys, "build", "--out", str(image), "--romfs", str(romfs), "--json")
    report = json.loads(out)
    data = romfs.read_bytes()
    assert code == 0
    # ROMFS header d2 cd 31 (mpremote romfs.py, VfsRomWriter.ROMFS_HEADER)
    assert data[:3] == b"\xd2\xcd\x31"
    assert report["romfs_bytes"] == len(data)
    assert b"meter.mpy" in data and b"wroom32.json" in data


def test_build_text_output_names_sizes_per_folder(tmp_path, capsys):
    code, out, _ = run_main(capsys, "build", "--out", str(tmp_path / "image"))
    assert code == 0
    assert out.startswith("image %s: " % (tmp_path / "image"))
    assert "  firmware/core " in out


def test_build_removes_stale_bytecode_of_deleted_modules(tmp_path, capsys):
    image = tmp_path / "image"
    (image / "firmware" / "core").mkdir(parents=True)
    (image / "firmware" / "core" / "gone.mpy").write_bytes(b"M old module")
    code, out, _ = run_main(capsys, "build", "--out", str(image), "--json")
    assert code == 0
    assert json.loads(out)["stale_removed"] == ["firmware/core/gone.mpy"]
    assert not (image / "firmware" / "core" / "gone.mpy").exists()


def test_build_refuses_an_out_folder_inside_the_sources(capsys):
    code, _, err = run_main(capsys, "build", "--out", str(ROOT / "firmware" / "img"))
    assert code == 2
    assert "would overwrite the sources" in err
    assert not (ROOT / "firmware" / "img").exists()


def test_build_dry_run_lists_compiles_and_the_romfs_command_and_writes_nothing(tmp_path, capsys):
    image, romfs = tmp_path / "image", tmp_path / "urja.romfs"
    code, out, _ = run_main(capsys, "build", "--out", str(image), "--romfs", str(romfs), "--dry-run")
    lines = out.splitlines()
    assert code == 0
    assert "would compile firmware/core/meter.py -> %s" % (image / "firmware/core/meter.mpy") in lines
    assert lines[-1] == "%s -m mpremote romfs --no-mpy -o %s build %s" % (PY, romfs, image)
    assert not image.exists() and not romfs.exists()


# --- flash-micropython -------------------------------------------------------

def test_flash_dry_run_erases_then_writes_at_0x1000_for_esp32(esp_bin, capsys):
    # MicroPython's ESP32 instructions: erase, then write_flash -z 0x1000 at 460800 baud;
    # esptool v5 spells the commands erase-flash / write-flash (v5 migration guide).
    code, out, _ = run_main(capsys, "flash-micropython", "--port", "/dev/ttyUSB0",
                            "--firmware", str(esp_bin), "--erase", "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "%s -m esptool --chip esp32 --port /dev/ttyUSB0 erase-flash" % PY,
        "%s -m esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash -z 0x1000 %s"
        % (PY, esp_bin),
    ]


def test_flash_without_erase_is_one_write_with_the_given_baud(esp_bin, capsys):
    code, out, _ = run_main(capsys, "flash-micropython", "--port", "COM5", "--firmware", str(esp_bin),
                            "--baud", "921600", "--dry-run")
    assert code == 0
    assert out.splitlines() == [
        "%s -m esptool --chip esp32 --port COM5 --baud 921600 write-flash -z 0x1000 %s" % (PY, esp_bin)]


def test_flash_writes_esp32s3_and_esp32c3_images_at_offset_zero(esp_bin, capsys):
    # bootloader offset 0x0 on S3/C3 (esptool firmware-image-format.rst; micropython issue 8100)
    for chip in ("esp32s3", "esp32c3"):
        code, out, _ = run_main(capsys, "flash-micropython", "--port", "/dev/ttyACM0", "--chip", chip,
                                "--firmware", str(esp_bin), "--dry-run")
        assert code == 0
        assert out.split()[-2:] == ["0x0", str(esp_bin)]


def test_esptool_v4_uses_the_underscore_command_names():
    # esptool v4 CLI: write_flash / erase_flash (renamed with dashes in v5)
    assert flash.esptool_commands(4) == ("write_flash", "erase_flash")
    assert flash.esptool_commands(5) == ("write-flash", "erase-flash")


def test_installed_esptool_accepts_the_chosen_commands_without_deprecation_warnings():
    for command in flash.esptool_commands(flash.esptool_major()):
        proc = subprocess.run([PY, "-m", "esptool", command, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "deprecated" not in (proc.stdout + proc.stderr).lower()


def test_flash_rejects_a_file_that_is_not_an_esp_image(tmp_path, capsys):
    elf = tmp_path / "firmware.elf"
    elf.write_bytes(b"\x7fELF" + bytes(60))
    code, out, err = run_main(capsys, "flash-micropython", "--port", "/dev/ttyUSB0",
                              "--firmware", str(elf), "--dry-run")
    assert code == 2 and out == ""
    assert "not an ESP firmware image (first byte 7f, expected 0xe9)" in err


def test_flash_names_a_missing_firmware_file(tmp_path, capsys):
    code, _, err = run_main(capsys, "flash-micropython", "--port", "/dev/ttyUSB0",
                            "--firmware", str(tmp_path / "nope.bin"), "--dry-run")
    assert code == 2
    assert "firmware file %s not found" % (tmp_path / "nope.bin") in err


def test_flash_without_esptool_says_how_to_install_it(esp_bin, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "esptool", None)  # find_spec -> None: "not installed"
    code, out, err = run_main(capsys, "flash-micropython", "--port", "/dev/ttyUSB0",
                              "--firmware", str(esp_bin), "--dry-run")
    assert code == 3 and out == ""
    assert "esptool is not installed: pip install esptool" in err


def test_flash_to_an_unknown_port_lists_the_available_ones(esp_bin, capsys, one_cp2102):
    code, out, err = run_main(capsys, "flash-micropython", "--port", "/dev/ttyUSB9",
                              "--firmware", str(esp_bin))
    assert code == 2 and out == ""
    assert ("serial port /dev/ttyUSB9 not found; available ports: "
            "/dev/ttyUSB0 (CP2102 USB to UART Bridge Controller, likely ESP32)") in err


def test_flash_without_a_port_says_no_ports_were_found(esp_bin, capsys, no_ports):
    code, _, err = run_main(capsys, "flash-micropython", "--firmware", str(esp_bin), "--dry-run")
    assert code == 2
    assert "no --port given; no serial ports found" in err


def test_unknown_port_exit_code_reaches_the_shell(esp_bin):
    proc = subprocess.run([PY, "-m", "tools.flash", "flash-micropython", "--port", "/dev/urja-no-such-port",
                           "--firmware", str(esp_bin)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "serial port /dev/urja-no-such-port not found" in proc.stderr


# --- deploy ------------------------------------------------------------------

@pytest.fixture
def image(tmp_path):
    img = tmp_path / "image"
    (img / "firmware").mkdir(parents=True)
    (img / "boards").mkdir()
    return img


def test_deploy_dry_run_copies_image_board_file_entry_then_resets(image, tmp_path, capsys):
    stage = tmp_path / "stage"
    code, out, _ = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(image),
                            "--stage", str(stage), "--dry-run")
    mp = "%s -m mpremote connect /dev/ttyUSB0" % PY
    assert code == 0
    assert out.splitlines() == [
        # `cp -r DIR :` puts DIR itself in the device root (mpremote docs; micropython issue 17192)
        "%s fs cp -r %s %s :" % (mp, image / "firmware", image / "boards"),
        "%s fs cp %s :board.json" % (mp, ROOT / "boards" / "esp32" / "wroom32.json"),
        "%s fs cp %s :main.py" % (mp, stage / "main.py"),
        "%s reset" % mp,
    ]
    assert not stage.exists()  # a dry run writes nothing


def test_deploy_dry_run_with_romfs_deploys_the_romfs_partition(tmp_path, capsys):
    romfs = tmp_path / "urja.romfs"
    romfs.write_bytes(b"\xd2\xcd\x31" + bytes(13))
    code, out, _ = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--romfs", str(romfs),
                            "--stage", str(tmp_path / "stage"), "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == "%s -m mpremote connect /dev/ttyUSB0 romfs deploy %s" % (PY, romfs)
    assert out.splitlines()[1].endswith(" :board.json")


def test_deploy_takes_a_board_file_by_path(image, tmp_path, capsys):
    board = tmp_path / "my-board.json"
    shutil.copy(ROOT / "boards" / "esp32" / "wroom32.json", board)
    code, out, _ = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(image),
                            "--board", str(board), "--dry-run")
    assert code == 0
    assert out.splitlines()[1].endswith("fs cp %s :board.json" % board)


def test_deploy_refuses_a_board_file_for_the_unix_port(image, capsys):
    code, out, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(image),
                              "--board", "unix", "--dry-run")
    assert code == 2 and out == ""
    assert "is for the unix platform; deploy needs an esp32 board" in err


def test_deploy_refuses_an_invalid_board_file_with_the_schema_errors(image, tmp_path, capsys):
    board = tmp_path / "bad.json"
    config = json.loads((ROOT / "boards" / "esp32" / "wroom32.json").read_text())
    config["relay"]["close_pin"] = 34  # GPIO34 is input-only on the ESP32 (boards.schema's rule)
    board.write_text(json.dumps(config))
    code, _, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(image),
                            "--board", str(board), "--dry-run")
    assert code == 2
    assert "invalid board file %s" % board in err and "relay.close_pin" in err


def test_deploy_refuses_an_unknown_board_name(image, capsys):
    code, _, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(image),
                            "--board", "nano", "--dry-run")
    assert code == 2
    assert "unknown board 'nano'" in err


def test_deploy_refuses_a_folder_that_is_not_an_image(tmp_path, capsys):
    code, _, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(tmp_path),
                            "--dry-run")
    assert code == 2
    assert "is not an image (no firmware/ and boards/ inside)" in err


def test_deploy_refuses_a_file_that_is_not_a_romfs_image(tmp_path, capsys):
    bogus = tmp_path / "urja.romfs"
    bogus.write_bytes(b"PK\x03\x04")
    code, _, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--romfs", str(bogus), "--dry-run")
    assert code == 2
    assert "is not a ROMFS image" in err


def test_deploy_without_mpremote_says_how_to_install_it(image, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpremote", None)
    code, _, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB0", "--image", str(image), "--dry-run")
    assert code == 3
    assert "mpremote is not installed: pip install mpremote" in err


def test_deploy_to_an_unknown_port_lists_the_available_ones(image, capsys, one_cp2102):
    code, _, err = run_main(capsys, "deploy", "--port", "/dev/ttyUSB7", "--image", str(image))
    assert code == 2
    assert "serial port /dev/ttyUSB7 not found; available ports: /dev/ttyUSB0" in err


def test_generated_entry_starts_firmware_app_main_with_the_deployed_board_file(tmp_path):
    # A stand-in firmware.app.main records what the entry passes; run it in real micropython.
    app = tmp_path / "firmware" / "app"
    app.mkdir(parents=True)
    (tmp_path / "firmware" / "__init__.py").write_text("")
    (app / "__init__.py").write_text("")
    (app / "main.py").write_text("def main(board):\n    print('started with', board)\n")
    (tmp_path / "main.py").write_text(flash.ENTRY_SOURCE)
    exe = pathlib.Path(PY).parent / "micropython"
    proc = subprocess.run([str(exe), "main.py"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "started with /board.json"


# --- ports -------------------------------------------------------------------

def test_ports_with_no_devices_prints_an_empty_list_and_exits_0(capsys, no_ports):
    code, out, _ = run_main(capsys, "ports", "--json")
    assert code == 0
    assert json.loads(out) == []


def test_ports_text_says_none_found_when_empty(capsys, no_ports):
    code, out, _ = run_main(capsys, "ports")
    assert (code, out) == (0, "no serial ports found\n")


def test_ports_marks_the_usual_esp32_usb_bridges(capsys, monkeypatch):
    ESPRESSIF_VID = 0x303A  # Espressif's USB vendor id (esp_pylib.constants.ESPRESSIF_VID)
    ports = [
        fake_port("/dev/ttyS0"),                                     # on-board UART, no USB
        fake_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102"),         # usb.ids: Silicon Labs CP210x
        fake_port("/dev/ttyUSB1", 0x1A86, 0x7523, "USB Serial"),     # usb.ids: QinHeng HL-340/CH340
        fake_port("/dev/ttyUSB2", 0x0403, 0x6001, "FT232R"),         # usb.ids: FTDI FT232
        fake_port("/dev/ttyACM0", ESPRESSIF_VID, 0x1001, "USB JTAG/serial"),
        fake_port("/dev/ttyACM1", 0x2341, 0x0043, "Arduino Uno"),    # usb.ids: Arduino SA
    ]
    monkeypatch.setattr(list_ports, "comports", lambda *a, **k: ports)
    code, out, _ = run_main(capsys, "ports", "--json")
    marked = {p["device"]: bool(p["bridge"]) for p in json.loads(out)}
    assert code == 0
    assert marked == {"/dev/ttyS0": False, "/dev/ttyUSB0": True, "/dev/ttyUSB1": True,
                      "/dev/ttyUSB2": True, "/dev/ttyACM0": True, "/dev/ttyACM1": False}


def test_ports_without_pyserial_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)
    code, _, err = run_main(capsys, "ports")
    assert code == 3
    assert "pyserial is not installed: pip install pyserial" in err


def test_ports_runs_on_this_machine_and_prints_a_json_list():
    proc = subprocess.run([PY, "-m", "tools.flash", "ports", "--json"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)


def test_ports_dry_run_prints_nothing(capsys, one_cp2102):
    assert run_main(capsys, "ports", "--dry-run")[:2] == (0, "")


# --- help --------------------------------------------------------------------

@pytest.mark.parametrize("command", ["build", "flash-micropython", "deploy", "ports"])
def test_every_subcommand_help_shows_examples_and_exit_codes(command):
    proc = subprocess.run([PY, "-m", "tools.flash", command, "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0
    assert "examples:\n  urja-flash %s" % command in proc.stdout
    assert "--dry-run" in proc.stdout and "exit codes:" in proc.stdout


def test_deployed_entry_hands_main_the_board_file_not_a_version():
    # The entry urja-flash writes to main.py must bind to firmware.app.main.main's
    # signature with the board file in ``board`` (it once landed in ``version``).
    import ast
    import inspect

    from firmware.app import main as app_main

    calls = [n for n in ast.walk(ast.parse(flash.ENTRY_SOURCE))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "main"]
    assert len(calls) == 1
    call = calls[0]
    bound = inspect.signature(app_main.main).bind(
        *[ast.literal_eval(a) for a in call.args],
        **{k.arg: ast.literal_eval(k.value) for k in call.keywords})
    assert bound.arguments.get("board") == flash.BOARD_ON_DEVICE
    assert "version" not in bound.arguments  # the firmware's own FW_VERSION stays
