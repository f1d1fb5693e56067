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

Flash layout (storage injected, see ``RamSegments`` in ``firmware.core.ramflash``
for the interface):

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

_MAGIC = const(0x55)
_KIND_SEGMENT = const(0x53)  # "S"
_KIND_MESSAGE = const(0x4D)  # "M"
_HEADER_FMT = const(">BBHI")  # magic, kind, payload length, seq
_HEADER_LEN = const(8)
_RECORD_OVERHEAD = const(12)  # header + CRC-32
_SEGMENT_HEADER_LEN = const(16)  # overhead + first-seq u32
_CURSOR_FMT = const(">III")  # released, evicted_total, refused_total

_DROP_OLDEST = const(0)
REFUSE_NEW = const(1)

_DEFAULT_MAX_MESSAGES = const(1024)
_SCAN_CHUNK = const(64)


def __getattr__(name):
    # The exception classes: OutboxError (a ValueError), a message or a configuration
    # the outbox cannot take (too large, not bytes, bad sizes); OutboxFull (an
    # OutboxError), REFUSE_NEW policy and no room: the message was not stored (and was
    # counted).  Made on first use and kept in the module dict (a class held from import
    # on costs ~250 bytes of heap that a meter fed sane inputs never needs); raise sites
    # here call ``__getattr__("OutboxError")``, while ``outbox.OutboxError`` and ``from
    # firmware.core.outbox import OutboxError`` work as for any class.
    if name == "OutboxError" or name == "OutboxFull":
        g = globals()
        if "OutboxError" not in g:
            g["OutboxError"] = err = type("OutboxError", (ValueError,), {})
            g["OutboxFull"] = type("OutboxFull", (err,), {})
        return g[name]
    # The flash-in-RAM stores (RamSegments, RamSlots) live in ``firmware.core.ramflash``,
    # loaded on first use: a board with outbox flash need not hold them.  They stay
    # importable from here.
    if name.startswith("_"):
        raise AttributeError(name)
    from firmware.core import ramflash
    if not hasattr(ramflash, name):
        raise AttributeError(name)
    return getattr(ramflash, name)


def encode_record(kind, seq, payload):
    """Bytes of one record; ``payload`` must be shorter than 65536 bytes.

    >>> encode_record(0x4D, 7, b"hi")[:8]   # kind "M": a message
    b'UM\\x00\\x02\\x00\\x00\\x00\\x07'
    """
    header = struct.pack(_HEADER_FMT, _MAGIC, kind, len(payload), seq)
    crc = binascii.crc32(payload, binascii.crc32(header)) & 0xFFFFFFFF
    return header + bytes(payload) + struct.pack(">I", crc)


