"""OTA on the unix board, end to end: real ``micropython`` processes boot
through the selector (``boards/unix/ota_dirs.py``), download a packed image,
switch, confirm or fail to, and get killed mid-download.

Images are what a board gets: ``tools.build`` output (.mpy) plus a ``main.py``
written here that prints its version, runs a self-test, confirms, and plays
the downlink (chunks read from a file).  The manifest's SHA-256 comes from
CPython's hashlib, independent of MicroPython's that the meter uses.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

from boards.unix.ota_dirs import pack_image
from tools.build import build_image

ROOT = pathlib.Path(__file__).resolve().parents[3]
SELECTOR = ROOT / "boards" / "unix" / "ota_dirs.py"
CHUNK = 256
TIMEOUT_S = 60

MAIN_PY = '''\
import json
import sys
import time
from boards.unix.ota_dirs import OtaDirs
from firmware.core import ota

VERSION = "{version}"


def self_test():
    if not {selftest_ok}:
        raise RuntimeError("self-test failed: broker unreachable")


state_dir = sys.argv[1]
o = OtaDirs(state_dir)
print("VERSION", VERSION, "SLOT", o.boot.booted, "BOOT", ota.BOOT_NAMES[o.boot.last_boot])
print("UPDATE", o.update.state_name, o.update.reason_name)
self_test()
if o.confirm():
    print("CONFIRMED", VERSION)
args = sys.argv[2:]
if args and args[0] == "update":
    manifest = json.loads(open(args[1]).read())
    delay_ms = int(args[3]) if len(args) > 3 else 0
    print("BEGIN", ota.REASON_NAMES[o.begin(manifest)], o.update.next_index)
    f = open(args[2], "rb")
    for i in range(o.update.next_index, o.update.chunk_count):
        f.seek(i * manifest["chunk_size"])
        r = o.write_chunk(i, f.read(manifest["chunk_size"]))
        print("CHUNK", i, ota.REASON_NAMES[r])
        if delay_ms:
            time.sleep_ms(delay_ms)
    print("RESULT", o.update.state_name, o.update.reason_name)
    if o.update.state == ota.READY and "noinstall" not in args:  # noinstall: a cut before install
        print("INSTALL", ota.REASON_NAMES[o.install()])
'''


def micropython():
    exe = shutil.which("micropython", path=os.path.dirname(sys.executable)) or shutil.which("micropython")
    if not exe:
        pytest.fail("micropython not found: run through ./dev test", pytrace=False)
    return exe


# What an OTA-capable image needs.  Built from a copy of just these sources so
# that a colleague's half-edited module elsewhere cannot break this test.
IMAGE_SOURCES = ("firmware/__init__.py", "firmware/core/__init__.py", "firmware/core/ota.py",
                 "firmware/core/journal.py", "boards/__init__.py", "boards/hal.py",
                 "boards/unix/__init__.py", "boards/unix/flash.py", "boards/unix/ota_dirs.py")


@pytest.fixture(scope="module")
def firmware_build(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for rel in IMAGE_SOURCES:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("build") / "image"
    built = build_image(out, root=src, log=lambda *_: None)
    assert len(built) == len(IMAGE_SOURCES)
    return out


def make_image(base, dest, version, selftest_ok=True):
    shutil.copytree(base, dest)
    (dest / "main.py").write_text(MAIN_PY.format(version=version, selftest_ok=selftest_ok))
    return dest


def tree_digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


class Meter:
    """A unix-board meter: a state dir whose slot a/ holds the factory image v1."""

    def __init__(self, tmp_path, base):
        self.tmp = tmp_path
        self.state = tmp_path / "ota"
        self.state.mkdir()
        make_image(base, self.state / "a", "1.0.0")

    def boot_cmd(self, *args):
        return [micropython(), str(SELECTOR), str(self.state), *map(str, args)]

    def boot(self, *args):
        # cwd is a scratch dir so nothing but the selector path and the slot is importable
        return subprocess.run(self.boot_cmd(*args), cwd=self.tmp, capture_output=True,
                              text=True, timeout=TIMEOUT_S)

    def offer(self, image_dir, name="v2", corrupt=False):
        """Pack ``image_dir``, write blob + manifest files; ``corrupt`` flips a byte after hashing."""
        blob = bytearray(pack_image(str(image_dir)))
        manifest = {"version": name, "size": len(blob), "chunk_size": CHUNK,
                    "sha256": hashlib.sha256(blob).hexdigest()}
        if corrupt:
            blob[len(blob) // 2] ^= 0x01
        blob_path, manifest_path = self.tmp / (name + ".img"), self.tmp / (name + ".json")
        blob_path.write_bytes(bytes(blob))
        manifest_path.write_text(json.dumps(manifest))
        return manifest_path, blob_path, manifest


def lines(proc, prefix):
    return [ln for ln in proc.stdout.splitlines() if ln.startswith(prefix)]


def test_good_image_switches_and_the_second_boot_runs_and_confirms_the_new_version(tmp_path, firmware_build):
    m = Meter(tmp_path, firmware_build)
    manifest_path, blob_path, _ = m.offer(make_image(firmware_build, tmp_path / "v2", "2.0.0"))
    first = m.boot("update", manifest_path, blob_path)
    assert first.returncode == 0, first.stderr
    assert lines(first, "VERSION") == ["VERSION 1.0.0 SLOT a BOOT NORMAL"]
    assert lines(first, "RESULT") == ["RESULT READY OK"]
    assert lines(first, "INSTALL") == ["INSTALL OK"]

    second = m.boot()
    assert second.returncode == 0, second.stderr
    assert lines(second, "VERSION") == ["VERSION 2.0.0 SLOT b BOOT TRIAL"]
    assert lines(second, "UPDATE") == ["UPDATE PENDING_CONFIRM OK"]
    assert lines(second, "CONFIRMED") == ["CONFIRMED 2.0.0"]

    third = m.boot()  # confirmed: stays on the new image, no trial any more
    assert lines(third, "VERSION") == ["VERSION 2.0.0 SLOT b BOOT NORMAL"]
    assert lines(third, "UPDATE") == ["UPDATE CONFIRMED OK"]


def test_image_with_bad_hash_is_refused_and_the_old_version_keeps_running(tmp_path, firmware_build):
    m = Meter(tmp_path, firmware_build)
    before = tree_digest(m.state / "a")
    manifest_path, blob_path, _ = m.offer(make_image(firmware_build, tmp_path / "v2", "2.0.0"),
                                          corrupt=True)
    first = m.boot("update", manifest_path, blob_path)
    assert first.returncode == 0, first.stderr
    assert lines(first, "RESULT") == ["RESULT FAILED BAD_HASH"]
    assert lines(first, "INSTALL") == []
    assert not (m.state / "b").exists()

    second = m.boot()
    assert lines(second, "VERSION") == ["VERSION 1.0.0 SLOT a BOOT NORMAL"]
    assert lines(second, "UPDATE") == ["UPDATE FAILED BAD_HASH"]
    assert tree_digest(m.state / "a") == before


def test_image_whose_self_test_fails_is_rolled_back_on_the_next_boot(tmp_path, firmware_build):
    m = Meter(tmp_path, firmware_build)
    bad = make_image(firmware_build, tmp_path / "v2", "2.0.0-broken", selftest_ok=False)
    manifest_path, blob_path, _ = m.offer(bad)
    assert lines(m.boot("update", manifest_path, blob_path), "INSTALL") == ["INSTALL OK"]

    trial = m.boot()
    assert lines(trial, "VERSION") == ["VERSION 2.0.0-broken SLOT b BOOT TRIAL"]
    # MicroPython prints an uncaught traceback on stdout
    assert trial.returncode != 0 and "self-test failed" in trial.stdout + trial.stderr
    assert lines(trial, "CONFIRMED") == []

    after = m.boot()
    assert after.returncode == 0, after.stderr
    assert lines(after, "VERSION") == ["VERSION 1.0.0 SLOT a BOOT ROLLED_BACK"]
    assert lines(after, "UPDATE") == ["UPDATE ROLLED_BACK NOT_CONFIRMED"]

    again = m.boot()  # stays on the old image; the broken one gets no second trial
    assert lines(again, "VERSION") == ["VERSION 1.0.0 SLOT a BOOT NORMAL"]


def test_download_killed_midway_resumes_from_the_last_written_chunk(tmp_path, firmware_build):
    m = Meter(tmp_path, firmware_build)
    manifest_path, blob_path, manifest = m.offer(make_image(firmware_build, tmp_path / "v2", "2.0.0"))
    count = -(-manifest["size"] // CHUNK)
    assert count > 40, "image too small to kill mid-download"
    proc = subprocess.Popen(m.boot_cmd("update", manifest_path, blob_path, 20), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    written = []
    try:
        for line in proc.stdout:
            if line.startswith("CHUNK"):
                written.append(int(line.split()[1]))
                if len(written) == 15:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.kill()
        proc.wait(TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL

    resumed = m.boot("update", manifest_path, blob_path)
    assert resumed.returncode == 0, resumed.stderr
    begin = lines(resumed, "BEGIN")[0].split()
    start = int(begin[2])
    # chunks 0..14 were reported written (and saved) before the kill; one more may
    # have been written after the last line we read
    assert begin[1] == "OK" and 15 <= start <= 16, begin
    first_chunk = int(lines(resumed, "CHUNK")[0].split()[1])
    assert first_chunk == start
    assert len(lines(resumed, "CHUNK")) == count - start
    assert lines(resumed, "RESULT") == ["RESULT READY OK"]
    assert lines(resumed, "INSTALL") == ["INSTALL OK"]
    assert lines(m.boot(), "CONFIRMED") == ["CONFIRMED 2.0.0"]


def test_verified_image_cut_off_before_install_is_aborted_at_boot_and_a_new_update_starts(
        tmp_path, firmware_build):
    m = Meter(tmp_path, firmware_build)
    manifest_path, blob_path, _ = m.offer(make_image(firmware_build, tmp_path / "v2", "2.0.0"))
    first = m.boot("update", manifest_path, blob_path, 0, "noinstall")
    assert lines(first, "RESULT") == ["RESULT READY OK"] and lines(first, "INSTALL") == []

    second = m.boot()  # the reset came before install: still the old image, update aborted
    assert second.returncode == 0, second.stderr
    assert "urja: ota: v2 was verified but not installed before a reset: aborted" in second.stdout
    assert lines(second, "VERSION") == ["VERSION 1.0.0 SLOT a BOOT NORMAL"]
    assert lines(second, "UPDATE") == ["UPDATE FAILED ABORTED"]

    third = m.boot("update", manifest_path, blob_path)  # not refused: starts again at chunk 0
    assert lines(third, "BEGIN") == ["BEGIN OK 0"]
    assert lines(third, "INSTALL") == ["INSTALL OK"]
    assert lines(m.boot(), "CONFIRMED") == ["CONFIRMED 2.0.0"]


def test_image_with_good_hash_but_unsafe_path_is_not_installed(tmp_path, firmware_build):
    m = Meter(tmp_path, firmware_build)
    # hand-packed: magic, u16 7, "../evil", u32 1, "x", u16 0 (the layout in pack_image's docstring)
    blob = b"UIMG\x01" + b"\x00\x07../evil" + b"\x00\x00\x00\x01x" + b"\x00\x00"
    manifest = {"version": "evil", "size": len(blob), "chunk_size": CHUNK,
                "sha256": hashlib.sha256(blob).hexdigest()}
    (tmp_path / "evil.img").write_bytes(blob)
    (tmp_path / "evil.json").write_text(json.dumps(manifest))
    first = m.boot("update", tmp_path / "evil.json", tmp_path / "evil.img")
    assert lines(first, "RESULT") == ["RESULT READY OK"]
    assert lines(first, "INSTALL") == ["INSTALL BAD_IMAGE"]
    assert not (m.state / "evil").exists()
    second = m.boot()
    assert lines(second, "VERSION") == ["VERSION 1.0.0 SLOT a BOOT NORMAL"]
    assert lines(second, "UPDATE") == ["UPDATE FAILED BAD_IMAGE"]


# ---- boards/esp32/ota_partition.py against a NOR-flash model of esp32.Partition ----
# (the module cannot run here; this checks its erase/offset arithmetic and the
# install order.  Partition semantics from MicroPython's ports/esp32/esp32_partition.c:
# ioctl(6, n) erases 4 KiB block n; writeblocks(n, buf, off) programs at
# n * 4096 + off without erasing; programming can only clear bits.)

class FakePartition:
    RUNNING = 1
    running_label = "ota_0"
    confirmed = 0

    def __init__(self, label="ota_1", capacity=6 * 4096, calls=None):
        self.label = label
        self.flash = bytearray(b"\x5a" * capacity)  # old firmware: not erased
        self.calls = calls if calls is not None else []

    def info(self):
        return (0, 0x10, 0x110000, len(self.flash), self.label, False)

    def ioctl(self, op, block):
        assert op == 6
        self.flash[block * 4096:(block + 1) * 4096] = b"\xff" * 4096

    def writeblocks(self, block, buf, offset):
        start = block * 4096 + offset
        for i, b in enumerate(buf):
            self.flash[start + i] &= b  # NOR: a write only clears bits

    def readblocks(self, block, buf, offset):
        start = block * 4096 + offset
        buf[:] = self.flash[start:start + len(buf)]

    def set_boot(self):
        self.calls.append("set_boot")

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        cls.confirmed += 1


@pytest.fixture
def esp32_ota(monkeypatch):
    import types
    fake = types.ModuleType("esp32")

    def partition(id_):
        assert id_ == FakePartition.RUNNING
        return FakePartition(FakePartition.running_label)

    partition.RUNNING = FakePartition.RUNNING
    partition.mark_app_valid_cancel_rollback = FakePartition.mark_app_valid_cancel_rollback
    fake.Partition = partition
    monkeypatch.setitem(sys.modules, "esp32", fake)
    monkeypatch.delitem(sys.modules, "boards.esp32.ota_partition", raising=False)
    import boards.esp32.ota_partition as mod
    FakePartition.running_label, FakePartition.confirmed = "ota_0", 0
    return mod


def esp32_download(mod, image, chunk, calls=None):
    from firmware.core import ota
    slot = mod.PartitionSlot(FakePartition(calls=calls))
    o = mod.OtaPartition(ota.Update(), slot)
    manifest = {"version": "2", "size": len(image), "chunk_size": chunk,
                "sha256": hashlib.sha256(image).hexdigest()}
    assert o.begin(manifest) == ota.R_OK
    return o, slot


def test_esp32_slot_writes_odd_sized_chunks_over_old_flash_exactly(esp32_ota):
    from firmware.core import ota
    image = bytes((i * 7 + 3) % 251 for i in range(3 * 4096 + 123))  # ends mid-block
    o, slot = esp32_download(esp32_ota, image, 1000)  # chunks straddle block edges
    for i in range(o.update.chunk_count):
        o.write_chunk(i, image[i * 1000:(i + 1) * 1000])
    assert o.update.state == ota.READY
    assert bytes(slot.partition.flash[:len(image)]) == image


def test_esp32_resume_rewrites_a_torn_chunk_and_still_verifies(esp32_ota):
    from firmware.core import ota
    image = bytes((i * 13) % 256 for i in range(2 * 4096 + 500))
    o, slot = esp32_download(esp32_ota, image, 1500)
    for i in range(3):
        o.write_chunk(i, image[i * 1500:(i + 1) * 1500])
    # a power cut tore chunk 3: half of it reached flash, next_index still says 3
    slot.partition.writeblocks(1, image[4500:5250], 4500 - 4096)
    again = esp32_ota.OtaPartition(ota.Update.from_state(o.update.to_state()), slot)
    for i in range(3, again.update.chunk_count):
        assert again.write_chunk(i, image[i * 1500:(i + 1) * 1500]) == ota.R_OK
    assert again.update.state == ota.READY


def test_esp32_install_records_pending_before_setting_the_boot_partition(esp32_ota):
    from firmware.core import ota
    calls = []
    o, slot = esp32_download(esp32_ota, b"x" * 5000, 4096, calls)
    o.write_chunk(0, b"x" * 4096)
    o.write_chunk(1, b"x" * 904)
    o.install(commit=lambda: calls.append("commit " + o.update.state_name))
    assert calls == ["commit PENDING_CONFIRM", "set_boot"]
    assert o.update.target == "ota_1"


def test_esp32_boot_on_old_partition_after_install_records_rollback(esp32_ota):
    from firmware.core import ota
    u = ota.Update.from_state({"state": ota.PENDING_CONFIRM, "reason": 0, "manifest": None,
                               "next_index": 0, "target": "ota_1"})
    o = esp32_ota.OtaPartition(u, esp32_ota.PartitionSlot(FakePartition("ota_1")))
    assert o.after_boot() is True  # still running ota_0: the bootloader rolled back
    assert u.state_name == "ROLLED_BACK" and u.reason_name == "NOT_CONFIRMED"


def test_esp32_confirm_on_the_new_partition_marks_it_valid(esp32_ota):
    from firmware.core import ota
    FakePartition.running_label = "ota_1"
    u = ota.Update.from_state({"state": ota.PENDING_CONFIRM, "reason": 0, "manifest": None,
                               "next_index": 0, "target": "ota_1"})
    o = esp32_ota.OtaPartition(u, esp32_ota.PartitionSlot(FakePartition("ota_0")))
    assert o.after_boot() is False
    assert o.confirm() is True
    assert FakePartition.confirmed == 1 and u.state_name == "CONFIRMED"
