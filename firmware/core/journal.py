"""Power-fail-safe two-slot journal: the meter's state survives a cut at any instant.

Each commit writes one whole record into the slot that does *not* hold the
newest valid record, so a write torn by a power cut can only damage the older
copy; at boot the newest record whose magic, version, length and CRC check
wins.  Storage is injected (``boards.hal.SlotStorage``); the journal does no
I/O of its own and never reads a clock (``now`` is an argument).

Record layout (big-endian)::

    b"UJ" | version u8 | sequence u32 | payload length u32 | payload | CRC-32 u32

The CRC (``binascii.crc32``, the zlib/ZIP polynomial) covers every byte
before it.  Bytes after the CRC are ignored, so a raw flash sector read back
whole (with erased 0xFF tail) still parses.

>>> j = Journal(storage)
>>> j.load()                      # None on a fresh meter
>>> j.commit(b'{"balance_paise": 50000}', now=1795737600)
1
>>> Journal(storage).load()
b'{"balance_paise": 50000}'
"""
import binascii
import json
import struct

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

_MAGIC = const(b"UJ")
_VERSION = const(1)
_HEADER_FMT = const(">BII")  # version, sequence, payload length (after the magic)
_HEADER_LEN = const(11)  # 2 magic + 1 version + 4 sequence + 4 length
_CRC_LEN = const(4)
RECORD_OVERHEAD = const(15)  # _HEADER_LEN + _CRC_LEN

_SEQ_MOD = const(0x100000000)  # sequence numbers are u32
_SEQ_HALF = const(0x80000000)
_DAY_S = const(86400)

_DEFAULT_MAX_PAYLOAD = const(4096)
_FIRST_BUF = const(2048)  # commit_members' first record buffer; it grows as needed
# ESP32 NVS wear, rough: a 24 KiB partition is 6 pages of 126 32-byte entries
# (one page kept free for garbage collection, so 5 usable), flash endures about
# 100,000 erases a page.  A 1 KiB record costs about 33 entries, so over 10
# years: 5 * 100000 * 126 / 33 / 3650 = 523 records a day.  Budget a bit below.
_DEFAULT_WRITES_PER_DAY_BUDGET = const(480)

# Why a slot's record was rejected (small int codes, names for logs).
SLOT_VALID = const(0)
SLOT_EMPTY = const(1)  # never written (None) or erased to nothing
SLOT_SHORT = const(2)  # shorter than its header or its declared length: a torn write
SLOT_BAD_MAGIC = const(3)
SLOT_BAD_VERSION = const(4)
SLOT_BAD_CRC = const(5)


def __getattr__(name):
    # JournalError (a ValueError): A payload the journal refuses to store (too large, not
    # bytes).  Made on first use and kept in the module dict (a class held from import on
    # costs ~200 bytes of heap that a meter fed sane inputs never needs, issue 3); raise
    # sites here call ``__getattr__("JournalError")``, while ``journal.JournalError`` and
    # ``from firmware.core.journal import JournalError`` work as for any class.
    if name == "JournalError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # SLOT_REASON_NAMES (index = SLOT_* code, for logs) is made when asked for,
    # from one string: a tuple of strings held from import on would sit in
    # every meter's heap for nothing.
    if name == "SLOT_REASON_NAMES":
        return tuple("valid,empty,short,bad magic,bad version,bad crc".split(","))
    raise AttributeError(name)


# A str's UTF-8 bytes: a copy on CPython; on MicroPython, where a str is a
# buffer, a view of the str itself (no second copy of a member's JSON text)
_utf8 = str.encode
try:
    memoryview("")  # type: ignore[arg-type]
    _utf8 = memoryview  # type: ignore[assignment]
except TypeError:  # CPython
    pass


def seq_newer(a, b):
    """True when sequence ``a`` is newer than ``b`` in u32 serial-number arithmetic (RFC 1982).

    >>> seq_newer(0, 0xFFFFFFFF)   # 0 follows 2**32 - 1
    True
    """
    d = (a - b) % _SEQ_MOD
    return 0 < d < _SEQ_HALF


def _seal(buf, seq, n):
    """Write header and CRC around the ``n`` payload bytes already at ``buf[_HEADER_LEN:]``."""
    end = _HEADER_LEN + n
    buf[0:2] = _MAGIC
    struct.pack_into(_HEADER_FMT, buf, 2, _VERSION, seq % _SEQ_MOD, n)
    struct.pack_into(">I", buf, end, binascii.crc32(memoryview(buf)[0:end]) & 0xFFFFFFFF)
    return end + _CRC_LEN


