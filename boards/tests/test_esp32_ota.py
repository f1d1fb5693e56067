"""The ESP32's ``ota`` downlink target (``boards/esp32/ota_partition.py`` ``OtaPartitions``)
on CPython, over a fake ``esp32`` module that plays the flash, otadata and the bootloader.

These are logic tests with fakes.  Proof on a real board (the ESP-IDF
bootloader's rollback, otadata, real NOR flash, a real power cut) needs
hardware, which we do not have; it is for the HIL suite with ``--board esp32``.

The fake follows documented behaviour, not our code:

- ``esp32.Partition`` (MicroPython docs/library/esp32.rst, ports/esp32/esp32_partition.c):
  ``Partition(Partition.RUNNING)``, ``get_next_update()``, ``info()`` =
  ``(type, subtype, addr, size, label, encrypted)``, ``readblocks`` /
  ``writeblocks(block, buf, offset)`` at ``block * 4096 + offset``, ``ioctl(6, n)``
  erases block n; programming only clears bits (NOR).
- ``set_boot()`` = ``esp_ota_set_boot_partition``: validates the app image first
  (ESP_ERR_OTA_VALIDATE_FAILED, raised as OSError(-0x1503) by check_esp_err_);
  the fake's "validation" is the ESP32 image magic byte 0xE9 at offset 0.
- Rollback (ESP-IDF "App rollback"): ``set_boot`` marks the image NEW; the
  bootloader boots a NEW image as PENDING_VERIFY; at the next reset a
  still-PENDING_VERIFY image is ABORTED and the previous one boots.
  ``mark_app_valid_cancel_rollback`` makes the running image VALID, and raises
  OSError(-261) on a build without CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE.
"""
import hashlib
import importlib
import sys
import types

import pytest

from boards.tests.test_esp32_hal import (FakeCounter, FakeNvs, FakePin, FakeRtc, FakeUart,
                                         FakeWdt, wroom32)
from firmware.core import events, ota

SECTOR = 4096
T0 = 1795737600
IMAGE = b"\xe9" + bytes((i * 31 + 7) % 251 for i in range(3 * SECTOR + 999))  # ends mid-block


class PowerCut(BaseException):
    """A reset in the middle of a call: nothing after it runs (not an OSError the code handles)."""


class Chip:
    """Two OTA app partitions, otadata and the bootloader's choice."""

    def __init__(self, size=16 * SECTOR, labels=("ota_0", "ota_1")):
        self.flash = {label: bytearray(b"\x5a" * size) for label in labels}  # old firmware bytes
        self.size = size
        self.labels = labels
        self.running = labels[0] if labels else None
        self.boot = self.running
        self.state = {label: "valid" for label in labels}
        self.rollback_enabled = True
        self.set_boots = 0
        self.marks = 0
        self.cut_in_set_boot = False

    def other(self, label):
        return self.labels[1] if label == self.labels[0] else self.labels[0]

    def reset(self):
        """What the ESP-IDF bootloader does at a reset (app rollback enabled or not)."""
        b = self.boot
        if self.rollback_enabled:
            if self.state[b] == "new":
                self.state[b] = "pending_verify"
            elif self.state[b] == "pending_verify":  # booted once, never marked valid
                self.state[b] = "aborted"
                b = self.boot = self.other(b)
        self.running = b


