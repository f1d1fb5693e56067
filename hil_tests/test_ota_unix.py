"""OTA firmware update over MQTT on the unix board: the meter app booted through the A/B selector.

The DUT is ``micropython boards/unix/ota_dirs.py <state>/ota`` (the boot
selector) started from a folder without sources, so the meter app runs only
from the image in slot ``a/`` or ``b/``: ``tools.build`` output (.mpy) plus
the entry ``main.py`` (``ota_dirs.write_entry``) that names the image's
version.  The update arrives as authenticated downlinks (docs/protocol.md
"ota"): one ``ota`` command with the manifest, then ``ota_chunk`` commands,
each sent once the previous one is acked, as a head-end would.  The
manifest's SHA-256 comes from CPython's hashlib.  Installing ends with the
app exiting with ``RESTART_EXIT`` (a board reset); the test boots it again,
through the selector, as the board's reset would.

Checked on the wire (acks, FW_CONFIRMED / FW_ROLLED_BACK events, heartbeat
``fw``) and on the console, for a good image, a corrupted one and one that
never confirms.
"""
import base64
import hashlib
import itertools
import os
import pathlib
import shutil

import pytest

from boards.unix.hal import RESTART_EXIT
from boards.unix.ota_dirs import pack_image, write_entry
from firmware.core import auth
from firmware.protocol import messages
from hil_tests import dut as dut_mod
from hil_tests.conftest import Uplinks

