"""The meter's STS token acceptor: decrypt, check, and say exactly why not.

Checks, in order: 20-digit format; CRC under the meter's decoder key (a
wrong key looks the same as a typo, so one reason covers both); key expiry
(the key expiry number KEN is the highest allowed value of the TID's top 8
bits); the replay rule of IEC 62055-41 - a TID already in the memory is
USED, and once the memory is full a TID below the oldest one remembered is
OLD; and the caller's credit headroom (OVERFLOW).

The acceptor does not touch the credit machine.  ``accept`` is pure: it
returns a ``Result`` carrying the quantity in meter units (Wh for
electricity, litres for water and gas, watts for a power limit) and the
acceptor state *after* the token (``result.new_state``).  The caller
journals that state together with the credit, then calls ``commit`` (or
rebuilds with ``from_state``), so a token is applied exactly once even
across a power cut.

Key change: the 1st section is remembered as pending; the 2nd section
completes it (both are encrypted under the current key).  The rollover bit
clears the TID memory, as a new base date restarts the TIDs.

>>> acc = Acceptor(0x0ABC12DEF3456789)
>>> res = acc.accept("29054347139309851356")
>>> (res.reason_name(), res.kind, res.quantity, res.unit)
('accepted', 'electricity', 25600, 'Wh')
>>> acc.commit(res); acc.accept("29054347139309851356").reason_name()
'used'
"""
from firmware.sts import codec
from firmware.sts.ea07 import PRODUCTION, SAMPLE

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

ACCEPTED = const(0)
FORMAT = const(1)       # not 20 digits
BAD_CRC = const(2)      # bad CRC or wrong key
USED = const(3)
OLD = const(4)
KEY_EXPIRED = const(5)
OVERFLOW = const(6)
UNSUPPORTED = const(7)  # a class/subclass this meter does not act on
NO_FIRST_SECTION = const(8)  # key change 2nd section without a pending 1st
FUTURE = const(9)       # TID later than the caller's max_tid (optional guard)

REASON_NAMES = ("accepted", "format", "bad_crc", "used", "old", "key_expired", "overflow",
                "unsupported", "no_first_section", "future")

TID_MEMORY = const(50)  # the standard asks for at least 50 remembered TIDs
WH_PER_TENTH_KWH = const(100)
LITRES_PER_TENTH_M3 = const(100)

_TABLES = {"production": PRODUCTION, "sample": SAMPLE}


class Result:
    """Outcome of one token.  ``quantity``/``unit``: credit in Wh or L, power
    limit in W, or the register to clear (unit 'register'); None otherwise."""

    def __init__(self, reason, token=None, kind="", quantity=None, unit=None, new_state=None):
        self.reason = reason
        self.token = token
        self.kind = kind
        self.quantity = quantity
        self.unit = unit
        self.new_state = new_state

    @property
    def ok(self):
        return self.reason == ACCEPTED

    def reason_name(self):
        return REASON_NAMES[self.reason]


def _quantity(tok):
    """(kind, quantity, unit) in meter units, or None when the meter does not act on it."""
    kind = tok.kind()
    if tok.cls == codec.CLASS_CREDIT:
        if tok.subclass == codec.ELECTRICITY:
            return kind, tok.units() * WH_PER_TENTH_KWH, "Wh"
        if tok.subclass in (codec.WATER, codec.GAS):
            return kind, tok.units() * LITRES_PER_TENTH_M3, "L"
        return None
    if tok.cls == codec.CLASS_MANAGEMENT:
        if tok.subclass == codec.SET_MAX_POWER_LIMIT:
            return kind, tok.value, "W"
        if tok.subclass == codec.CLEAR_CREDIT:
            return kind, tok.value, "register"
        if tok.subclass in (codec.CLEAR_TAMPER, codec.KEY_CHANGE_1, codec.KEY_CHANGE_2):
            return kind, None, None
    return None