def fake_partition_class(chip):
    class Partition:
        BOOT, RUNNING, TYPE_APP, TYPE_DATA = 0, 1, 0, 1

        def __init__(self, id_, block_size=SECTOR):
            if id_ == Partition.RUNNING:
                id_ = chip.running
            elif id_ == Partition.BOOT:
                id_ = chip.boot
            if id_ not in chip.flash:
                raise OSError(2, "ENOENT")
            self.label = id_

        @staticmethod
        def find(type=0, subtype=0xFF, label=None):
            return [Partition(lb) for lb in chip.labels if type == 0 and label in (None, lb)]

        def info(self):
            return (0, 0x10 + chip.labels.index(self.label), 0x10000, chip.size, self.label, False)

        def get_next_update(self):
            if len(chip.labels) < 2:
                raise OSError(2, "ENOENT")  # a factory-only table
            return Partition(chip.other(self.label))

        def _span(self, block, n, offset):
            start = block * SECTOR + offset
            if block < 0 or offset < 0 or start + n > chip.size:
                raise OSError(22, "outside partition")
            return start

        def readblocks(self, block, buf, offset=0):
            start = self._span(block, len(buf), offset)
            buf[:] = chip.flash[self.label][start:start + len(buf)]

        def writeblocks(self, block, buf, offset):
            start = self._span(block, len(buf), offset)
            flash = chip.flash[self.label]
            for i, b in enumerate(buf):
                flash[start + i] &= b  # NOR: programming only clears bits

        def ioctl(self, op, arg=None):
            if op == 6:
                start = self._span(arg, SECTOR, 0)
                chip.flash[self.label][start:start + SECTOR] = b"\xff" * SECTOR
                return 0
            return None

        def set_boot(self):
            if chip.cut_in_set_boot:
                raise PowerCut()
            if chip.flash[self.label][0] != 0xE9:
                raise OSError(-0x1503, "ESP_ERR_OTA_VALIDATE_FAILED")
            chip.set_boots += 1
            chip.boot = self.label
            chip.state[self.label] = "new" if chip.rollback_enabled else "undefined"

        @classmethod
        def mark_app_valid_cancel_rollback(cls):
            if not chip.rollback_enabled:
                raise OSError(-261, "ESP_ERR_NOT_FOUND")
            chip.marks += 1
            chip.state[chip.running] = "valid"

    return Partition


@pytest.fixture
def esp(monkeypatch):
    """Fake ``machine`` / ``esp32`` over one Chip; the ESP32 board modules imported fresh."""
    chip = Chip()
    machine = types.ModuleType("machine")
    machine.Pin, machine.UART, machine.Counter = FakePin, FakeUart, FakeCounter
    machine.RTC, machine.WDT = FakeRtc, FakeWdt
    esp32 = types.ModuleType("esp32")
    esp32.Partition, esp32.NVS = fake_partition_class(chip), FakeNvs
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.setitem(sys.modules, "esp32", esp32)
    monkeypatch.setattr(FakeNvs, "store", {})
    monkeypatch.setattr(FakeUart, "opened", {})

    def forget():
        for name in [m for m in sys.modules if m.startswith("boards.esp32")]:
            del sys.modules[name]
    forget()
    hal = importlib.import_module("boards.esp32.hal")
    ns = types.SimpleNamespace(chip=chip, mod=importlib.import_module("boards.esp32.ota_partition"),
                               board=hal.make_board(wroom32()))
    yield ns
    forget()


def boot(esp, **kw):
    """What a boot builds: the app's ``board_ota`` on the ESP32 board."""
    if kw:
        return esp.mod.OtaPartitions(esp.board.journal_slots("ota"), **kw)
    from firmware.app.platform import board_ota
    return board_ota(esp.board, "nvs")


def manifest(image=IMAGE, chunk=SECTOR, version="0.6.0"):
    return {"version": version, "size": len(image), "chunk_size": chunk,
            "sha256": hashlib.sha256(image).hexdigest()}


def download(o, image=IMAGE, chunk=SECTOR, upto=None, m=None):
    m = m or manifest(image, chunk)
    assert o.begin(m, T0) == ota.R_OK
    count = (len(image) + chunk - 1) // chunk
    reasons = []
    for i in range(o.update.next_index, count if upto is None else upto):
        reasons.append(o.write_chunk(i, image[i * chunk:(i + 1) * chunk], T0 + i))
    return reasons


def installed(esp, **kw):
    o = boot(esp, **kw)
    download(o)
    assert o.install(T0) == ota.R_OK
    return o


# ----------------------------------------------------------------- download and install

def test_full_download_and_install_writes_the_next_partition_and_sets_it_to_boot(esp):
    o = boot(esp)
    assert isinstance(o, esp.mod.OtaPartitions)
    assert (o.running, o.slot.label) == ("ota_0", "ota_1")
    assert download(o) == [ota.R_OK] * 4
    assert o.update.state_name == "READY"
    assert esp.chip.boot == "ota_0" and esp.chip.set_boots == 0  # verified, not switched yet
    assert o.install(T0) == ota.R_OK
    assert bytes(esp.chip.flash["ota_1"][:len(IMAGE)]) == IMAGE
    assert esp.chip.flash["ota_0"] == bytearray(b"\x5a" * esp.chip.size)  # running app untouched
    assert (esp.chip.boot, esp.chip.state["ota_1"]) == ("ota_1", "new")
    assert (o.update.state_name, o.update.target) == ("PENDING_CONFIRM", "ota_1")


