"""A/B firmware update on the ESP32 with ``esp32.Partition`` (ota_0 / ota_1).

The image is a MicroPython firmware ``.bin`` (app image, firmware frozen in),
written into the OTA app partition after the running one.  The switch is
``set_boot()`` + reset; the ESP-IDF bootloader boots the new app once as
"pending verify" and rolls back on the next reset unless the app called
``mark_app_valid_cancel_rollback()``.  That needs a build with
CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE (MicroPython's ESP32_GENERIC OTA
variant); elsewhere the call raises OSError(-261) and there is no rollback.

Two layers:

- ``PartitionSlot`` / ``OtaPartition``: the partition mechanics over a
  ``firmware.core.ota.Update`` the caller persists.
- ``OtaPartitions``: what the app drives (``firmware/app/downlinks.py``), the
  same interface as ``boards.unix.ota_dirs.OtaDirs``: ``begin`` /
  ``write_chunk`` / ``install`` / ``confirm`` / ``save``, ``update`` and
  ``boot`` (an ``ota.BootState`` rebuilt at every boot from the running
  partition, since the bootloader's otadata, not a journal, decides the boot).
  The ``Update`` is journaled in NVS (``board.journal_slots("ota")``).

Cannot run off-target; ``boards/tests/test_esp32_ota.py`` runs it on CPython
over a fake ``esp32`` (the real bootloader and flash need a board), and CI
compiles and type-checks it.

>>> o = OtaPartitions(board.journal_slots("ota"))
>>> o.begin(manifest, now); o.write_chunk(0, data, now)    # ... each chunk; the last verifies
>>> o.install(now)                                         # READY -> PENDING_CONFIRM, set_boot()
>>> machine.reset()
>>> OtaPartitions(board.journal_slots("ota")).confirm(now) # in the new image, once MQTT is up
"""
import json

import esp32

from firmware.core import ota
from firmware.core.journal import Journal

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

BLOCK_SIZE = const(4096)  # esp32_partition.c: every block operation is on 4 KiB
_IOCTL_BLOCK_ERASE = const(6)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE, extmod/vfs.h
# ESP-IDF errors as MicroPython raises them: OSError(-code) (ports/esp32 check_esp_err_).
OTA_UNSUPPORTED = const(-261)  # mark_app_valid_cancel_rollback on a build without app rollback
OTA_VALIDATE_FAILED = const(-0x1503)  # set_boot: ESP_ERR_OTA_VALIDATE_FAILED, not a valid app image
OTA_JOURNAL_BYTES = const(512)  # the update record is ~250 bytes of JSON (64-hex digest, version)
NO_ROLLBACK = "ota: no app rollback in this build (OSError %d)"  # <= 60 characters: the ack's `d`


def running_partition():
    # The C constructor takes the BOOT / RUNNING ints as well as a label; the stub only says str.
    return esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]


def running_label():
    """Label of the partition this firmware runs from (e.g. "ota_0")."""
    return running_partition().info()[4]


def mark_app_valid():
    """``mark_app_valid_cancel_rollback()``: True, or False on a build without app
    rollback (OSError -261: nothing to cancel, and no bootloader rollback either).
    Another OSError (e.g. running from a factory partition) propagates."""
    try:
        esp32.Partition.mark_app_valid_cancel_rollback()
    except OSError as err:
        if err.args[0] != OTA_UNSUPPORTED:
            raise
        return False
    return True


