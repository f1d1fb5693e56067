"""The ESP32 HAL's logic on the host, against fakes of MicroPython's ``machine`` / ``esp32``.

No ESP32 here, so ``boards/esp32/*.py`` runs in CPython over small fakes that
follow the MicroPython port's documented behaviour (docs/library/esp32.rst,
ports/esp32/esp32_partition.c, machine.UART docs):

- ``esp32.Partition``: ``readblocks(block, buf, offset)`` /
  ``writeblocks(block, buf, offset)`` address ``block * 4096 + offset``;
  ``writeblocks`` with an offset never erases; ``ioctl(6, block)`` erases one
  4 KiB block.  The fake is stricter than NOR flash: programming a byte that
  is not erased raises (real flash would AND the bits silently), which proves
  the outbox only appends.  ``cut_after_bytes`` simulates a power cut.
- ``esp32.NVS``: blobs per (namespace, key); ``get_blob`` into a too-small
  buffer or of a missing key raises OSError.
- ``machine.UART``: ``any()``, ``read(n)``, ``write``, ``flush``.

What cannot be proven here (timing, the real flash chip, the real UART) is
for the HIL suite with ``--board esp32``.  The same files type-check against
the ESP32 stubs in ``firmware/tests/host/test_build_checks.py``.
"""
import csv
import importlib
import json
import pathlib
import sys
import types

import pytest

from boards import schema
from firmware.core.journal import Journal
from firmware.core.outbox import Outbox

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECTOR = 4096


# ----------------------------------------------------------------- fakes