START_T = dut_mod.START_T
KEY = bytes.fromhex(dut_mod.KEY_HEX)
METER = "UJ-HIL-0001"
FAR = START_T + 30 * 86400
CHUNK = 4096  # firmware/app/main.py OTA_MAX_CHUNK
FW_CONFIRMED, FW_ROLLED_BACK = 26, 27  # docs/protocol.md event codes
FACTORY = "1.0.0"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The firmware compiled once (mpy-cross), without an entry: slots add theirs."""
    from tools.build import build_image

    out = tmp_path_factory.mktemp("ota-build") / "image"
    build_image(out, log=lambda *_: None)
    return out


def slot_image(base, dest, version, broken=False):
    shutil.copytree(base, dest)
    if broken:  # a build that dies at start: it can never reach the broker and confirm
        (dest / "main.py").write_text('print("urja: image %s starting")\n'
                                      'raise RuntimeError("broken build")\n' % version)
    else:
        write_entry(str(dest), version)
    return dest


@pytest.fixture
def up(broker):
    u = Uplinks(*broker, meter_id=METER)
    yield u
    u.close()


@pytest.fixture
def meter(broker, hil_log_dir, image):
    """A DUT booted through the selector with the factory image in slot a."""
    settings = dut_mod.factory_settings(METER, tuple(broker), pulse_constant=1000,
                                        heartbeat_s=900, opening_credit_paise=2000)
    d = dut_mod.UnixDut("dut", hil_log_dir, settings=settings, time_factor=300,
                        start_t=START_T, boot_selector=True)
    try:
        os.makedirs(os.path.join(d.dir, "ota"))
        slot_image(image, pathlib.Path(d.dir) / "ota" / "a", FACTORY)
        d.start()
        yield d
    finally:
        d.close()


def online(dut, up):
    dut.expect(r"urja: mqtt connected", timeout=15)
    up.wait(lambda u: u.of("heartbeat"), 15, "the first heartbeat")


def acks(up, cid):
    return [b for b in up.of("ack") if b["id"] == cid]


def heartbeat_fw(up, since=0):
    return [b["fw"] for b in up.received[since:] if b["kind"] == "heartbeat"]


def fw_events(up, code):
    return [e[3] for b in up.of("event") for e in b["e"] if e[2] == code]


class Offer:
    """Sends an image as ``ota`` + ``ota_chunk`` commands, one at a time, ack by ack."""

    def __init__(self, up):
        self.up = up
        self.counter = itertools.count(1)

    def command(self, kind, fields):
        cmd = auth.make_command(KEY, kind, METER, next(self.counter), FAR, fields)
        self.up.publish(messages.command_topic(METER), messages.encode_command(cmd))
        return self.up.wait(lambda u: acks(u, fields[0]), 15, "the ack of %s" % fields[0])[0]

    def send(self, blob, version, corrupt=False):
        """The acks: the manifest's, then each chunk's (stops at the first non-OK)."""
        digest = hashlib.sha256(blob).hexdigest()
        count = (len(blob) + CHUNK - 1) // CHUNK
        size = (len(blob) + count - 1) // count  # docs/protocol.md: ceil(size / chunk_count)
        if corrupt:  # one bit flipped in transit after the head-end hashed the image
            blob = bytearray(blob)
            blob[len(blob) // 2] ^= 0x01
            blob = bytes(blob)
        out = [self.command("ota", ["OTA-" + version, version, len(blob), digest, count])]
        for i in range(count):
            if out[-1]["r"] != 0:
                break
            piece = base64.b64encode(blob[i * size:(i + 1) * size]).decode()
            out.append(self.command("ota_chunk", ["OC-%s-%d" % (version, i), i, piece]))
        return out


def packed(image, tmp_path, version, broken=False):
    return pack_image(str(slot_image(image, tmp_path / ("v" + version), version, broken)))


def wait_exit(dut, timeout=20):
    try:
        return dut.proc.wait(timeout)
    except Exception:
        raise AssertionError("the DUT did not exit:\n" + dut.console.text[-3000:])


def test_good_image_is_verified_installed_booted_on_trial_and_confirmed(meter, up, image, tmp_path):
    online(meter, up)
    assert heartbeat_fw(up)[0] == FACTORY and meter.command("info")["fw"] == FACTORY
    blob = packed(image, tmp_path, "1.1.0")
    sent = Offer(up).send(blob, "1.1.0")
    assert [a["r"] for a in sent] == [0] * len(sent) and len(sent) == 1 + (len(blob) + CHUNK - 1) // CHUNK
    assert sent[0]["d"] == "ota 1.1.0 next chunk 0", sent[0]
    assert sent[-1]["d"] == "ota 1.1.0 installed: restarting", sent[-1]
    meter.expect(r"urja: ota 1\.1\.0 verified and installed in slot b, restarting", timeout=5)
    assert wait_exit(meter) == RESTART_EXIT

    mark = len(up.received)
    meter.start()  # the board resets: the selector boots slot b on trial
    meter.expect(r"urja: firmware 1\.1\.0 on trial in slot b: confirms once MQTT is connected",
                 timeout=10)
    meter.expect(r"urja: mqtt connected", timeout=15)
    meter.expect(r"urja: firmware 1\.1\.0 confirmed in slot b", timeout=5)
    assert up.wait(lambda u: fw_events(u, FW_CONFIRMED), 15, "FW_CONFIRMED on the wire") == [10100]
    up.wait(lambda u: heartbeat_fw(u, mark), 15, "a heartbeat from the new image")
    assert set(heartbeat_fw(up, mark)) == {"1.1.0"}
    assert meter.command("info")["fw"] == "1.1.0"
    assert meter.command("balance")["balance_paise"] == "2000", "the meter's state survived"

    boot_at = len(meter.console.text)
    meter.restart()  # confirmed: a later reset stays on the new image, no trial any more
    meter.expect(r"urja: mqtt connected", timeout=15)
    assert meter.command("info")["fw"] == "1.1.0"
    assert "on trial" not in meter.console.text[boot_at:]
    assert len(fw_events(up, FW_CONFIRMED)) == 1
    assert not up.errors, up.errors


def test_image_with_a_bad_hash_is_refused_and_the_old_firmware_keeps_running(
        meter, up, image, tmp_path):
    online(meter, up)
    blob = packed(image, tmp_path, "1.1.0")
    sent = Offer(up).send(blob, "1.1.0", corrupt=True)
    assert [a["r"] for a in sent[:-1]] == [0] * (len(sent) - 1)
    last = sent[-1]
    assert (last["r"], last["rn"], last["d"]) == (9, "BAD_VALUE", "ota BAD_HASH"), last
    assert len(sent) == 1 + (len(blob) + CHUNK - 1) // CHUNK, "refused at the last chunk"
    meter.expect(r"urja: ota 1\.1\.0 refused: BAD_HASH", timeout=5)
    assert meter.alive and "restarting" not in meter.console.text
    mark = len(up.received)
    up.wait(lambda u: heartbeat_fw(u, mark), 15, "a heartbeat after the refusal")
    assert set(heartbeat_fw(up, mark)) == {FACTORY}
    meter.restart()
    meter.expect(r"urja: mqtt connected", timeout=15)
    assert meter.command("info")["fw"] == FACTORY
    assert "on trial" not in meter.console.text and "rolled back" not in meter.console.text
    assert not up.errors, up.errors


def test_image_that_never_confirms_is_rolled_back_on_the_next_reset(meter, up, image, tmp_path):
    online(meter, up)
    sent = Offer(up).send(packed(image, tmp_path, "1.2.0", broken=True), "1.2.0")
    assert sent[-1]["r"] == 0 and sent[-1]["d"] == "ota 1.2.0 installed: restarting", sent[-1]
    assert wait_exit(meter) == RESTART_EXIT

    meter.start(wait=False)  # the trial boot: the new image dies before it can confirm
    meter.expect(r"urja: image 1\.2\.0 starting", timeout=10)
    assert wait_exit(meter) not in (0, RESTART_EXIT)

    mark = len(up.received)
    meter.start()  # the next reset: no trial boot left, the selector goes back to slot a
    meter.expect(r"urja: firmware 1\.2\.0 did not confirm: rolled back to 1\.0\.0 in slot a",
                 timeout=10)
    assert up.wait(lambda u: fw_events(u, FW_ROLLED_BACK), 15, "FW_ROLLED_BACK on the wire") == [10200]
    up.wait(lambda u: heartbeat_fw(u, mark), 15, "a heartbeat after the rollback")
    assert set(heartbeat_fw(up, mark)) == {FACTORY}
    assert meter.command("info")["fw"] == FACTORY
    assert fw_events(up, FW_CONFIRMED) == []
    assert not up.errors, up.errors