class PartitionSlot:
    """An image slot (``write(offset, data)`` / ``read(offset, n)``) over an app partition.

    Chunks may have any size: each 4 KiB block is erased when the first chunk
    that starts in it is written, and ``writeblocks`` with an offset never
    erases.  Rewriting a chunk after a reset (resume) programs the same bits
    again, which NOR flash allows.

    >>> slot = PartitionSlot()              # the next OTA partition
    >>> slot.write(0, chunk0); slot.read(0, 16)
    """

    def __init__(self, partition=None):
        if partition is None:
            partition = running_partition().get_next_update()
        self.partition = partition
        info = partition.info()
        self.capacity = info[3]
        self.label = info[4]

    def write(self, offset, data):
        end = offset + len(data)
        if offset < 0 or end > self.capacity:
            raise OSError(28, "write past the end of partition " + self.label)
        block = (offset + BLOCK_SIZE - 1) // BLOCK_SIZE  # first block that starts inside this write
        while block * BLOCK_SIZE < end:
            self.partition.ioctl(_IOCTL_BLOCK_ERASE, block)
            block += 1
        self.partition.writeblocks(offset // BLOCK_SIZE, data, offset % BLOCK_SIZE)

    def read(self, offset, n):
        n = min(n, self.capacity - offset)
        if n <= 0:
            return b""
        buf = bytearray(n)
        self.partition.readblocks(offset // BLOCK_SIZE, buf, offset % BLOCK_SIZE)
        return bytes(buf)

    def set_boot(self):
        """Point otadata at this partition; ESP-IDF validates the app image first
        (OSError ``OTA_VALIDATE_FAILED`` for one that is not a bootable app)."""
        self.partition.set_boot()


class OtaPartition:
    """The partition mechanics under ``OtaPartitions`` (no journal of its own).

    The caller persists ``update.to_state()`` in its journal after every call
    that returns, and passes a ``commit`` callable to ``install``.
    ``rollback``: None until ``confirm`` asked the firmware, then whether this
    build has app rollback.
    """

    def __init__(self, update, slot=None):
        self.update = update
        self.slot = slot if slot is not None else PartitionSlot()
        self.rollback = None

    def begin(self, manifest):
        return self.update.begin(manifest, self.slot.capacity)

    def write_chunk(self, index, data):
        reason = self.update.add_chunk(index, data, self.slot)
        if self.update.state == ota.VERIFYING:
            reason = self.update.verify(self.slot)
        return reason

    def install(self, commit):
        """Record PENDING_CONFIRM (``commit()``), then point the bootloader at the new slot.

        In that order: a cut between the two boots the old app, which then
        sees it is not running the target and records a rollback; the reverse
        order could boot the new app with no record that it is on trial.
        Reset the board afterwards.
        """
        self.update.switched(self.slot.label)
        commit()
        self.slot.set_boot()

    def after_boot(self):
        """Call early at every boot.  True when the bootloader rolled back (persist the update)."""
        u = self.update
        if u.state == ota.PENDING_CONFIRM and u.target != running_label():
            u.rolled_back()
            return True
        return False

    def confirm(self):
        """Call once the self-test passed.  True when this confirmed a pending update (persist it)."""
        self.rollback = mark_app_valid()
        u = self.update
        if u.state == ota.PENDING_CONFIRM and u.target == running_label():
            u.confirmed()
            return True
        return False


class OtaPartitions:
    """The ESP32's ``ota`` downlink target: ``boards.unix.ota_dirs.OtaDirs``'s interface
    over ``OtaPartition``, with the update journaled in NVS so a download resumes.

    Boot rule (run in the constructor, i.e. at every boot, before the app
    reads ``update`` / ``boot``): the journal says which partition ``install``
    switched to (``update.target``) and ``running_label()`` says which one the
    bootloader started.

    - PENDING_CONFIRM and running == target: the new image on trial
      (``boot.last_boot`` BOOT_TRIAL); ``confirm`` marks it valid.
    - PENDING_CONFIRM and running != target: the bootloader rolled back (the
      new image reset before it confirmed) -> ROLLED_BACK / NOT_CONFIRMED,
      which the app reports as FW_ROLLED_BACK.  A power cut between
      ``install``'s journal commit and its ``set_boot()`` lands here too: the
      new image never ran, and "did not confirm" is still true.
    - VERIFYING / READY at boot (a cut before ``install`` committed): the
      boot partition was never changed; the update is ABORTED so the next
      ``ota`` starts afresh instead of being refused for ever.
    - DOWNLOADING into another partition than the next update partition now
      (the table or the running slot changed): ABORTED, the download restarts.

    A build without app rollback (``mark_app_valid_cancel_rollback`` raises
    OSError -261) would keep a bad image for good, so ``begin`` refuses it
    (``OtaStateError``: the ack is REFUSED ``ota: no app rollback in this
    build (OSError -261)``, and the console says so) unless
    ``allow_without_rollback``.  An image already on trial that lacks
    rollback is confirmed, with a console line saying nothing could have
    rolled it back.

    >>> o = OtaPartitions(board.journal_slots("ota"))
    >>> o.update.state_name, o.update.next_index    # ('DOWNLOADING', 17) after a power cut
    """

    def __init__(self, slots, slot=None, allow_without_rollback=False):
        self.part = OtaPartition(ota.Update(), slot)
        self.slot = self.part.slot
        self.capacity = self.slot.capacity
        self.allow_without_rollback = allow_without_rollback
        self.rollback_error = 0
        self.journal = Journal(slots, max_payload=OTA_JOURNAL_BYTES)
        self.running = running_label()
        self.boot = ota.BootState((self.running, self.slot.label), self.running)
        self.boot.booted = self.running
        download_slot = self._load()
        self._after_boot(download_slot)

    @property
    def update(self):
        return self.part.update

    @property
    def rollback(self):
        """None (not asked yet this boot), True, or False: does this build have app rollback?"""
        return self.part.rollback

    def _load(self):
        """Restore the journaled update; the label it downloads into, or None."""
        payload = self.journal.load()
        if payload is None:
            return None
        try:
            data = json.loads(payload)
            self.part.update = ota.Update.from_state(data["update"])
            return data.get("slot")
        except (ValueError, KeyError, TypeError) as e:  # a record from an incompatible build
            print("urja: ota: saved update state unreadable (%s): starting afresh" % (e,))
            self.part.update = ota.Update()
            return None

    def _after_boot(self, download_slot):
        u, b = self.update, self.boot
        if u.state == ota.PENDING_CONFIRM:
            if u.target == self.running:
                b.active, b.pending, b.last_boot = b.other(self.running), self.running, ota.BOOT_TRIAL
                return
            self.part.after_boot()
            b.last_boot = ota.BOOT_ROLLED_BACK
        elif u.state == ota.VERIFYING or u.state == ota.READY:
            print("urja: ota: %s was verified but not installed before a reset: aborted"
                  % u.abort_uninstalled())
        elif u.state == ota.DOWNLOADING and download_slot != self.slot.label:
            print("urja: ota: download was into %s, the next update partition is now %s: aborted" % (
                download_slot, self.slot.label))
            u.fail(ota.R_ABORTED)
        else:
            return
        self.save()

    def save(self, now=0):
        """Commit the update (and the partition it downloads into) as one journal record."""
        data = {"update": self.update.to_state(), "slot": self.slot.label}
        self.journal.commit(json.dumps(data).encode(), now)

    def check_rollback(self):
        """Ask the firmware once a boot whether it has app rollback; True / False.

        Calls ``mark_app_valid_cancel_rollback``, harmless on a confirmed image
        (MicroPython: "OK to call on every boot"); never on a trial image (that
        would confirm it before its self-test).  ``rollback_error`` keeps the
        OSError code when the answer is no.
        """
        if self.part.rollback is None:
            if self.boot.pending is not None:
                raise ota.OtaStateError("OTA: the running image is on trial")
            try:
                self.part.rollback = mark_app_valid()
                self.rollback_error = 0 if self.part.rollback else OTA_UNSUPPORTED
            except OSError as e:  # e.g. running from a factory partition
                self.part.rollback, self.rollback_error = False, e.args[0]
            if not self.part.rollback:
                print("urja: ota: no app rollback here (OSError %d; a build needs "
                      "CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE): ota refused, a bad image would stay"
                      % self.rollback_error)
        return self.part.rollback

    def begin(self, manifest, now=0):
        """Start or resume a download; an ``ota.R_*`` code (OtaStateError while one is
        pending, or without app rollback: ``NO_ROLLBACK``, which the ack carries)."""
        if self.update.state != ota.PENDING_CONFIRM and not self.allow_without_rollback \
                and not self.check_rollback():
            raise ota.OtaStateError(NO_ROLLBACK % self.rollback_error)
        reason = self.part.begin(manifest)
        if reason == ota.R_OK:
            self.save(now)
        return reason

    def write_chunk(self, index, data, now=0):
        """Write chunk ``index`` into the partition; after the last one, read it all back
        and check the SHA-256.  An ``ota.R_*`` code."""
        reason = self.part.write_chunk(index, data)
        if reason in (ota.R_OK, ota.R_BAD_HASH, ota.R_IO_ERROR):
            self.save(now)
        return reason

    def install(self, now=0):
        """Switch the bootloader to the verified image for one trial boot; reset afterwards.

        R_BAD_IMAGE when ESP-IDF finds no valid app in it (the hash matched a
        file that is not an ESP32 app), R_IO_ERROR when otadata or the journal
        could not be written; either way the boot partition stays.
        """
        u = self.update
        if u.state != ota.READY:
            raise ota.OtaStateError("OTA: install needs READY, not %s" % u.state_name)
        ready = u.to_state()
        try:
            self.part.install(lambda: self.save(now))
        except OSError as e:
            # The switch did not happen: back to the READY record, then FAILED.
            reason = ota.R_BAD_IMAGE if e.args[0] == OTA_VALIDATE_FAILED else ota.R_IO_ERROR
            print("urja: ota: slot %s not made bootable: %s" % (self.slot.label, e))
            self.part.update = ota.Update.from_state(ready)
            self.part.update.fail(reason)
            try:
                self.save(now)
            except OSError:
                pass  # the journal still says READY: the next boot aborts it
            return reason
        self.boot.arm(self.slot.label)
        return ota.R_OK

    def confirm(self, now=0):
        """Call after the self-test passed (MQTT up).  True when this boot made the trial
        image permanent; False when not on trial or the firmware refused."""
        b = self.boot
        if b.pending is None or b.booted != b.pending:
            return False
        try:
            self.part.rollback = mark_app_valid()
        except OSError as e:
            print("urja: ota: could not mark slot %s valid (%s): the bootloader rolls back "
                  "at the next reset" % (self.running, e))
            return False
        if not self.part.rollback:
            print("urja: ota: this MicroPython build has no app rollback (OSError %d): "
                  "slot %s stays whatever happens" % (OTA_UNSUPPORTED, self.running))
        b.confirm()
        if self.update.state == ota.PENDING_CONFIRM:
            self.update.confirmed()
        self.save(now)
        return True


def board_ota_slots(board, allow_without_rollback=False):
    """``OtaPartitions`` on ``board``'s ``ota`` journal, or None (said on the console) when
    the partition table has no OTA app partitions (stock MicroPython: one factory app).

    >>> slots = board_ota_slots(board)
    """
    try:
        return OtaPartitions(board.journal_slots("ota"), None, allow_without_rollback)
    except OSError as e:
        print("urja: ota: no OTA app partition to update (%s): flash a table with ota_0/ota_1 "
              "(boards/esp32/partitions-urja-4MiB.csv)" % (e,))
        return None