class FakePartition:
    TYPE_APP = 0
    TYPE_DATA = 1
    BOOT = 0
    RUNNING = 1
    table: "list[FakePartition]" = []  # what Partition.find searches (set per test)

    def __init__(self, label, size, ptype=1, encrypted=False):
        self.label, self.size, self.ptype, self.encrypted = label, size, ptype, encrypted
        self.flash = bytearray(b"\xff" * size)
        self.erases = [0] * (size // SECTOR)
        self.programs = 0
        self.cut_after_bytes = None

    @staticmethod
    def find(type=0, subtype=0xFF, label=None):
        return [p for p in FakePartition.table if p.ptype == type and label in (None, p.label)]

    def info(self):
        return (self.ptype, 0x40, 0x310000, self.size, self.label, self.encrypted)

    def _span(self, block, n, offset):
        start = block * SECTOR + offset
        if block < 0 or offset < 0 or start + n > self.size:
            raise OSError(22, "outside partition %s" % self.label)  # ESP_ERR_INVALID_ARG
        return start

    def readblocks(self, block, buf, offset=0):
        start = self._span(block, len(buf), offset)
        buf[:] = self.flash[start:start + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # the aligned form erases first
            for b in range(block, block + len(buf) // SECTOR):
                self.ioctl(6, b)
            offset = 0
        start = self._span(block, len(buf), offset)
        if any(self.flash[start + i] != 0xFF for i in range(len(buf))):
            raise AssertionError("flash byte programmed twice in %s at %d" % (self.label, start))
        n = len(buf)
        cut = self.cut_after_bytes is not None and self.cut_after_bytes < n
        if self.cut_after_bytes is not None:
            n = min(n, self.cut_after_bytes)
            self.cut_after_bytes -= n
        self.flash[start:start + n] = bytes(buf[:n])
        self.programs += 1
        if cut:
            raise OSError(5, "power cut")

    def ioctl(self, op, arg=None):
        if op == 4:
            return self.size // SECTOR
        if op == 5:
            return SECTOR
        if op == 6:
            start = self._span(arg, SECTOR, 0)
            self.flash[start:start + SECTOR] = b"\xff" * SECTOR
            self.erases[arg] += 1
            return 0
        return None


class FakeNvs:
    store: "dict" = {}  # (namespace, key) -> bytes, the chip's NVS partition

    def __init__(self, namespace):
        if not 1 <= len(namespace) <= 15:
            raise ValueError("namespace %r" % namespace)
        self.namespace = namespace
        self.commits = 0

    def get_blob(self, key, buf):
        value = FakeNvs.store.get((self.namespace, key))
        if value is None:
            raise OSError(-0x1102, "ESP_ERR_NVS_NOT_FOUND")
        if len(value) > len(buf):
            raise OSError(-0x110C, "ESP_ERR_NVS_INVALID_LENGTH")
        buf[:len(value)] = value
        return len(value)

    def set_blob(self, key, value):
        FakeNvs.store[(self.namespace, key)] = bytes(value)

    def commit(self):
        self.commits += 1


class FakePin:
    IN, OUT, PULL_UP, PULL_DOWN = 1, 3, 2, 1

    def __init__(self, pin, mode=None, pull=None, value=None):
        self.pin, self.mode, self.level = pin, mode, value or 0

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v


class FakeUart:
    opened: "dict" = {}  # uart id -> FakeUart

    def __init__(self, uart_id, baudrate, tx, rx, timeout=None, timeout_char=None):
        self.id, self.baudrate, self.tx, self.rx = uart_id, baudrate, tx, rx
        self.timeouts = (timeout, timeout_char)
        self.rx_buf = bytearray()
        self.sent = bytearray()
        FakeUart.opened[uart_id] = self

    def any(self):
        return len(self.rx_buf)

    def read(self, n):
        out, self.rx_buf = bytes(self.rx_buf[:n]), self.rx_buf[n:]
        return out or None

    def write(self, data):
        self.sent += data
        return len(data)

    def flush(self):
        pass


class FakeCounter:
    RISING, FALLING = 1, 2

    def __init__(self, unit, pin, edge=None, filter_ns=0):
        self.count = 0

    def value(self):
        return self.count


class FakeRtc:
    def datetime(self, t=None):
        self.t = t


class FakeWdt:
    def __init__(self, timeout):
        self.timeout = timeout

    def feed(self):
        pass


@pytest.fixture
def chip(monkeypatch):
    """Fake ``machine`` / ``esp32`` modules, a fresh NVS and partition table; the ESP32
    board modules imported under them and forgotten afterwards."""
    machine = types.ModuleType("machine")
    machine.Pin, machine.UART, machine.Counter = FakePin, FakeUart, FakeCounter
    machine.RTC, machine.WDT = FakeRtc, FakeWdt
    esp32 = types.ModuleType("esp32")
    esp32.Partition, esp32.NVS = FakePartition, FakeNvs
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.setitem(sys.modules, "esp32", esp32)
    monkeypatch.setattr(FakeNvs, "store", {})
    monkeypatch.setattr(FakeUart, "opened", {})
    outbox = FakePartition("outbox", 16 * SECTOR)
    monkeypatch.setattr(FakePartition, "table", [outbox, FakePartition("ota_0", 64 * SECTOR, 0)])

    def forget():
        for name in [m for m in sys.modules if m.startswith("boards.esp32")]:
            del sys.modules[name]
    forget()
    ns = types.SimpleNamespace(outbox=outbox, hal=importlib.import_module("boards.esp32.hal"),
                               flash=importlib.import_module("boards.esp32.outbox_flash"))
    yield ns
    forget()


def wroom32(**over):
    board = schema.load(str(ROOT / "boards/esp32/wroom32.json"))
    board.update(over)
    return schema.validate(board)


def make(chip, **over):
    return chip.hal.make_board(wroom32(**over))


def fill(box, n, now=1795737600, ack_every=4):
    """Append ``n`` 100-byte messages, acking as a connected pump would."""
    seqs = []
    for i in range(n):
        seqs.append(box.append(bytes([i & 0xFF]) * 100, now))
        if len(seqs) % ack_every == 0:
            box.ack(seqs[-1], now)
    return seqs


# ----------------------------------------------------------------- CLI UART

def test_cli_uart_is_the_board_files_uart_and_pins_not_the_repl(chip):
    board = make(chip)
    cli = board.cli_uart()
    u = FakeUart.opened[1]
    assert (u.id, u.tx, u.rx, u.baudrate) == (1, 22, 23, 115200)
    assert board.cli_uart() is cli  # opened once
    assert FakeUart.opened[2].tx == 17  # RS485 keeps UART2
    assert 0 not in FakeUart.opened  # UART0 (the REPL) untouched


def test_cli_uart_reads_without_blocking_and_writes_replies(chip):
    cli = make(chip).cli_uart()
    assert cli.read(64) == b""
    FakeUart.opened[1].rx_buf += b"balance\r\n"
    assert cli.read(4) == b"bala"
    assert cli.read(64) == b"nce\r\n"
    assert cli.write(b"OK balance_paise=1\r\n") == 20
    assert FakeUart.opened[1].sent == b"OK balance_paise=1\r\n"


def test_board_without_cli_uart_has_none(chip):
    config = wroom32()
    del config["cli_uart"]
    assert chip.hal.make_board(config).cli_uart() is None


# ----------------------------------------------------------------- journal slots

def test_named_journals_use_separate_nvs_keys(chip):
    board = make(chip)
    for name in ("meter", "config", "outbox"):
        board.journal_slots(name).write(0, name.encode())
    assert FakeNvs.store == {("urja", "j0"): b"meter", ("urjacfg", "j0"): b"config",
                             ("urja", "o0"): b"outbox"}
    assert board.journal_slots("meter") is board.slots
    assert board.journal_slots("outbox").read(1) is None
    with pytest.raises(ValueError, match="no journal 'tariff'"):
        board.journal_slots("tariff")


def test_meter_journal_of_8_kb_round_trips_through_nvs(chip):
    # the app's meter journal may hold 8192 bytes (firmware/app/main.py METER_JOURNAL_BYTES)
    board = make(chip)
    j = Journal(board.slots, max_payload=8192)
    j.commit(b"x" * 8000, 1795737600)
    assert Journal(make(chip).slots, max_payload=8192).load() == b"x" * 8000


def test_outbox_cursor_slot_refuses_a_record_it_could_not_read_back(chip):
    slots = make(chip).journal_slots("outbox")
    with pytest.raises(OSError, match="capacity"):
        slots.write(0, b"y" * 65)
    assert ("urja", "o0") not in FakeNvs.store


# ----------------------------------------------------------------- outbox flash

def test_outbox_on_the_partition_appends_wraps_and_erases_every_sector_evenly(chip):
    board = make(chip)
    seg = board.outbox_segments()
    assert (seg.segment_count, seg.segment_size) == (16, 4096)
    box = Outbox(seg, board.journal_slots("outbox"), max_messages=1024)
    seqs = fill(box, 36 * 16 * 3)  # (4096 - 16) // 112 = 36 a sector: three laps of the ring
    assert seqs == list(range(1, 36 * 16 * 3 + 1))
    assert box.dropped_total == 0
    erases = chip.outbox.erases
    assert max(erases) - min(erases) <= 1 and sum(erases) >= 16 * 3, erases
    # one program per message plus one header per segment opened
    assert chip.outbox.programs == len(seqs) + sum(erases)


def test_outbox_on_the_partition_survives_a_reset_with_history_and_the_nvs_cursor(chip):
    box = Outbox(make(chip).outbox_segments(), make(chip).journal_slots("outbox"))
    fill(box, 100, ack_every=1000)  # nothing acked while filling
    box.ack(95, 1795737600)
    again = Outbox(make(chip).outbox_segments(), make(chip).journal_slots("outbox"))
    assert (again.next_seq, again.released, again.depth) == (101, 95, 5)
    assert [s for s, _ in again.peek(10)] == [96, 97, 98, 99, 100]
    assert again.history(40, 41, 5) == [(40, bytes([39]) * 100), (41, bytes([40]) * 100)]
    assert again.oldest_held == 1


def test_power_cut_mid_append_on_the_partition_leaves_a_torn_tail_that_is_skipped(chip):
    board = make(chip)
    box = Outbox(board.outbox_segments(), board.journal_slots("outbox"))
    fill(box, 5)
    chip.outbox.cut_after_bytes = 40  # of a 112-byte record
    with pytest.raises(OSError):
        box.append(b"z" * 100, 1795737600)
    chip.outbox.cut_after_bytes = None
    again = Outbox(board.outbox_segments(), board.journal_slots("outbox"))
    assert again.torn_tail and again.next_seq == 6
    # the fake raises on any byte programmed twice: the retry must go elsewhere
    assert again.append(b"z" * 100, 1795737600) == 6
    assert [s for s, _ in again.history(1, 6, 10)] == [1, 2, 3, 4, 5, 6]


def test_board_segments_count_comes_from_the_board_file_or_the_partition_size(chip):
    assert make(chip, outbox={"partition": "outbox", "segments": 4}).outbox_segments().segment_count == 4
    assert make(chip, outbox={"partition": "outbox"}).outbox_segments().segment_count == 16
    with pytest.raises(OSError, match="holds 16 sectors"):
        make(chip, outbox={"partition": "outbox", "segments": 17}).outbox_segments()


def test_missing_partition_names_the_partition_table_to_flash(chip):
    with pytest.raises(OSError, match="no data partition 'ob2'.*partitions-urja-4MiB.csv"):
        make(chip, outbox={"partition": "ob2"}).outbox_segments()
    # an app partition of that name is not a data partition
    with pytest.raises(OSError, match="no data partition 'ota_0'"):
        make(chip, outbox={"partition": "ota_0"}).outbox_segments()


def test_encrypted_partition_is_refused(chip):
    FakePartition.table[0].encrypted = True
    with pytest.raises(OSError, match="encrypted"):
        make(chip).outbox_segments()


def test_segment_access_outside_the_ring_is_an_oserror(chip):
    seg = make(chip, outbox={"partition": "outbox", "segments": 4}).outbox_segments()
    with pytest.raises(OSError):
        seg.write(4, 0, b"x")
    with pytest.raises(OSError):
        seg.write(0, 4090, b"1234567")
    with pytest.raises(OSError):
        seg.erase(-1)
    assert seg.read(0, 4090, 100) == b"\xff" * 6  # short read at the sector end


# ----------------------------------------------------------------- what the shell gets

def test_shell_parts_on_esp32_are_flash_nvs_cursor_and_the_cli_uart(chip):
    from firmware.app.platform import board_parts

    board = make(chip)
    parts = board_parts(board)
    assert parts.persistent is True
    assert isinstance(parts.outbox_segments, chip.flash.PartitionSegments)
    assert parts.outbox_slots.keys == ("o0", "o1")
    assert parts.cli is board.cli_uart()
    assert parts.dlms is None
    parts.config_slots.write(1, b"cfg")
    assert FakeNvs.store[("urjacfg", "j1")] == b"cfg"


def test_shell_keeps_the_outbox_in_ram_and_says_so_without_the_partition(chip, capsys):
    from firmware.app.platform import board_parts
    from firmware.core.outbox import RamSegments

    FakePartition.table = []  # a stock MicroPython partition table
    parts = board_parts(make(chip))
    assert parts.persistent is False
    assert isinstance(parts.outbox_segments, RamSegments)
    assert "outbox in RAM" in capsys.readouterr().out


# ----------------------------------------------------------------- the partition table

def test_partition_table_fits_4_mib_without_overlap_and_has_the_board_files_outbox():
    rows = []
    with open(ROOT / "boards/esp32/partitions-urja-4MiB.csv") as f:
        for row in csv.reader(line for line in f if line.strip() and not line.startswith("#")):
            name, ptype, subtype, offset, size = [c.strip() for c in row[:5]]
            rows.append((name, ptype, subtype, int(offset, 16), int(size, 16)))
    end = 0x9000  # after the bootloader and the partition table (ESP-IDF default offsets)
    for name, ptype, _, offset, size in rows:
        assert offset >= end, "%s overlaps the partition before it" % name
        # ESP-IDF: app partitions on 64 KiB boundaries, data on 4 KiB sectors
        assert offset % (0x10000 if ptype == "app" else 0x1000) == 0, name
        assert size % 0x1000 == 0, name
        end = offset + size
    assert end <= 4 * 1024 * 1024
    by_name = {r[0]: r for r in rows}
    label = json.loads((ROOT / "boards/esp32/wroom32.json").read_text())["outbox"]["partition"]
    _, ptype, subtype, _, size = by_name[label]
    assert ptype == "data" and 0x40 <= int(subtype, 16) <= 0xFE  # a custom data subtype
    assert size // 0x1000 >= 16
    assert {"ota_0", "ota_1", "otadata", "nvs"} <= set(by_name)  # OTA and NVS still there
