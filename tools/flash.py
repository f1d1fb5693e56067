"""urja-flash: build the meter image, flash MicroPython, deploy the image to a board.

Wraps three tools so a firmware engineer types one command per step:
``tools.build`` (mpy-cross) for the image, ``esptool`` for the MicroPython
binary, ``mpremote`` for files and ROMFS.  ``--dry-run`` prints the exact
commands, one per line, and runs nothing.

    urja-flash build --out out/image --romfs out/urja.romfs
    urja-flash flash-micropython --port /dev/ttyUSB0 --firmware ESP32_GENERIC-v1.29.bin --erase
    urja-flash deploy --port /dev/ttyUSB0 --image out/image --board wroom32
    urja-flash ports --json
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys

from tools.build import ROOT, build_image

EXIT_OK = 0
EXIT_STEP_FAILED = 1    # mpy-cross, esptool or mpremote returned an error
EXIT_USAGE = 2          # bad arguments: no/unknown port, missing or wrong file, bad board file
EXIT_TOOL_MISSING = 3   # esptool / mpremote / pyserial not installed

EXIT_CODES_HELP = ("exit codes: 0 ok (or dry run), 1 a step failed (see its output), "
                   "2 bad arguments (port, file, board), 3 a required tool is not installed")

# Where the merged MicroPython .bin starts: the second-stage bootloader offset.
# Source: esptool docs, advanced-topics/firmware-image-format.rst,
# IDF_TARGET_BOOTLOADER_OFFSET (default 0x0, esp32 0x1000, esp32s2 0x1000, esp32p4 0x2000).
BOOTLOADER_OFFSET = {
    "esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0,
    "esp32c3": 0x0, "esp32c6": 0x0, "esp32p4": 0x2000,
}
# First byte of every ESP application/bootloader image (esptool docs, same page).
ESP_IMAGE_MAGIC = 0xE9
ROMFS_HEADER = b"\xd2\xcd\x31"  # mpremote.romfs.VfsRomWriter.ROMFS_HEADER

# USB vendor ids of the bridges ESP32 boards carry (usb.ids, linux-usb.org;
# Espressif's from esp_pylib.constants.ESPRESSIF_VID).
USB_BRIDGES = {
    0x10C4: "CP210x (Silicon Labs)",
    0x1A86: "CH340/CH9102 (QinHeng)",
    0x0403: "FTDI",
    0x303A: "Espressif native USB",
}

DEFAULT_IMAGE = ROOT / "out" / "image"
DEFAULT_STAGE = ROOT / "out" / "deploy"
BOARD_ON_DEVICE = "/board.json"

# The boot entry deployed as /main.py.  It hands firmware.app.main.main the
# board file deployed with it: an ESP32 has no environment variables, so the
# board cannot come from URJA_BOARD there (main(board) is asked of the app).
ENTRY_SOURCE = '''# Urja meter entry, written by `urja-flash deploy`.
# The firmware runs from /rom (ROMFS) or /firmware (.mpy files); the board
# file deployed with it is /board.json.
from firmware.app.main import main

main(board="%s")
''' % BOARD_ON_DEVICE


class FlashError(Exception):
    """A failure with the exit code ``code`` and a message that says what to do.

    >>> raise FlashError(EXIT_USAGE, "serial port /dev/ttyUSB9 not found")
    """

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# --- tools -------------------------------------------------------------------

INSTALL_HINT = {
    "esptool": "pip install esptool",
    "mpremote": "pip install mpremote",
    "serial": "pip install pyserial",
}


def require(module):
    """Raise FlashError(EXIT_TOOL_MISSING) with the pip command when ``module`` is absent."""
    if importlib.util.find_spec(module) is None:
        name = "pyserial" if module == "serial" else module
        raise FlashError(EXIT_TOOL_MISSING, "%s is not installed: %s (or pip install -e '.[dev]')"
                         % (name, INSTALL_HINT[module]))


def esptool_commands(major):
    """esptool's (write, erase) command names: v5 renamed ``write_flash`` to ``write-flash``.

    >>> esptool_commands(4)
    ('write_flash', 'erase_flash')
    """
    if major >= 5:
        return "write-flash", "erase-flash"
    return "write_flash", "erase_flash"


def esptool_major():
    require("esptool")
    version = importlib.metadata.version("esptool")
    return int(version.split(".")[0])


def python_module(name):
    return [sys.executable, "-m", name]


# --- serial ports ------------------------------------------------------------

def bridge_of(vid):
    """The USB bridge name for a vendor id, or "" when not a usual ESP32 bridge.

    >>> bridge_of(0x10C4)
    'CP210x (Silicon Labs)'
    """
    return USB_BRIDGES.get(vid, "") if vid is not None else ""


def list_ports():
    """Serial ports as dicts: device, description, hwid, vid, pid, bridge."""
    require("serial")
    from serial.tools import list_ports as lp  # type: ignore[import-untyped]
    out = []
    for p in sorted(lp.comports(), key=lambda p: p.device):
        out.append({"device": p.device, "description": p.description, "hwid": p.hwid,
                    "vid": p.vid, "pid": p.pid, "bridge": bridge_of(p.vid)})
    return out


def ports_hint():
    """One line naming the ports a user could mean."""
    try:
        ports = list_ports()
    except FlashError:
        return "cannot list ports: pyserial is not installed (pip install pyserial)"
    if not ports:
        return ("no serial ports found: plug the board in with a data USB cable "
                "and check the CP210x/CH340 driver")
    return "available ports: " + ", ".join(
        "%s (%s%s)" % (p["device"], p["description"], ", likely ESP32" if p["bridge"] else "")
        for p in ports)


def check_port(port, dry_run):
    """The port to use; a missing or unknown port is a usage error naming the real ones."""
    if not port:
        raise FlashError(EXIT_USAGE, "no --port given; " + ports_hint())
    if dry_run or "://" in port:  # dry runs touch no hardware; rfc2217:// etc. are URLs
        return port
    try:
        known = {p["device"] for p in list_ports()}
    except FlashError:
        known = set()
    if port not in known and not os.path.exists(port):
        raise FlashError(EXIT_USAGE, "serial port %s not found; %s" % (port, ports_hint()))
    return port


# --- running -----------------------------------------------------------------

def run(commands, dry_run, out=print):
    """Print (dry run) or run each argv in order; stop at the first failure."""
    for cmd in commands:
        if dry_run:
            out(shlex.join(str(c) for c in cmd))
            continue
        proc = subprocess.run([str(c) for c in cmd])
        if proc.returncode != 0:
            raise FlashError(EXIT_STEP_FAILED, "step failed (exit %d): %s"
                             % (proc.returncode, shlex.join(str(c) for c in cmd)))


# --- build -------------------------------------------------------------------

def romfs_command(image, romfs):
    """``mpremote romfs build`` of the image folder, .mpy files kept as they are."""
    return python_module("mpremote") + ["romfs", "--no-mpy", "-o", str(romfs), "build", str(image)]


def _check_out(out):
    out = pathlib.Path(out).resolve()
    for src in (ROOT, ROOT / "firmware", ROOT / "boards"):
        if out == src or src in out.parents and src != ROOT:
            raise FlashError(EXIT_USAGE, "--out %s would overwrite the sources; use out/image" % out)
    return out


def remove_stale(image, written):
    """Delete .mpy files a previous build left for modules that no longer exist."""
    keep = {pathlib.Path(p).resolve() for p in written}
    stale = []
    for pkg in ("firmware", "boards"):
        for path in sorted((image / pkg).rglob("*.mpy")):
            if path.resolve() not in keep:
                path.unlink()
                stale.append(path.relative_to(image).as_posix())
    return stale


def image_sizes(image, files):
    """{"folder": bytes} for every folder of the image, e.g. "firmware/core"."""
    sizes = {}
    for f in files:
        folder = pathlib.Path(f).parent.relative_to(image).as_posix()
        sizes[folder] = sizes.get(folder, 0) + pathlib.Path(f).stat().st_size
    return dict(sorted(sizes.items()))


def cmd_build(args):
    image = _check_out(args.out)
    if args.romfs:
        require("mpremote")
    if args.dry_run:
        build_image(image, dry_run=True, log=print)
        if args.romfs:
            run([romfs_command(image, args.romfs)], dry_run=True)
        return EXIT_OK
    files = build_image(image, log=lambda *_: None)
    report = {"image": str(image), "files": len(files),
              "bytes": sum(pathlib.Path(f).stat().st_size for f in files),
              "by_folder": image_sizes(image, files),
              "stale_removed": remove_stale(image, files),
              "romfs": None, "romfs_bytes": None}
    if args.romfs:
        romfs = pathlib.Path(args.romfs).resolve()
        romfs.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(romfs_command(image, romfs), capture_output=True, text=True)
        if proc.returncode != 0:
            raise FlashError(EXIT_STEP_FAILED, "mpremote romfs build failed:\n%s%s"
                             % (proc.stdout, proc.stderr))
        report["romfs"] = str(romfs)
        report["romfs_bytes"] = romfs.stat().st_size
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK
    print("image %s: %d files, %d bytes" % (report["image"], report["files"], report["bytes"]))
    for folder, size in report["by_folder"].items():
        print("  %-20s %7d" % (folder, size))
    if report["stale_removed"]:
        print("removed %d stale files: %s" % (len(report["stale_removed"]),
                                              " ".join(report["stale_removed"])))
    if args.romfs:
        print("romfs %s: %d bytes" % (report["romfs"], report["romfs_bytes"]))
    return EXIT_OK


# --- flash-micropython -------------------------------------------------------

def check_firmware(path):
    """The .bin must exist and start with the ESP image magic (not a .elf, .uf2 or .hex)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FlashError(EXIT_USAGE, "firmware file %s not found (download the .bin for your "
                         "board from micropython.org/download)" % path)
    with open(path, "rb") as f:
        first = f.read(1)
    if first != bytes([ESP_IMAGE_MAGIC]):
        raise FlashError(EXIT_USAGE, "%s is not an ESP firmware image (first byte %s, expected 0xe9): "
                         "use the .bin file, not .elf/.uf2/.hex" % (path, first.hex() or "empty"))
    return path