def test_after_install_and_reset_the_new_image_runs_on_trial(esp):
    installed(esp)
    esp.chip.reset()
    o = boot(esp)
    assert esp.chip.running == "ota_1"
    assert o.update.state_name == "PENDING_CONFIRM"
    assert (o.boot.last_boot, o.boot.booted, o.boot.pending) == (ota.BOOT_TRIAL, "ota_1", "ota_1")
    assert esp.chip.state["ota_1"] == "pending_verify"  # building it must not confirm the trial


def test_download_resumes_after_a_reset_at_the_next_chunk(esp):
    o = boot(esp)
    download(o, upto=2)
    esp.chip.reset()  # power cut between chunks
    again = boot(esp)
    assert (again.update.state_name, again.update.next_index) == ("DOWNLOADING", 2)
    assert again.begin(manifest(), T0) == ota.R_OK  # the head-end re-sends the manifest
    assert again.update.next_index == 2
    assert again.write_chunk(3, IMAGE[3 * SECTOR:], T0) == ota.R_OUT_OF_ORDER
    assert again.write_chunk(1, IMAGE[SECTOR:2 * SECTOR], T0) == ota.R_DUPLICATE
    assert download(again) == [ota.R_OK, ota.R_OK]
    assert again.update.state_name == "READY"


def test_chunk_written_but_journal_commit_lost_is_rewritten_and_still_verifies(esp, monkeypatch):
    chunk = 1500  # chunks straddle 4 KiB blocks: the rewrite programs bytes already programmed
    o = boot(esp)
    download(o, chunk=chunk, upto=3)

    def cut(self, key, value):
        raise PowerCut()
    with monkeypatch.context() as m, pytest.raises(PowerCut):
        m.setattr(FakeNvs, "set_blob", cut)  # chunk 3 reaches flash, its journal commit does not
        o.write_chunk(3, IMAGE[3 * chunk:4 * chunk], T0)
    esp.chip.reset()
    again = boot(esp)
    assert again.update.next_index == 3
    assert download(again, chunk=chunk)[-1] == ota.R_OK
    assert again.update.state_name == "READY"


def test_bad_hash_fails_the_update_and_leaves_the_boot_partition(esp):
    o = boot(esp)
    wrong = manifest(IMAGE[:-1] + b"\x00")
    assert download(o, m=wrong)[-1] == ota.R_BAD_HASH
    assert (o.update.state_name, o.update.reason_name) == ("FAILED", "BAD_HASH")
    assert (esp.chip.boot, esp.chip.set_boots) == ("ota_0", 0)
    with pytest.raises(ota.OtaStateError):
        o.install(T0)
    esp.chip.reset()
    again = boot(esp)
    assert esp.chip.running == "ota_0"
    assert (again.update.state_name, again.boot.last_boot) == ("FAILED", ota.BOOT_NORMAL)


def test_an_image_esp_idf_does_not_validate_is_bad_image_and_the_boot_partition_stays(esp):
    image = b"\x00" + IMAGE[1:]  # right hash, but not an ESP32 app
    o = boot(esp)
    download(o, image=image)
    assert o.install(T0) == ota.R_BAD_IMAGE
    assert (o.update.state_name, o.update.reason_name) == ("FAILED", "BAD_IMAGE")
    assert esp.chip.boot == "ota_0"
    esp.chip.reset()
    again = boot(esp)
    assert (again.update.state_name, again.boot.last_boot) == ("FAILED", ota.BOOT_NORMAL)
    assert again.begin(manifest(), T0) == ota.R_OK  # the next update is not blocked


def test_verified_image_not_installed_before_a_reset_is_aborted_not_stuck(esp, monkeypatch):
    o = boot(esp)
    download(o)

    def fail(self, key, value):
        raise OSError(-0x1101, "ESP_ERR_NVS_NOT_ENOUGH_SPACE")
    with monkeypatch.context() as m:
        m.setattr(FakeNvs, "set_blob", fail)
        assert o.install(T0) == ota.R_IO_ERROR  # could not record PENDING_CONFIRM: no switch
    assert esp.chip.boot == "ota_0" and esp.chip.set_boots == 0
    esp.chip.reset()
    again = boot(esp)  # the journal still said READY
    assert (again.update.state_name, again.update.reason_name) == ("FAILED", "ABORTED")
    assert again.begin(manifest(), T0) == ota.R_OK and again.update.next_index == 0