class Outbox:
    """Bounded, power-cut-safe FIFO of uplink messages over segment storage.

    Construction recovers the state from storage (``segments`` as described
    at ``firmware.core.ramflash.RamSegments``; ``slots`` a
    ``boards.hal.SlotStorage`` for the release cursor).

    >>> box = Outbox(flash, slots, max_messages=192)   # drops the oldest when full
    >>> seq = box.append(cbor_reading, now)
    >>> for seq, msg in box.peek(8): publish(seq, msg)
    >>> box.ack(seq, now)           # on PUBACK of the last one
    """

    def __init__(self, segments, slots, max_messages=_DEFAULT_MAX_MESSAGES,
                 policy=_DROP_OLDEST, max_payload=None):
        n, size = segments.segment_count, segments.segment_size
        if n < 2:
            raise __getattr__("OutboxError")("outbox needs at least 2 segments, got %d" % n)
        largest = min(size - _SEGMENT_HEADER_LEN - _RECORD_OVERHEAD, 0xFFFF)  # u16 length field
        if max_payload is None:
            max_payload = largest
        if max_payload < 1 or max_payload > largest:
            raise __getattr__("OutboxError")(
                "max_payload %d does not fit a %d-byte segment (largest %d)" % (max_payload, size, largest))
        if max_messages < 1:
            raise __getattr__("OutboxError")("max_messages must be >= 1")
        if policy not in (_DROP_OLDEST, REFUSE_NEW):
            raise __getattr__("OutboxError")("unknown outbox policy %r" % (policy,))
        self.segments = segments
        self.cursor = Journal(slots, max_payload=64)
        self.max_messages = max_messages
        self.policy = policy
        self.max_payload = max_payload
        self.wear = WearCounter()  # segment writes (cursor writes: self.cursor.wear)
        self.erases_total = 0
        # ---- recovery: the RAM index, rebuilt from storage
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
        # the recovery found a torn record (and sealed the head)
        self.torn_tail = self._head >= 0 and not self._tail_clean(self._head)
        self._sealed = self.torn_tail

    # ---- recovery -------------------------------------------------------

    def _read_record(self, pos, offset):
        """(kind, seq, payload, next offset) of the record at ``offset``, or None if it does not check."""
        size = self.segments.segment_size
        if offset + _RECORD_OVERHEAD > size:
            return None
        head = self.segments.read(pos, offset, _HEADER_LEN)
        if len(head) < _HEADER_LEN or head[0] != _MAGIC:
            return None
        magic, kind, length, seq = struct.unpack(_HEADER_FMT, head)
        end = offset + _RECORD_OVERHEAD + length
        if end > size or kind not in (_KIND_SEGMENT, _KIND_MESSAGE):
            return None
        rest = self.segments.read(pos, offset + _HEADER_LEN, length + 4)
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
            if rec is None or rec[0] != _KIND_MESSAGE or rec[1] != expect:
                break
            expect, offset = expect + 1, rec[3]
        self._serial[pos], self._first[pos] = serial, first
        self._last[pos], self._end[pos] = expect - 1, offset

    def _tail_clean(self, pos):
        """True when nothing was programmed after the last valid record (no torn write)."""
        offset, size = self._end[pos], self.segments.segment_size
        while offset < size:
            chunk = self.segments.read(pos, offset, min(_SCAN_CHUNK, size - offset))
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
        used = [pos for pos in range(self.segments.segment_count) if self._serial[pos]]
        used.sort(key=lambda pos: self._serial[pos])
        return used

    def _unreleased_in(self, pos):
        if not self._serial[pos]:
            return 0
        return max(0, self._last[pos] - max(self.released, self._first[pos] - 1))

    @property
    def depth(self):
        """Messages stored and not yet acked (or dropped)."""
        n = 0
        for pos in range(self.segments.segment_count):
            n += self._unreleased_in(pos)
        return n

    @property
    def bytes_used(self):
        """Bytes of flash held by segments that still have unacked messages."""
        n = 0
        for pos in range(self.segments.segment_count):
            if self._unreleased_in(pos):
                n += self._end[pos]
        return n

    @property
    def dropped_total(self):
        """Life-time count of messages lost for lack of room (evicted + refused)."""
        return self.evicted_total + self.refused_total

    def _commit_cursor(self, released, evicted_total, refused_total, now):
        self.cursor.commit(struct.pack(_CURSOR_FMT, released, evicted_total, refused_total), now)
        self.released, self.evicted_total, self.refused_total = released, evicted_total, refused_total

    # ---- operations -----------------------------------------------------

    def append(self, payload, now):
        """Store ``payload``; returns its sequence number (>= 1).

        Raises ``OutboxError`` for a payload that is not bytes or is larger
        than ``max_payload``, ``OutboxFull`` when REFUSE_NEW finds no room,
        and lets the storage's ``OSError`` through (the head is then sealed).
        """
        if not isinstance(payload, (bytes, bytearray)):
            raise __getattr__("OutboxError")("outbox message must be bytes, got %s" % type(payload).__name__)
        if len(payload) > self.max_payload:
            raise __getattr__("OutboxError")("outbox message of %d bytes exceeds the %d-byte limit"
                                             % (len(payload), self.max_payload))
        if self.depth >= self.max_messages:
            for pos in self._order():  # the oldest message still held makes room
                if self._unreleased_in(pos):
                    self._make_room(1, max(self.released + 1, self._first[pos]), now)
                    break
        need = _RECORD_OVERHEAD + len(payload)
        head = self._head
        if head < 0 or self._sealed or self._end[head] + need > self.segments.segment_size:
            head = self._rotate(now)
        seq = self.next_seq
        try:
            self.segments.write(head, self._end[head], encode_record(_KIND_MESSAGE, seq, payload))
        except OSError:
            self._sealed = True  # the tail may hold a torn record: never write after it
            raise
        self.wear.record(now)
        self._end[head] += need
        self._last[head] = seq
        self.next_seq = seq + 1
        return seq

    def _make_room(self, count, upto_seq, now):
        """Drop ``count`` oldest messages (up to seq ``upto_seq``) or refuse, per policy."""
        if self.policy == REFUSE_NEW:
            self._commit_cursor(self.released, self.evicted_total, self.refused_total + 1, now)
            raise __getattr__("OutboxFull")(
                "outbox full (%d messages, %d bytes): message refused, %d dropped so far"
                % (self.depth, self.bytes_used, self.dropped_total))
        self._commit_cursor(upto_seq, self.evicted_total + count, self.refused_total, now)

    def _rotate(self, now):
        """Open the next segment in the ring for writing; returns its position."""
        n = self.segments.segment_count
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
        self.segments.erase(target)
        self.erases_total += 1
        header = encode_record(_KIND_SEGMENT, top + 1, struct.pack(">I", self.next_seq))
        self.segments.write(target, 0, header)
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
        for pos in range(self.segments.segment_count):
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

    def _records(self, first, last, n, hint):
        """(``[(seq, payload)]`` for ``first <= seq <= last``, at most ``n``; the new hint).

        ``hint`` is ``(pos, serial, offset, seq)`` of a record read before: a
        walk that starts at or after that seq in that (same-serial) segment
        starts there instead of at the segment's first record.
        """
        out: "list" = []
        if n <= 0 or last < first:
            return out, hint
        for pos in self._order():
            if len(out) >= n:
                break
            if self._last[pos] < first or self._first[pos] > last:
                continue
            offset = _SEGMENT_HEADER_LEN
            if hint is not None and hint[0] == pos and hint[1] == self._serial[pos] and hint[3] <= first:
                offset = hint[2]
            while offset < self._end[pos] and len(out) < n:
                head = self.segments.read(pos, offset, _HEADER_LEN)
                seq, length = struct.unpack_from(">I", head, 4)[0], struct.unpack_from(">H", head, 2)[0]
                if seq > last:
                    break
                if seq >= first:
                    rec = self._read_record(pos, offset)
                    if rec is None:  # bit rot since recovery: stop, never hand out bad bytes
                        break
                    if not out:
                        hint = (pos, self._serial[pos], offset, seq)
                    out.append((seq, rec[2]))
                offset += _RECORD_OVERHEAD + length
        return out, hint