def encode_record(seq, payload):
    """The bytes of one record holding ``payload`` with sequence ``seq`` (a bytearray)."""
    n = len(payload)
    rec = bytearray(n + RECORD_OVERHEAD)
    rec[_HEADER_LEN:_HEADER_LEN + n] = payload
    _seal(rec, seq, n)
    return rec


def decode_record(data):
    """(reason, sequence, payload) of the record in ``data``; payload is None unless valid.

    >>> decode_record(encode_record(7, b"hi"))
    (0, 7, b'hi')
    """
    if not data:
        return SLOT_EMPTY, 0, None
    if len(data) < RECORD_OVERHEAD:
        return SLOT_SHORT, 0, None
    if data[0:2] != _MAGIC:
        return SLOT_BAD_MAGIC, 0, None
    version, seq, length = struct.unpack_from(_HEADER_FMT, data, 2)
    if version != _VERSION:
        return SLOT_BAD_VERSION, seq, None
    end = _HEADER_LEN + length
    if end + _CRC_LEN > len(data):
        return SLOT_SHORT, seq, None
    view = memoryview(data)
    want = struct.unpack_from(">I", data, end)[0]
    if binascii.crc32(view[0:end]) & 0xFFFFFFFF != want:
        return SLOT_BAD_CRC, seq, None
    return SLOT_VALID, seq, bytes(view[_HEADER_LEN:end])


class WearCounter:
    """Counts flash writes: in total, in the current UTC day and in the day before.

    The counts live in RAM; keep ``to_state()`` inside the journalled payload
    if they must survive a reset.

    >>> w = WearCounter(budget_per_day=2)
    >>> for _ in range(3): w.record(now=86400)
    >>> w.today, w.total, w.over_budget(now=86400)
    (3, 3, True)
    """

    def __init__(self, budget_per_day=_DEFAULT_WRITES_PER_DAY_BUDGET):
        self.budget_per_day = budget_per_day
        self.day = None  # UTC day number (now // 86400) that ``today`` counts
        self.today = 0
        self.previous_day = 0
        self.total = 0

    def roll(self, now):
        """Move the day window forward to ``now``; a clock that steps back keeps the current day."""
        day = now // _DAY_S
        if self.day is None:
            self.day = day
        elif day == self.day + 1:
            self.previous_day, self.today, self.day = self.today, 0, day
        elif day > self.day + 1:
            self.previous_day, self.today, self.day = 0, 0, day

    def record(self, now):
        self.roll(now)
        self.today += 1
        self.total += 1

    def over_budget(self, now):
        """True when more writes than the daily budget happened in ``now``'s UTC day."""
        self.roll(now)
        return self.today > self.budget_per_day

    def to_state(self):
        return {"day": self.day, "today": self.today, "previous_day": self.previous_day,
                "total": self.total, "budget_per_day": self.budget_per_day}

    @classmethod
    def from_state(cls, data):
        w = cls(data["budget_per_day"])
        w.day, w.today = data["day"], data["today"]
        w.previous_day, w.total = data["previous_day"], data["total"]
        return w