# ----------------------------------------------------------------- confirm and rollback

def test_confirm_on_the_trial_boot_marks_the_app_valid_and_it_stays(esp):
    installed(esp)
    esp.chip.reset()
    o = boot(esp)
    marks = esp.chip.marks
    assert o.confirm(T0) is True
    assert esp.chip.marks == marks + 1 and esp.chip.state["ota_1"] == "valid"
    assert (o.update.state_name, o.boot.active) == ("CONFIRMED", "ota_1")
    assert o.confirm(T0) is False  # once only
    esp.chip.reset()
    again = boot(esp)
    assert esp.chip.running == "ota_1"
    assert (again.update.state_name, again.boot.last_boot) == ("CONFIRMED", ota.BOOT_NORMAL)
    assert again.slot.label == "ota_0"  # the next update goes to the old partition


def test_confirm_is_false_on_a_normal_boot(esp):
    assert boot(esp).confirm(T0) is False
    assert esp.chip.marks == 0


def test_trial_image_that_resets_without_confirming_is_rolled_back_and_reported(esp):
    installed(esp)
    esp.chip.reset()
    boot(esp)  # the trial boot: crashes or never reaches the broker
    esp.chip.reset()  # the bootloader aborts ota_1 and boots ota_0
    o = boot(esp)
    assert esp.chip.running == "ota_0" and esp.chip.state["ota_1"] == "aborted"
    assert (o.update.state_name, o.update.reason_name) == ("ROLLED_BACK", "NOT_CONFIRMED")
    assert (o.boot.last_boot, o.boot.booted) == (ota.BOOT_ROLLED_BACK, "ota_0")
    assert boot(esp).update.state_name == "ROLLED_BACK"  # journaled: reported even after another cut


def test_power_cut_between_the_pending_record_and_set_boot_is_reported_as_rolled_back(esp):
    # The documented rule: journal PENDING_CONFIRM for ota_1 but ota_0 runs -> ROLLED_BACK.
    o = boot(esp)
    download(o)
    esp.chip.cut_in_set_boot = True
    with pytest.raises(PowerCut):
        o.install(T0)
    esp.chip.cut_in_set_boot = False
    esp.chip.reset()
    again = boot(esp)
    assert esp.chip.running == "ota_0"
    assert (again.update.state_name, again.update.reason_name) == ("ROLLED_BACK", "NOT_CONFIRMED")


# ----------------------------------------------------------------- builds without app rollback

def test_build_without_app_rollback_refuses_ota_and_says_so(esp, capsys):
    esp.chip.rollback_enabled = False
    o = boot(esp)
    with pytest.raises(ota.OtaStateError) as err:
        o.begin(manifest(), T0)
    detail = str(err.value)
    assert detail == "ota: no app rollback in this build (OSError -261)"
    assert len(detail) <= 60  # the ack's ``d`` is cut at 60 characters
    assert "no app rollback here (OSError -261" in capsys.readouterr().out
    assert o.rollback is False
    assert o.update.state_name == "IDLE" and FakeNvs.store == {}  # nothing started or saved


def test_build_without_app_rollback_is_refused_in_the_ack(esp):
    from firmware.app import downlinks
    from firmware.core.meter import REFUSED

    esp.chip.rollback_enabled = False
    app = FakeApp(boot(esp))
    result, detail = downlinks.ota_act(app, "ota", ["OTA-1", "0.6.0", len(IMAGE),
                                                    manifest()["sha256"], 4], T0)
    assert (result, detail) == (REFUSED, "ota: no app rollback in this build (OSError -261)")


def test_image_without_app_rollback_on_trial_confirms_and_says_so(esp, capsys):
    installed(esp, allow_without_rollback=True)  # the old build had rollback...
    esp.chip.reset()
    esp.chip.rollback_enabled = False  # ...the new one does not
    o = boot(esp, allow_without_rollback=True)
    assert o.boot.last_boot == ota.BOOT_TRIAL
    assert o.confirm(T0) is True  # no crash on OSError(-261)
    assert o.rollback is False and o.update.state_name == "CONFIRMED"
    assert "build has no app rollback (OSError -261): slot ota_1 stays" in capsys.readouterr().out


