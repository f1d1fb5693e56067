"""Flash in RAM: the outbox's segment storage and a two-slot storage, for tests,
the simulator and boards without outbox flash (``firmware.app.platform``).

Loaded on first use through ``firmware.core.outbox`` (``from firmware.core.outbox
import RamSegments`` works as before), so a program that does not use them (a board
with outbox flash) need not hold them in its heap.

>>> flash, slots = RamSegments(4, 512), RamSlots()
"""


class RamSegments:
    """In-memory flash for tests and the simulator, with NOR rules enforced.

    The segment-storage interface the outbox programs against:

    - ``segment_count``, ``segment_size``: the geometry, in segments and bytes;
    - ``read(seg, offset, n)`` -> up to ``n`` bytes (erased flash reads
      0xFF; a file store may return fewer bytes past what was written);
    - ``write(seg, offset, data)``: program bytes that were erased;
    - ``erase(seg)``: the whole segment back to erased.

    Programming a byte that is not erased raises ``OSError``: it proves the
    outbox only appends.  ``cut_after_bytes`` simulates a power cut: that
    many more bytes are programmed, then the write raises ``OSError``.

    >>> flash = RamSegments(2, 64)
    >>> flash.write(0, 0, b"ab"); flash.read(0, 0, 3)
    b'ab\\xff'
    """

    def __init__(self, segment_count, segment_size):
        self.segment_count = segment_count
        self.segment_size = segment_size
        self.segments = [bytearray(b"\xff" * segment_size) for _ in range(segment_count)]
        self.writes = 0
        self.bytes_written = 0
        self.erases = [0] * segment_count
        self.cut_after_bytes: "int | None" = None  # None: power stays on

    def read(self, seg, offset, n):
        return bytes(self.segments[seg][offset:offset + n])

    def write(self, seg, offset, data):
        buf = self.segments[seg]
        if offset < 0 or offset + len(data) > self.segment_size:
            raise OSError(22, "write past the end of segment %d" % seg)
        for i in range(len(data)):
            if buf[offset + i] != 0xFF:
                raise OSError(5, "segment %d byte %d programmed twice" % (seg, offset + i))
        n = len(data)
        left = self.cut_after_bytes
        cut = left is not None and left < n
        if left is not None:
            n = min(n, left)
            self.cut_after_bytes = left - n
        buf[offset:offset + n] = data[:n]
        self.writes += 1
        self.bytes_written += n
        if cut:
            raise OSError(5, "power cut after %d of %d bytes" % (n, len(data)))

    def erase(self, seg):
        self.segments[seg][:] = b"\xff" * self.segment_size
        self.erases[seg] += 1


class RamSlots:
    """In-memory two-slot storage for the cursor journal (tests, simulator).

    >>> RamSlots().read(0) is None
    True
    """

    def __init__(self):
        self.slots: "list" = [None, None]

    def read(self, slot):
        return self.slots[slot]

    def write(self, slot, data):
        self.slots[slot] = bytes(data)