class Acceptor:
    """Token acceptor for one meter: decoder key, key attributes, TID memory.

    >>> Acceptor.from_state(Acceptor(5).to_state()).key
    5
    """

    def __init__(self, key, krn=1, key_type=2, ken=255, ti=1, tids=None, pending=None,
                 tables=PRODUCTION, memory=TID_MEMORY):
        self.key = key
        self.krn = krn
        self.key_type = key_type
        self.ken = ken
        self.ti = ti
        self.tids = sorted(tids or [])
        self.pending = pending
        self.tables = tables
        self.memory = memory

    # -- persistence --
    def to_state(self):
        return {"key": "%016x" % self.key, "krn": self.krn, "key_type": self.key_type,
                "ken": self.ken, "ti": self.ti, "tids": list(self.tids),
                "pending": dict(self.pending) if self.pending else None,
                "tables": self.tables.name, "memory": self.memory}

    @classmethod
    def from_state(cls, data):
        return cls(int(data["key"], 16), data["krn"], data["key_type"], data["ken"], data["ti"],
                   list(data["tids"]), data["pending"], _TABLES[data["tables"]], data["memory"])

    def commit(self, result):
        """Adopt ``result.new_state`` (call after journalling it with the credit)."""
        if result.new_state is not None:
            o = Acceptor.from_state(result.new_state)
            self.key, self.krn, self.key_type, self.ken, self.ti = o.key, o.krn, o.key_type, o.ken, o.ti
            self.tids, self.pending, self.tables, self.memory = o.tids, o.pending, o.tables, o.memory

    # -- checks --
    def _tid_reason(self, tid):
        if (tid >> 16) > self.ken:
            return KEY_EXPIRED
        if tid in self.tids:
            return USED
        if len(self.tids) >= self.memory and tid < self.tids[0]:
            return OLD
        return ACCEPTED

    def accept(self, text, headroom=None, max_tid=None):
        """Check one token; nothing here changes ``self``.

        ``headroom``: how much more credit (in the token's meter unit) the
        register can take; a bigger credit is refused as OVERFLOW.
        ``max_tid``: optional guard beyond the standard - the meter's own
        current TID plus a tolerance; later TIDs are refused as FUTURE.  The
        CRC-16 lets about 1 in 10^5 mistyped tokens through as a valid token
        with a random TID, usually far in the future; this catches those.
        """
        try:
            tok = codec.decode(text, self.key, self.tables)
        except codec.TokenFormatError:
            return Result(FORMAT)
        if not tok.crc_ok:
            return Result(BAD_CRC, tok)
        what = _quantity(tok)
        if what is None:
            return Result(UNSUPPORTED, tok, tok.kind())
        kind, qty, unit = what
        state = self.to_state()
        change = tok.key_change()
        if change is not None:
            return self._key_change(tok, change, state)
        reason = self._tid_reason(tok.tid)
        if reason == ACCEPTED and max_tid is not None and tok.tid > max_tid:
            reason = FUTURE
        if reason != ACCEPTED:
            return Result(reason, tok, kind, qty, unit)
        if headroom is not None and unit in ("Wh", "L") and qty > headroom:
            return Result(OVERFLOW, tok, kind, qty, unit)
        tids = sorted(self.tids + [tok.tid])
        state["tids"] = tids[-self.memory:]  # forget the oldest
        return Result(ACCEPTED, tok, kind, qty, unit, state)

    def _key_change(self, tok, change, state):
        if change["section"] == 1:
            state["pending"] = change
            return Result(ACCEPTED, tok, tok.kind(), None, None, state)
        first = self.pending
        if not first:
            return Result(NO_FIRST_SECTION, tok, tok.kind())
        state["key"] = "%08x%08x" % (first["nkho"], change["nklo"])
        state["krn"] = first["krn"]
        state["key_type"] = first["key_type"]
        state["ken"] = (first["kenho"] << 4) | change["kenlo"]
        state["ti"] = change["ti"]
        state["pending"] = None
        if first["ro"]:
            state["tids"] = []
        return Result(ACCEPTED, tok, tok.kind(), None, None, state)