def test_other_mark_valid_errors_leave_the_trial_unconfirmed(esp, capsys):
    installed(esp)
    esp.chip.reset()
    o = boot(esp)

    def broken(cls):
        raise OSError(-1, "ESP_FAIL")
    sys.modules["esp32"].Partition.mark_app_valid_cancel_rollback = classmethod(broken)
    assert o.confirm(T0) is False
    assert o.update.state_name == "PENDING_CONFIRM"
    assert "the bootloader rolls back" in capsys.readouterr().out


# ----------------------------------------------------------------- what the app drives

class FakeLog:
    def __init__(self):
        self.entries = []

    def append(self, now, code, value):
        self.entries.append((code, value))


class FakeApp:
    """The attributes ``firmware/app/downlinks.py`` uses of ``firmware.app.main.App``."""

    def __init__(self, slots, version="0.5.0"):
        self.ota, self.version = slots, version
        self.meter = types.SimpleNamespace(log=FakeLog())
        self.restart_pending = self.ota_trial = False
        self.changed = 0

    def now(self):
        return T0

    def meter_changed(self, now):
        self.changed += 1


def send_update(app, image=IMAGE, count=4):
    import binascii

    from firmware.app import downlinks
    from firmware.core import auth

    chunk = (len(image) + count - 1) // count  # downlinks.ota_manifest's rule
    fields = ["OTA-1", "0.6.0", len(image), hashlib.sha256(image).hexdigest(), count]
    assert downlinks.ota_act(app, "ota", fields, T0) == (auth.OK, "ota 0.6.0 next chunk 0")
    for i in range(count):
        b64 = binascii.b2a_base64(image[i * chunk:(i + 1) * chunk]).decode().strip()
        result, detail = downlinks.ota_act(app, "ota_chunk", ["OTA-1", i, b64], T0)
    return result, detail


def test_app_downlinks_install_confirm_on_the_esp32_board(esp):
    from firmware.app import downlinks
    from firmware.core import auth

    app = FakeApp(boot(esp))
    assert send_update(app) == (auth.OK, "ota 0.6.0 installed: restarting")
    assert app.restart_pending and esp.chip.boot == "ota_1"
    esp.chip.reset()
    app = FakeApp(boot(esp), version="0.6.0")
    downlinks.ota_after_boot(app, T0)
    assert app.ota_trial is True
    downlinks.ota_confirm(app)
    assert app.meter.log.entries == [(events.FW_CONFIRMED, 600)]
    assert app.ota.update.state_name == "IDLE" and esp.chip.state["ota_1"] == "valid"
    assert boot(esp).update.state_name == "IDLE"  # acknowledged and saved


def test_app_reports_fw_rolled_back_after_the_bootloader_rolled_back(esp):
    from firmware.app import downlinks

    send_update(FakeApp(boot(esp)))
    esp.chip.reset()
    boot(esp)  # trial boot, never confirmed
    esp.chip.reset()
    app = FakeApp(boot(esp))
    downlinks.ota_after_boot(app, T0)
    assert app.meter.log.entries == [(events.FW_ROLLED_BACK, 600)]
    assert app.ota_trial is False
    assert boot(esp).update.state_name == "IDLE"  # reported once


# ----------------------------------------------------------------- wiring

def test_ota_journal_has_its_own_nvs_keys(esp):
    o = boot(esp)
    download(o, upto=1)
    assert set(FakeNvs.store) == {("urja", "u0"), ("urja", "u1")}  # begin, chunk 0
    assert o.journal.storage.capacity >= esp.mod.OTA_JOURNAL_BYTES + 15


def test_board_without_ota_partitions_gets_no_ota_and_says_why(esp, capsys):
    from firmware.app.platform import board_ota

    esp.chip.labels = ("factory",)
    esp.chip.flash = {"factory": bytearray(esp.chip.size)}
    esp.chip.running = esp.chip.boot = "factory"
    assert board_ota(esp.board, "nvs") is None
    assert "no OTA app partition" in capsys.readouterr().out