def flash_commands(port, firmware, chip="esp32", baud=460800, erase=False, major=5):
    """The esptool argv lists that put MicroPython on a board (erase first when asked).

    >>> flash_commands("/dev/ttyUSB0", "fw.bin")[0][-5:]
    ['--baud', '460800', 'write-flash', '-z', '0x1000']
    """
    write, erase_cmd = esptool_commands(major)
    base = python_module("esptool") + ["--chip", chip, "--port", port]
    cmds = [base + [erase_cmd]] if erase else []
    cmds.append(base + ["--baud", str(baud), write, "-z", hex(BOOTLOADER_OFFSET[chip]), str(firmware)])
    return cmds


def cmd_flash(args):
    major = esptool_major()
    port = check_port(args.port, args.dry_run)
    firmware = check_firmware(args.firmware)
    run(flash_commands(port, firmware, args.chip, args.baud, args.erase, major), args.dry_run)
    return EXIT_OK


# --- deploy ------------------------------------------------------------------

def board_file(name_or_path):
    """The local board file for ``--board`` (a short name or a .json path), validated for ESP32."""
    from boards import schema
    from boards.hal import BOARD_FILES
    if name_or_path.endswith(".json"):
        path = pathlib.Path(name_or_path)
    elif name_or_path in BOARD_FILES:
        path = ROOT / "boards" / BOARD_FILES[name_or_path]
    else:
        raise FlashError(EXIT_USAGE, "unknown board %r: give a .json path or one of %s"
                         % (name_or_path, ", ".join(sorted(BOARD_FILES))))
    try:
        config = schema.load(str(path))
    except OSError as err:
        raise FlashError(EXIT_USAGE, "board file %s: %s" % (path, err.strerror or err))
    except schema.BoardError as err:
        raise FlashError(EXIT_USAGE, str(err))
    if config["platform"] != "esp32":
        raise FlashError(EXIT_USAGE, "board file %s is for the %s platform; deploy needs an esp32 board"
                         % (path, config["platform"]))
    return path


