"""The uplink outbox on a raw ESP32 data partition: one 4 KiB flash sector per segment.

``PartitionSegments`` is the segment storage ``firmware.core.outbox.Outbox``
programs against (interface at ``RamSegments``), on ``esp32.Partition``'s
block-device calls: ``readblocks(block, buf, offset)``,
``writeblocks(block, data, offset)`` (with an offset it never erases) and
``ioctl(6, block)`` (erase one 4 KiB block).  The release cursor lives in NVS
(``NvsSlots`` keys ``o0``/``o1``, ``Esp32Board.journal_slots("outbox")``).

Why a raw partition, not files on the VFS (littlefs or FAT)
------------------------------------------------------------
- The outbox is already a log-structured NOR layout: records are only
  appended, each CRC'd, a torn tail is found and skipped at boot, and a
  sector is erased only when the ring comes round to it.  That rotation
  *is* the wear levelling: every sector of the ring is erased exactly once
  per lap.  A meter sends ~300 uplinks a day (readings, statuses,
  heartbeats: ``bench/firmware_app.py``) of ~110 B with framing, ~32 KiB
  or 8 sector erases a day: over 16 sectors each sector is erased every
  ~2 days, so 100,000 erase cycles (SPI NOR datasheets) outlast the meter
  by centuries.  The same 16 sectors keep ~2 days of sent uplinks for
  ``backfill``.
- littlefs (MicroPython's ESP32 VFS) gives the same power-loss safety and
  dynamic wear levelling, but through copy-on-write metadata: each
  append-and-close of a small record commits a metadata entry as well, and
  full metadata pairs are compacted with extra erases, several flash
  programs per reading where the raw ring needs one.  FAT is worse: its
  allocation table and directory entry sit in a few hot sectors rewritten
  on every append (ESP-IDF then needs its wear-levelling layer under FAT).
- ESPHome's answer to flash wear for changing values is to write less
  often (``preferences: flash_write_interval``, default 1 min) and keep
  them in NVS.  We do the same for the only small value written often, the
  release cursor: NVS, once per 8 PUBACKs (``firmware/app/main.py``).
- A partition of its own cannot be filled up by files (OTA staging, logs)
  nor wiped by a VFS reformat, so readings are not lost to either.
Cost: the board needs a partition table with an ``outbox`` data partition
(``boards/esp32/partitions-urja-4MiB.csv``, flashed once).  On a stock
MicroPython table ``find_partition`` raises OSError and the shell keeps the
outbox in RAM (``firmware/app/platform.py`` says so at boot).

Flash encryption is refused: encrypted partitions need 16-byte aligned
writes, and records are appended at any byte offset.
"""
import esp32

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

_SECTOR_SIZE = const(4096)  # esp32_partition.c: BLOCK_SIZE_BYTES, the SPI flash erase unit
_IOCTL_BLOCK_ERASE = const(6)  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE, extmod/vfs.h
_ENOENT = const(2)
_EINVAL = const(22)
_ENOSPC = const(28)


def find_partition(label):
    """The data partition called ``label``; OSError(ENOENT) naming the fix when it is missing.

    >>> find_partition("outbox").info()[4]
    'outbox'
    """
    found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=label)
    if not found:
        raise OSError(_ENOENT, "no data partition %r: flash a partition table that has one "
                      "(boards/esp32/partitions-urja-4MiB.csv)" % (label,))
    return found[0]


class PartitionSegments:
    """``segment_count`` 4 KiB segments at the start of ``partition`` (default: all that fit).

    >>> flash = PartitionSegments(find_partition("outbox"), 16)
    >>> box = Outbox(flash, NvsSlots("urja", 64, ("o0", "o1")))
    """

    segment_size = _SECTOR_SIZE

    def __init__(self, partition, segment_count=None):
        info = partition.info()  # (type, subtype, address, size, label, encrypted)
        self.label = info[4]
        if info[5]:
            raise OSError(_EINVAL, "partition %s is encrypted: the outbox appends at any byte "
                          "offset, encrypted flash needs 16-byte aligned writes" % self.label)
        sectors = info[3] // _SECTOR_SIZE
        if segment_count is None:
            segment_count = sectors
        if segment_count < 2 or segment_count > sectors:
            raise OSError(_ENOSPC, "partition %s holds %d sectors of 4 KiB; the outbox wants %d "
                          "(at least 2)" % (self.label, sectors, segment_count))
        self.partition = partition
        self.segment_count = segment_count

    def _check(self, seg, offset, n):
        if not 0 <= seg < self.segment_count or offset < 0 or offset + n > _SECTOR_SIZE:
            raise OSError(_EINVAL, "outbox %s: segment %r bytes %r..%r out of range"
                          % (self.label, seg, offset, offset + n))

    def read(self, seg, offset, n):
        """Up to ``n`` bytes (fewer at the sector end); erased flash reads 0xFF."""
        n = min(n, _SECTOR_SIZE - offset)
        if n <= 0:
            return b""
        self._check(seg, offset, n)
        buf = bytearray(n)  # returned as is: the outbox only indexes and slices it
        self.partition.readblocks(seg, buf, offset)
        return buf

    def write(self, seg, offset, data):
        """Program erased bytes; with an offset ``writeblocks`` never erases (the outbox appends)."""
        self._check(seg, offset, len(data))
        self.partition.writeblocks(seg, data, offset)

    def erase(self, seg):
        self._check(seg, 0, 0)
        self.partition.ioctl(_IOCTL_BLOCK_ERASE, seg)
