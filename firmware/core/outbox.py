"""Store-and-forward outbox: uplink messages kept in flash until acknowledged.

Messages (opaque bytes, already CBOR) get a per-meter sequence number 1, 2,
3, ... that keeps counting across reboots.  They stay, in order, until
``ack(upto_seq)`` (the broker's PUBACK for QoS 1, which MQTT 3.1.1 section
4.6 requires in publish order, or the head-end's ack) and are replayed with
``peek(n)`` after a reconnect.  The outbox is bounded by bytes (the flash
given to it) and by a message count; when full, the policy either drops the
OLDEST messages (``_DROP_OLDEST``, the default: a fresh reading is worth
more) or refuses the new one (``REFUSE_NEW``, raises ``OutboxFull``).
Either way every lost message is counted in ``dropped_total`` and survives
reboots, so the heartbeat can report it: never silent.

Flash layout (storage injected, see ``RamSegments`` for the interface):

* ``segment_count`` segments of ``segment_size`` bytes (one erase sector
  each), used as a ring and written append-only between erases, so NOR
  flash never needs a bit set back to 1.
* Every record, big-endian::

      0x55 | kind u8 | length u16 | seq u32 | payload | CRC-32 u32

  The CRC (``binascii.crc32``) covers every byte before it.  A segment
  starts with a 16-byte header record (kind ``S``, seq = segment serial,
  payload = first message seq u32) followed by messages (kind ``M``) whose
  seqs run on by one.  Recovery scans each segment up to the first record
  that does not check: a tail torn by a power cut is ignored, and the head
  segment is then *sealed* (the next message opens a new segment) because
  flash cannot be rewritten in place.
* The release cursor (everything <= ``released`` is acked or dropped) and
  the drop counters live in a two-slot ``Journal`` (12-byte payload).  It is
  written before any erase, so a cut between the two never resurrects an
  acked message nor loses an unacked one uncounted.

History (the ``backfill`` downlink): a released message is not erased, only
left behind the cursor; ``history(first, last, n)`` reads it back,
byte-identical, until the ring comes round and erases its segment.
``oldest_held`` is the oldest seq still readable; ``count_held`` counts a
range from the RAM index alone.

Writes (wear): one segment write per message (12 + payload bytes); one
erase + one 16-byte header per segment filled; one cursor write per ``ack``
that releases something (a repeated PUBACK costs nothing) and per drop.
Segments are erased lazily, only when the ring comes round to them.
Example: 8 segments x 4096 B, 100-byte readings every 15 min (96/day):
(4096 - 16) // 112 = 36 readings a segment, 96 / 36 = 2.7 erases a day
over 8 sectors, so each sector is erased every ~3 days: 100,000 erase
cycles last far beyond the meter's life.  RAM: four ints per segment plus
the ``n`` messages a ``peek`` returns; nothing else is cached.

>>> box = Outbox(RamSegments(4, 512), RamSlots(), max_messages=192)
>>> box.append(b"\\xa1\\x01\\x02", now=1795737600)
1
>>> box.peek(10)
[(1, b'\\xa1\\x01\\x02')]
>>> box.ack(1, now=1795737660), box.depth
(1, 0)
"""
import binascii
import struct

from firmware.core.journal import Journal, WearCounter

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

MAGIC = const(0x55)
_KIND_SEGMENT = const(0x53)  # "S"
KIND_MESSAGE = const(0x4D)  # "M"
_HEADER_FMT = const(">BBHI")  # magic, kind, payload length, seq
HEADER_LEN = const(8)
RECORD_OVERHEAD = const(12)  # header + CRC-32
_SEGMENT_HEADER_LEN = const(16)  # overhead + first-seq u32
_CURSOR_FMT = const(">III")  # released, evicted_total, refused_total

_DROP_OLDEST = const(0)
REFUSE_NEW = const(1)

_DEFAULT_MAX_MESSAGES = const(1024)
_SCAN_CHUNK = const(64)


class OutboxError(ValueError):
    """A message or a configuration the outbox cannot take (too large, not bytes, bad sizes)."""


class OutboxFull(OutboxError):
    """REFUSE_NEW policy and no room: the message was not stored (and was counted)."""


def encode_record(kind, seq, payload):
    """Bytes of one record; ``payload`` must be shorter than 65536 bytes.

    >>> encode_record(KIND_MESSAGE, 7, b"hi")[:8]
    b'UM\\x00\\x02\\x00\\x00\\x00\\x07'
    """
    header = struct.pack(_HEADER_FMT, MAGIC, kind, len(payload), seq)
    crc = binascii.crc32(payload, binascii.crc32(header)) & 0xFFFFFFFF
    return header + bytes(payload) + struct.pack(">I", crc)


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