def check_image(image):
    image = pathlib.Path(image)
    if not (image / "firmware").is_dir() or not (image / "boards").is_dir():
        raise FlashError(EXIT_USAGE, "%s is not an image (no firmware/ and boards/ inside): "
                         "run urja-flash build --out %s" % (image, image))
    return image


def check_romfs(romfs):
    romfs = pathlib.Path(romfs)
    if not romfs.is_file():
        raise FlashError(EXIT_USAGE, "ROMFS image %s not found: run urja-flash build --romfs %s"
                         % (romfs, romfs))
    with open(romfs, "rb") as f:
        if f.read(3) != ROMFS_HEADER:
            raise FlashError(EXIT_USAGE, "%s is not a ROMFS image (no d2:cd:31 header)" % romfs)
    return romfs


def deploy_commands(port, board, entry, image=None, romfs=None):
    """The mpremote argv lists: firmware (files or ROMFS), board file, boot entry, reset.

    ``cp -r DIR :`` copies DIR itself into the device's root (mpremote's cp
    follows Unix cp; micropython/micropython issue 17192).
    """
    mp = python_module("mpremote") + ["connect", port]
    if romfs is not None:
        cmds = [mp + ["romfs", "deploy", str(romfs)]]
    else:
        cmds = [mp + ["fs", "cp", "-r", str(pathlib.Path(image) / "firmware"),
                      str(pathlib.Path(image) / "boards"), ":"]]
    cmds.append(mp + ["fs", "cp", str(board), ":" + BOARD_ON_DEVICE.lstrip("/")])
    cmds.append(mp + ["fs", "cp", str(entry), ":main.py"])
    cmds.append(mp + ["reset"])
    return cmds


def cmd_deploy(args):
    require("mpremote")
    port = check_port(args.port, args.dry_run)
    board = board_file(args.board)
    if args.romfs:
        image, romfs = None, check_romfs(args.romfs)
    else:
        image, romfs = check_image(args.image or DEFAULT_IMAGE), None
    entry = pathlib.Path(args.stage) / "main.py"
    if not args.dry_run:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(ENTRY_SOURCE)
    run(deploy_commands(port, board, entry, image, romfs), args.dry_run)
    return EXIT_OK


