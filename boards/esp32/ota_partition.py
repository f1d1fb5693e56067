"""A/B firmware update on the ESP32 with ``esp32.Partition`` (ota_0 / ota_1).

The image is a MicroPython firmware ``.bin`` (app image, firmware frozen in),
written into the OTA app partition after the running one.  The switch is
``set_boot()`` + reset; the ESP-IDF bootloader boots the new app once as
"pending verify" and rolls back on the next reset unless the app called
``mark_app_valid_cancel_rollback()``.  That needs a build with
CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE (MicroPython's ESP32_GENERIC OTA
variant); elsewhere the call raises OSError(-261) and there is no rollback.

Update progress (``firmware.core.ota.Update``) lives in the caller's journal,
not here.  Cannot run off-target; compiled and type-checked in CI.

>>> o = OtaPartition(update)
>>> o.begin(manifest); o.write_chunk(0, data)     # ... then, when READY:
>>> o.install(commit=lambda: journal.commit(state_bytes(), now))
>>> machine.reset()
"""
import esp32

from firmware.core import ota

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

BLOCK_SIZE = const(4096)  # esp32_partition.c: every block operation is on 4 KiB
_IOCTL_BLOCK_ERASE = const(6)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE, extmod/vfs.h
OTA_UNSUPPORTED = const(-261)  # mark_app_valid_cancel_rollback on a build without app rollback


def running_partition():
    # The C constructor takes the BOOT / RUNNING ints as well as a label; the stub only says str.
    return esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]


def running_label():
    """Label of the partition this firmware runs from (e.g. "ota_0")."""
    return running_partition().info()[4]


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
        self.partition.set_boot()


class OtaPartition:
    """The ESP32 counterpart of ``boards.unix.ota_dirs.OtaDirs``.

    The caller persists ``update.to_state()`` in its journal after every call
    that returns, and passes a ``commit`` callable to ``install``.
    """

    def __init__(self, update, slot=None):
        self.update = update
        self.slot = slot if slot is not None else PartitionSlot()

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
        try:
            esp32.Partition.mark_app_valid_cancel_rollback()
        except OSError as err:
            if err.args[0] != OTA_UNSUPPORTED:
                raise
        u = self.update
        if u.state == ota.PENDING_CONFIRM and u.target == running_label():
            u.confirmed()
            return True
        return False