class Outbox:
    """Bounded, power-cut-safe FIFO of uplink messages over segment storage.

    Construction recovers the state from storage (``segments`` as described
    at ``RamSegments``; ``cursor_slots`` a ``boards.hal.SlotStorage``).

    >>> box = Outbox(flash, slots, max_messages=192)   # drops the oldest when full
    >>> seq = box.append(cbor_reading, now)
    >>> for seq, msg in box.peek(8): publish(seq, msg)
    >>> box.ack(seq, now)           # on PUBACK of the last one
    """

    def __init__(self, segments, cursor_slots, max_messages=_DEFAULT_MAX_MESSAGES,
                 policy=_DROP_OLDEST, max_payload=None):
        n, size = segments.segment_count, segments.segment_size
        if n < 2:
            raise OutboxError("outbox needs at least 2 segments, got %d" % n)
        largest = min(size - _SEGMENT_HEADER_LEN - RECORD_OVERHEAD, 0xFFFF)  # u16 length field
        if max_payload is None:
            max_payload = largest
        if max_payload < 1 or max_payload > largest:
            raise OutboxError("max_payload %d does not fit a %d-byte segment (largest %d)"
                              % (max_payload, size, largest))
        if max_messages < 1:
            raise OutboxError("max_messages must be >= 1")
        if policy not in (_DROP_OLDEST, REFUSE_NEW):
            raise OutboxError("unknown outbox policy %r" % (policy,))
        self.store = segments
        self.cursor = Journal(cursor_slots, max_payload=64)
        self.max_messages = max_messages
        self.policy = policy
        self.max_payload = max_payload
        self.wear = WearCounter()  # segment writes (cursor writes: self.cursor.wear)
        self.erases_total = 0
        self.torn_tail = False  # the last recovery found a torn record and sealed the head
        self.recover()

    # ---- recovery -------------------------------------------------------

    def recover(self):
        """Rebuild the RAM index from storage (the constructor calls it)."""
        n = self.store.segment_count
        self._serial = [0] * n  # 0: free (no valid header); serials start at 1
        self._first = [0] * n   # seq of the segment's first message (from its header)
        self._last = [0] * n    # seq of its last valid message, first - 1 when none
        self._end = [0] * n     # offset just past its last valid record
        self._hint = None       # (pos, serial, offset, seq) of a record peek read
        self._history_hint = None  # the same for history
        payload = self.cursor.load()
        if payload is not None and len(payload) == 12:
            self.released, self.evicted_total, self.refused_total = struct.unpack(_CURSOR_FMT, payload)
        else:
            self.released, self.evicted_total, self.refused_total = 0, 0, 0
        top = self.released
        self._head = -1
        for pos in range(n):
            self._scan(pos)
            if self._serial[pos]:
                top = max(top, self._last[pos])
                if self._head < 0 or self._serial[pos] > self._serial[self._head]:
                    self._head = pos
        self.next_seq = top + 1
        self.torn_tail = self._head >= 0 and not self._tail_clean(self._head)
        self._sealed = self.torn_tail

    def _read_record(self, pos, offset):
        """(kind, seq, payload, next offset) of the record at ``offset``, or None if it does not check."""
        size = self.store.segment_size
        if offset + RECORD_OVERHEAD > size:
            return None
        head = self.store.read(pos, offset, HEADER_LEN)
        if len(head) < HEADER_LEN or head[0] != MAGIC:
            return None
        magic, kind, length, seq = struct.unpack(_HEADER_FMT, head)
        end = offset + RECORD_OVERHEAD + length
        if end > size or kind not in (_KIND_SEGMENT, KIND_MESSAGE):
            return None
        rest = self.store.read(pos, offset + HEADER_LEN, length + 4)
        if len(rest) < length + 4:
            return None
        crc = binascii.crc32(memoryview(rest)[:length], binascii.crc32(head)) & 0xFFFFFFFF
        if crc != struct.unpack_from(">I", rest, length)[0]:
            return None
        return kind, seq, rest[:length], end

    def _scan(self, pos):
        rec = self._read_record(pos, 0)
        if rec is None or rec[0] != _KIND_SEGMENT or len(rec[2]) != 4 or rec[1] == 0:
            return  # free: erased, torn header, or garbage
        serial, first = rec[1], struct.unpack(">I", rec[2])[0]
        expect, offset = first, rec[3]
        while True:
            rec = self._read_record(pos, offset)
            # seqs inside a segment run on by one: anything else is not ours
            if rec is None or rec[0] != KIND_MESSAGE or rec[1] != expect:
                break
            expect, offset = expect + 1, rec[3]
        self._serial[pos], self._first[pos] = serial, first
        self._last[pos], self._end[pos] = expect - 1, offset

    def _tail_clean(self, pos):
        """True when nothing was programmed after the last valid record (no torn write)."""
        offset, size = self._end[pos], self.store.segment_size
        while offset < size:
            chunk = self.store.read(pos, offset, min(_SCAN_CHUNK, size - offset))
            if not chunk:
                return True  # a file store: nothing written past here
            for b in chunk:
                if b != 0xFF:
                    return False
            offset += len(chunk)
        return True

    # ---- state ----------------------------------------------------------

    def _order(self):
        """Positions of the segments in use, oldest first."""
        used = [pos for pos in range(self.store.segment_count) if self._serial[pos]]
        used.sort(key=lambda pos: self._serial[pos])
        return used

    def _unreleased_in(self, pos):
        if not self._serial[pos]:
            return 0
        return max(0, self._last[pos] - max(self.released, self._first[pos] - 1))

    @property
    def depth(self):
        """Messages stored and not yet acked (or dropped)."""
        return sum(self._unreleased_in(pos) for pos in range(self.store.segment_count))

    @property
    def bytes_used(self):
        """Bytes of flash held by segments that still have unacked messages."""
        return sum(self._end[pos] for pos in range(self.store.segment_count)
                   if self._unreleased_in(pos))

    @property
    def capacity_bytes(self):
        return self.store.segment_count * self.store.segment_size

    @property
    def dropped_total(self):
        """Life-time count of messages lost for lack of room (evicted + refused)."""
        return self.evicted_total + self.refused_total

    @property
    def segment_writes(self):
        return self.wear.total

    @property
    def cursor_writes(self):
        return self.cursor.wear.total

    def health(self):
        """Fields for the next heartbeat: depth, bytes used, drop counters (life-time totals).

        >>> box.health()["dropped_total"]
        0
        """
        return {"outbox_depth": self.depth, "outbox_bytes": self.bytes_used,
                "dropped_total": self.dropped_total, "evicted_total": self.evicted_total,
                "refused_total": self.refused_total, "next_seq": self.next_seq}

    def _commit_cursor(self, released, evicted, refused, now):
        self.cursor.commit(struct.pack(_CURSOR_FMT, released, evicted, refused), now)
        self.released, self.evicted_total, self.refused_total = released, evicted, refused

    def _oldest_seq(self):
        for pos in self._order():
            if self._unreleased_in(pos):
                return max(self.released + 1, self._first[pos])
        return 0

    # ---- operations -----------------------------------------------------

    def append(self, payload, now):
        """Store ``payload``; returns its sequence number (>= 1).

        Raises ``OutboxError`` for a payload that is not bytes or is larger
        than ``max_payload``, ``OutboxFull`` when REFUSE_NEW finds no room,
        and lets the storage's ``OSError`` through (the head is then sealed).
        """
        if not isinstance(payload, (bytes, bytearray)):
            raise OutboxError("outbox message must be bytes, got %s" % type(payload).__name__)
        if len(payload) > self.max_payload:
            raise OutboxError("outbox message of %d bytes exceeds the %d-byte limit"
                              % (len(payload), self.max_payload))
        if self.depth >= self.max_messages:
            self._make_room(1, self._oldest_seq(), now)
        need = RECORD_OVERHEAD + len(payload)
        head = self._head
        if head < 0 or self._sealed or self._end[head] + need > self.store.segment_size:
            head = self._rotate(now)
        seq = self.next_seq
        try:
            self.store.write(head, self._end[head], encode_record(KIND_MESSAGE, seq, payload))
        except OSError:
            self._sealed = True  # the tail may hold a torn record: never write after it
            raise
        self.wear.record(now)
        self._end[head] += need
        self._last[head] = seq
        self.next_seq = seq + 1
        return seq

    def _make_room(self, count, upto, now):
        """Drop ``count`` oldest messages (up to seq ``upto``) or refuse, per policy."""
        if self.policy == REFUSE_NEW:
            self._commit_cursor(self.released, self.evicted_total, self.refused_total + 1, now)
            raise OutboxFull("outbox full (%d messages, %d bytes): message refused, %d dropped so far"
                             % (self.depth, self.bytes_used, self.dropped_total))
        self._commit_cursor(upto, self.evicted_total + count, self.refused_total, now)

    def _rotate(self, now):
        """Open the next segment in the ring for writing; returns its position."""
        n = self.store.segment_count
        target = (self._head + 1) % n
        lost = self._unreleased_in(target)
        if lost:
            # cursor first: a cut before the erase leaves those seqs released, not resurrected
            self._make_room(lost, self._last[target], now)
        top = 0
        for pos in range(n):
            top = max(top, self._serial[pos])
        self._serial[target] = 0  # free from here until its header is written
        if self._hint is not None and self._hint[0] == target:
            self._hint = None
        if self._history_hint is not None and self._history_hint[0] == target:
            self._history_hint = None
        self.store.erase(target)
        self.erases_total += 1
        header = encode_record(_KIND_SEGMENT, top + 1, struct.pack(">I", self.next_seq))
        self.store.write(target, 0, header)
        self.wear.record(now)
        self._serial[target], self._first[target] = top + 1, self.next_seq
        self._last[target], self._end[target] = self.next_seq - 1, _SEGMENT_HEADER_LEN
        self._head, self._sealed = target, False
        return target

    def ack(self, upto_seq, now):
        """Release every message with seq <= ``upto_seq``; returns how many were released.

        An ack at or below what is already released writes nothing; one beyond
        the newest message releases up to the newest.
        """
        upto = min(upto_seq, self.next_seq - 1)
        if upto <= self.released:
            return 0
        before = self.depth
        self._commit_cursor(upto, self.evicted_total, self.refused_total, now)
        return before - self.depth

    def peek(self, n, after=0):
        """Up to ``n`` oldest stored messages with seq > ``after``, as ``[(seq, payload)]``.

        Reads only what it returns (plus 8-byte headers to skip released ones).
        """
        out, self._hint = self._records(max(after, self.released) + 1, self.next_seq - 1, n,
                                        self._hint)
        return out

    # ---- history: released records stay in flash until their segment is reused ----

    @property
    def oldest_held(self):
        """Seq of the oldest message still in flash, released or not (``next_seq`` if none).

        Everything below it is gone for good (its segment was erased for reuse).
        """
        for pos in self._order():
            if self._last[pos] >= self._first[pos]:
                return self._first[pos]
        return self.next_seq

    def count_held(self, first, last):
        """How many messages with ``first <= seq <= last`` are still in flash (no flash read)."""
        n = 0
        for pos in range(self.store.segment_count):
            if self._serial[pos]:
                lo, hi = max(first, self._first[pos]), min(last, self._last[pos])
                if hi >= lo:
                    n += hi - lo + 1
        return n

    def history(self, first, last, n):
        """Up to ``n`` messages with ``first <= seq <= last`` still in flash, oldest first.

        Unlike ``peek`` this ignores the release cursor: a message acked (or
        dropped) long ago is returned for as long as its segment has not been
        erased for reuse (``oldest_held``).  Byte-identical to what ``append``
        stored, so a re-sent uplink keeps its ``s``.  Reads only what it returns
        plus 8-byte headers; consecutive calls continue where the last one
        stopped without rescanning the segment.

        >>> box.history(5, 9, 2)       # after an ack of 12: still there
        [(5, b'...'), (6, b'...')]
        """
        out, self._history_hint = self._records(first, last, n, self._history_hint)
        return out

    def _records(self, lo, hi, n, hint):
        """(``[(seq, payload)]`` for ``lo <= seq <= hi``, at most ``n``; the new hint).

        ``hint`` is ``(pos, serial, offset, seq)`` of a record read before: a
        walk that starts at or after that seq in that (same-serial) segment
        starts there instead of at the segment's first record.
        """
        out: "list" = []
        if n <= 0 or hi < lo:
            return out, hint
        for pos in self._order():
            if len(out) >= n:
                break
            if self._last[pos] < lo or self._first[pos] > hi:
                continue
            offset = _SEGMENT_HEADER_LEN
            if hint is not None and hint[0] == pos and hint[1] == self._serial[pos] and hint[3] <= lo:
                offset = hint[2]
            while offset < self._end[pos] and len(out) < n:
                head = self.store.read(pos, offset, HEADER_LEN)
                seq, length = struct.unpack_from(">I", head, 4)[0], struct.unpack_from(">H", head, 2)[0]
                if seq > hi:
                    break
                if seq >= lo:
                    rec = self._read_record(pos, offset)
                    if rec is None:  # bit rot since recovery: stop, never hand out bad bytes
                        break
                    if not out:
                        hint = (pos, self._serial[pos], offset, seq)
                    out.append((seq, rec[2]))
                offset += RECORD_OVERHEAD + length
        return out, hint