class Journal:
    """Two-slot journal over a ``SlotStorage``; payloads are opaque bytes.

    After ``load()``: ``slot`` / ``sequence`` name the newest valid record
    (None / 0 when there is none) and ``slot_reasons`` says why each slot was
    or was not usable (``SLOT_*`` codes), so a boot can report a torn write.
    ``wear`` (a ``WearCounter``) counts the writes (``writes_today``,
    ``writes_total``).

    >>> j = Journal(storage, max_payload=2048)
    >>> state = j.load() or b"{}"
    >>> seq = j.commit(state, now=1795737600)
    >>> seq = j.commit_members(iter([("balance_paise", 50000)]), now=1795737660)

    ``commit_members`` (the meter's state, every interval) reuses one record
    buffer: ``storage.write`` gets a view that is valid during the call only.
    """

    def __init__(self, storage, max_payload=_DEFAULT_MAX_PAYLOAD,
                 budget_per_day=_DEFAULT_WRITES_PER_DAY_BUDGET):
        self.storage = storage
        self.max_payload = max_payload
        self.wear = WearCounter(budget_per_day)  # writes a day before ``wear.over_budget``
        self.slot = None
        self.sequence = 0
        self.slot_reasons = [SLOT_EMPTY, SLOT_EMPTY]
        self._loaded = False
        self._buf = None  # the record buffer commit_members reuses

    def load(self):
        """Payload of the newest valid record, or None when neither slot holds one."""
        best = None
        payload = None
        for slot in (0, 1):
            reason, seq, body = decode_record(self.storage.read(slot))
            self.slot_reasons[slot] = reason
            if reason == SLOT_VALID and (best is None or seq_newer(seq, self.sequence)):
                best, self.sequence, payload = slot, seq, body
        self.slot = best
        if best is None:
            self.sequence = 0
        self._loaded = True
        return payload

    def reserve(self, size=_FIRST_BUF):
        """Allocate the record buffer ``commit_members`` reuses now (``size`` bytes, at
        most the largest record), not at the first commit: called early (``Meter`` does,
        before it builds its state), it takes its one contiguous block while the heap
        still has room in one piece.
        """
        if self._buf is None:
            self._buf = bytearray(min(size, self.max_payload + RECORD_OVERHEAD))

    def commit(self, payload, now):
        """Write ``payload`` (bytes-like) as the new newest record; returns its sequence number.

        The write goes to the slot not holding the newest valid record.  If the
        storage raises, the journal still points at the previous record.
        """
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise __getattr__("JournalError")("journal payload must be bytes, got %s" % type(payload).__name__)
        n = len(payload)
        self._check_size(n)
        # a record of its own (commit_members keeps a buffer for frequent commits)
        buf = bytearray(n + RECORD_OVERHEAD)
        buf[_HEADER_LEN:_HEADER_LEN + n] = payload
        return self._write(buf, n, now)

    def commit_members(self, pairs, now):
        """``commit`` a JSON object made of the iterable ``pairs`` of ``(name, value)``
        members, written one at a time (a generator need hold only one
        value's data at once); returns the sequence.  A value that is a generator
        of ``(name, value)`` pairs is written as a nested object, member by member.

        >>> seq = j.commit_members(iter([("a", 1), ("b", [2])]), now)  # holds {"a": 1, "b": [2]}
        """
        # Each member's JSON goes straight into the reused record buffer: no
        # buffer of the whole text besides the record (in a 128 KB heap, room
        # for a second record-sized block is what runs out first), and only
        # one member's text is alive at a time.
        n = self._put_object(_HEADER_LEN, pairs) - _HEADER_LEN
        self._check_size(n)
        return self._write(self._buf, n, now)

    def _put_object(self, pos, pairs):
        # A member whose value is itself a generator of pairs is written the same
        # way, as a nested object: a large part of the state (the credit account's
        # twenty fields) then needs no dict and no text of its own.
        pos = self._put(pos, b"{")
        sep = ""
        for k, v in pairs:
            # separator, name and colon in one piece: one copy, not three
            pos = self._put(pos, _utf8("%s%s: " % (sep, json.dumps(k))))
            if hasattr(v, "send"):  # a generator (no JSON value has ``send``)
                pos = self._put_object(pos, v)
            else:
                pos = self._put(pos, _utf8(json.dumps(v)))
            sep = ", "
        return self._put(pos, b"}")

    def _put(self, pos, data):
        """Copy ``data`` into the record buffer at ``pos`` (growing it); returns the end."""
        end = pos + len(data)
        buf = self._buf
        if buf is None or end + _CRC_LEN > len(buf):
            self._check_size(end - _HEADER_LEN)
            # with 256..511 bytes to spare, so a state that grows a little (events,
            # top-up ids) does not need a new contiguous block at every commit;
            # never more than the largest record (end <= max_payload + _HEADER_LEN)
            grown = bytearray(min(max(_FIRST_BUF, (end + _CRC_LEN + 511) & ~255),
                                  self.max_payload + RECORD_OVERHEAD))
            if buf is not None:
                grown[0:pos] = memoryview(buf)[0:pos]
            buf = self._buf = grown
        memoryview(buf)[pos:end] = data
        return end

    def _check_size(self, n):
        if n > self.max_payload:
            raise __getattr__("JournalError")("journal payload of %d bytes exceeds the %d-byte limit"
                               % (n, self.max_payload))

    def _write(self, buf, n, now):
        """Seal the ``n``-byte payload in record buffer ``buf`` and write it to the older slot."""
        if not self._loaded:
            self.load()  # must know which slot is newest before overwriting one
        target = 0 if self.slot is None else 1 - self.slot
        seq = (self.sequence + 1) % _SEQ_MOD
        # ``storage.write`` gets a view of the reused buffer, valid during the call
        self.storage.write(target, memoryview(buf)[0:_seal(buf, seq, n)])
        self.wear.record(now)
        self.slot, self.sequence = target, seq
        self.slot_reasons[target] = SLOT_VALID
        return seq

    @property
    def writes_today(self):
        return self.wear.today

    @property
    def writes_total(self):
        return self.wear.total