# --- ports -------------------------------------------------------------------

def cmd_ports(args):
    ports = list_ports()
    if args.dry_run:  # listing runs no command, so there is nothing to print
        return EXIT_OK
    if args.json:
        print(json.dumps(ports, indent=1))
        return EXIT_OK
    if not ports:
        print("no serial ports found")
        return EXIT_OK
    for p in ports:
        mark = "  <- likely ESP32 (%s)" % p["bridge"] if p["bridge"] else ""
        print("%-16s %s%s" % (p["device"], p["description"], mark))
    return EXIT_OK


# --- command line ------------------------------------------------------------

def _sub(subs, name, help_text, examples):
    return subs.add_parser(name, help=help_text, description=help_text,
                           epilog="examples:\n" + examples + "\n\n" + EXIT_CODES_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def parser():
    top = argparse.ArgumentParser(
        prog="urja-flash", description=__doc__.split("\n")[0],
        epilog="examples:\n"
               "  urja-flash build --romfs out/urja.romfs\n"
               "  urja-flash flash-micropython --port /dev/ttyUSB0 --firmware ESP32_GENERIC.bin --erase\n"
               "  urja-flash deploy --port /dev/ttyUSB0 --image out/image\n"
               "  urja-flash ports\n"
               "  urja-flash deploy --port /dev/ttyUSB0 --dry-run   # print the commands only\n\n"
               + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(subs, "build", "compile the firmware into an image folder (.mpy) and optionally a ROMFS image",
             "  urja-flash build                         # out/image\n"
             "  urja-flash build --out out/image --romfs out/urja.romfs\n"
             "  urja-flash build --json                  # sizes as JSON\n"
             "  urja-flash build --dry-run               # list what would be compiled")
    p.add_argument("--out", default=str(DEFAULT_IMAGE), help="image folder (default out/image)")
    p.add_argument("--romfs", metavar="FILE", help="also write a ROMFS image of the folder here")
    p.set_defaults(func=cmd_build)

    p = _sub(subs, "flash-micropython", "write the MicroPython firmware .bin to the board with esptool",
             "  urja-flash flash-micropython --port /dev/ttyUSB0 --firmware ESP32_GENERIC-v1.29.bin\n"
             "  urja-flash flash-micropython --port COM5 --firmware fw.bin --erase --baud 921600\n"
             "  urja-flash flash-micropython --port /dev/ttyACM0 --chip esp32s3 --firmware s3.bin\n"
             "  urja-flash flash-micropython --port /dev/ttyUSB0 --firmware fw.bin --dry-run")
    p.add_argument("--port", help="serial port of the board (see: urja-flash ports)")
    p.add_argument("--firmware", required=True, metavar="FILE.bin", help="MicroPython .bin for the board")
    p.add_argument("--chip", default="esp32", choices=sorted(BOOTLOADER_OFFSET),
                   help="chip family (sets the flash offset; default esp32 -> 0x1000)")
    p.add_argument("--baud", type=int, default=460800, help="baud rate while flashing (default 460800)")
    p.add_argument("--erase", action="store_true", help="erase the whole flash first (wipes files and NVS)")
    p.set_defaults(func=cmd_flash)

    p = _sub(subs, "deploy", "copy the image (or a ROMFS image), the board file and main.py to the board",
             "  urja-flash deploy --port /dev/ttyUSB0                        # out/image, wroom32\n"
             "  urja-flash deploy --port /dev/ttyUSB0 --romfs out/urja.romfs\n"
             "  urja-flash deploy --port /dev/ttyUSB0 --board my-board.json\n"
             "  urja-flash deploy --port /dev/ttyUSB0 --dry-run\n"
             "the board file goes to /board.json, the entry (written to --stage) to /main.py")
    p.add_argument("--port", help="serial port of the board (see: urja-flash ports)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", metavar="DIR", help="image folder from `build` (default out/image)")
    src.add_argument("--romfs", metavar="FILE", help="ROMFS image from `build --romfs`")
    p.add_argument("--board", default="wroom32", help="board name or .json file (default wroom32)")
    p.add_argument("--stage", default=str(DEFAULT_STAGE),
                   help="folder where the generated main.py is written (default out/deploy)")
    p.set_defaults(func=cmd_deploy)

    p = _sub(subs, "ports", "list serial ports, marking likely ESP32 USB bridges",
             "  urja-flash ports\n  urja-flash ports --json")
    p.set_defaults(func=cmd_ports)

    for sp in subs.choices.values():
        sp.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
        sp.add_argument("--json", action="store_true", help="print data (sizes, ports) as JSON")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except FlashError as err:
        print("urja-flash: %s" % err, file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
