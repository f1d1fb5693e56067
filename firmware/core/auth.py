"""Downlink authentication: HMAC-SHA256, canonical messages, replay/expiry guard.

MicroPython has ``hashlib.sha256`` but no ``hmac`` module, so RFC 2104 is
written out here.  Every downlink command (top-up, relay, tariff, ...) is a
plain dict::

    {"kind": "topup", "meter_id": "M-0001", "counter": 7, "expires_at": 1795740000,
     "id": "T-42", "fields": ["T-42", 50000], "mac": "<64 hex chars>"}

and the MAC is ``hmac_sha256(key, canonical(kind, meter_id, counter,
expires_at, fields))`` in lower-case hex.  The head-end (CPython) builds the
same bytes with this same module (``sign``, ``make_command``, ``make_topup``:
the signing half, in ``firmware.core.signing``, importable from here).

Rules the head-end must follow:
- ``counter`` is per meter, starts at 1 and only grows; ``expires_at`` is UTC
  seconds and the command is still valid *at* ``expires_at`` (rejected from
  ``expires_at + 1`` on).
- The command ``id`` is the first field, so it is covered by the MAC
  (``cmd["id"] == cmd["fields"][0]``, else MALFORMED).

>>> cmd = make_topup(b"k" * 32, "M-0001", 1, 1795740000, "T-42", 50000)
>>> DownlinkGuard("M-0001").check(b"k" * 32, cmd, 1795737600) == OK
True
"""
import binascii
import hashlib

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

_BLOCK = const(64)  # SHA-256 block size in bytes (RFC 2104 "B")
_MAC_HEX_LEN = const(64)
PREFIX = b"URJA1|"  # version tag: a future format cannot collide with this one

# Reason codes returned by DownlinkGuard.check (small ints for journals/uplinks).
OK = const(0)
BAD_MAC = const(1)
REPLAYED = const(2)
OUT_OF_ORDER = const(3)
EXPIRED = const(4)
WRONG_METER = const(5)
MALFORMED = const(6)

# Error texts, one string split by ``_error`` when a raise needs one: a literal of its
# own per raise would be one more str object (~32 B) in every meter's heap.
_ERRORS = const("%s must be str or int, got %r\n"
                "%s %r: only printable ASCII without '|'\n"
                "%s must be an int >= 0, got %r\n"
                "kind must be a non-empty str\n"
                "meter_id must be a non-empty str\n"
                "fields must be a list\n"
                "not a top-up command\n"
                "remember must be an int >= 1\n"
                "accept: counter %r not above %d\n"
                "accept: bad or repeated id %r\n"
                "bad last_counter %r")


def _error(i, args=()):
    """AuthError with text ``i`` of ``_ERRORS`` formatted with the tuple ``args``."""
    return __getattr__("AuthError")(_ERRORS.split("\n")[i] % args)


def __getattr__(name):
    # AuthError (a ValueError): A message that cannot be put into canonical form, or a
    # misuse of the guard.  Made on first use and kept in the module dict (a class held
    # from import on costs ~200 bytes of heap that a meter fed sane inputs never needs,
    # issue 3); raise sites here go through ``_error``, while
    # ``auth.AuthError`` and ``from firmware.core.auth import AuthError`` work as for any
    # class.
    if name == "AuthError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # REASON_NAMES ({code: name}) is built when asked for (logs, acks, tests):
    # held from import on, it would sit in every meter's heap for nothing.
    if name == "REASON_NAMES":
        return {
            OK: "OK",
            BAD_MAC: "BAD_MAC",
            REPLAYED: "REPLAYED",
            OUT_OF_ORDER: "OUT_OF_ORDER",
            EXPIRED: "EXPIRED",
            WRONG_METER: "WRONG_METER",
            MALFORMED: "MALFORMED",
        }
    # The signing half (sign, make_command, make_topup: the head-end's, the simulator's
    # and tests') lives in ``firmware.core.signing``, loaded on first use: a meter only
    # checks commands.  They stay importable from here.
    if name.startswith("_"):
        raise AttributeError(name)
    from firmware.core import signing
    if not hasattr(signing, name):
        raise AttributeError(name)
    return getattr(signing, name)


TOPUP = "topup"
_COMMAND_KEYS = const(("kind", "meter_id", "counter", "expires_at", "id", "fields", "mac"))


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 HMAC with SHA-256 (32-byte result).

    >>> hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex()[:8]
    '5bdcc146'
    """
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(len(key)):
        ipad[i] = key[i]
        opad[i] = key[i]
    for i in range(_BLOCK):
        ipad[i] ^= 0x36
        opad[i] ^= 0x5C
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def macs_equal(a: bytes, b: bytes) -> bool:
    """Compare two MACs in time independent of where they differ (no early exit)."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def _text(value, what):
    # Printable ASCII without '|': the separator cannot appear inside a part,
    # so the byte string splits back into exactly one list of parts.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _error(0, (what, value))  # "%s must be str or int, got %r"
    if isinstance(value, int):
        return b"%d" % value
    raw = value.encode()
    for c in raw:
        if c < 0x20 or c > 0x7E or c == 0x7C:
            raise _error(1, (what, value))  # "%s %r: only printable ASCII without '|'"
    return raw


def canonical(kind: str, meter_id: str, counter: int, expires_at: int, fields) -> bytes:
    """The exact bytes that are signed for one downlink command.

    Layout (ASCII): ``URJA1|kind|meter_id|counter|expires_at|f1|f2|...``
    - ``kind`` and ``meter_id``: non-empty str; ``counter`` and ``expires_at``:
      int >= 0 in decimal without leading zeros or sign;
    - each field is a str or an int (decimal, '-' for negatives), in list order;
      bools, floats, None, bytes are refused;
    - strings: printable ASCII (0x20..0x7E) without '|'.
    Raises AuthError otherwise.  Nothing comes from iterating a dict, so
    CPython and MicroPython produce the same bytes.

    >>> canonical("topup", "M-0001", 7, 1795740000, ["T-42", 50000])
    b'URJA1|topup|M-0001|7|1795740000|T-42|50000'
    """
    if not isinstance(kind, str) or not kind:
        raise _error(3)  # "kind must be a non-empty str"
    if not isinstance(meter_id, str) or not meter_id:
        raise _error(4)  # "meter_id must be a non-empty str"
    if not isinstance(fields, (list, tuple)):
        raise _error(5)  # "fields must be a list"
    parts = [_text(kind, "kind"), _text(meter_id, "meter_id")]
    # counter, expires_at: int >= 0 (inline, not a helper: one function object fewer)
    for what, value in (("counter", counter), ("expires_at", expires_at)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _error(2, (what, value))  # "%s must be an int >= 0, got %r"
        parts.append(b"%d" % value)
    for i in range(len(fields)):
        parts.append(_text(fields[i], "field %d" % i))
    return PREFIX + b"|".join(parts)


def read_topup(cmd: dict):
    """(topup_id, amount_paise) of a top-up command (call after check() == OK).

    Raises AuthError if ``cmd`` is not a well-formed top-up.
    """
    if not isinstance(cmd, dict) or cmd.get("kind") != TOPUP or not _topup_fields_ok(cmd.get("fields")):
        raise _error(6)  # "not a top-up command"
    fields = cmd["fields"]
    return fields[0], fields[1]


def _topup_fields_ok(fields) -> bool:
    if not isinstance(fields, list) or len(fields) != 2:
        return False
    tid, amount = fields[0], fields[1]
    if not isinstance(tid, str) or not tid:
        return False
    return isinstance(amount, int) and not isinstance(amount, bool) and amount > 0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse(cmd):
    """(canonical bytes, mac bytes) of a command, or None when malformed."""
    if not isinstance(cmd, dict):
        return None
    for name in _COMMAND_KEYS:
        if name not in cmd:
            return None
    counter = cmd["counter"]
    expires_at = cmd["expires_at"]
    fields = cmd["fields"]
    cmd_id = cmd["id"]
    mac_hex = cmd["mac"]
    if not _is_int(counter) or counter < 1 or not _is_int(expires_at):
        return None
    if not isinstance(fields, list) or not fields:
        return None
    if not isinstance(cmd_id, str) or not cmd_id or fields[0] != cmd_id:
        return None
    if cmd["kind"] == TOPUP and not _topup_fields_ok(fields):
        return None
    if not isinstance(mac_hex, str) or len(mac_hex) != _MAC_HEX_LEN:
        return None
    try:
        mac = binascii.unhexlify(mac_hex)
        msg = canonical(cmd["kind"], cmd["meter_id"], counter, expires_at, fields)
    except (ValueError, TypeError):  # bad hex digits, or AuthError from canonical
        return None
    return msg, mac


class DownlinkGuard:
    """Decides whether a downlink command may be applied, exactly once.

    State: the last accepted counter and the ids of the last ``remember``
    accepted commands.  ``check`` never changes state; the caller applies the
    command, then calls ``accept`` and journals ``to_state()`` together with
    the effect, so a power cut cannot apply a command twice or lose it.

    >>> g = DownlinkGuard("M-0001")
    >>> cmd = make_topup(b"k", "M-0001", 1, 100, "T-1", 500)
    >>> g.check(b"k", cmd, 50)
    0
    >>> g.accept(cmd); g.check(b"k", cmd, 50) == REPLAYED
    True
    """

    def __init__(self, meter_id: str, remember: int = 16):
        if not isinstance(meter_id, str) or not meter_id:
            raise _error(4)  # "meter_id must be a non-empty str"
        if not _is_int(remember) or remember < 1:
            raise _error(7)  # "remember must be an int >= 1"
        self.meter_id = meter_id
        self.last_counter = 0  # counters start at 1, so 0 means "nothing accepted yet"
        # ring of accepted ids, preallocated; "" = empty slot.  Its length is ``remember``
        # (not kept as an attribute too: one member fewer in every meter's heap)
        self._ids = [""] * remember
        self._next = 0  # ring slot the next accepted id goes to

    def check(self, key: bytes, cmd: dict, now: int) -> int:
        """Reason code for ``cmd`` at UTC second ``now``; OK means apply it.

        Order: MALFORMED, WRONG_METER, BAD_MAC, REPLAYED, OUT_OF_ORDER, EXPIRED.
        The MAC is checked before anything that depends on guard state.
        """
        parsed = _parse(cmd)
        if parsed is None:
            return MALFORMED
        if cmd["meter_id"] != self.meter_id:
            return WRONG_METER
        msg, mac = parsed
        if not macs_equal(hmac_sha256(key, msg), mac):
            return BAD_MAC
        counter = cmd["counter"]
        if counter == self.last_counter or cmd["id"] in self._ids:
            return REPLAYED
        if counter < self.last_counter:
            return OUT_OF_ORDER
        if now > cmd["expires_at"]:  # valid up to and including expires_at
            return EXPIRED
        return OK

    def accept(self, cmd: dict) -> None:
        """Record an applied command (counter and id).  Only after check() == OK."""
        counter = cmd.get("counter", 0)
        cmd_id = cmd.get("id", "")
        if not _is_int(counter) or counter <= self.last_counter:
            raise _error(8, (counter, self.last_counter))  # "accept: counter %r not above %d"
        if not isinstance(cmd_id, str) or not cmd_id or cmd_id in self._ids:
            raise _error(9, (cmd_id,))  # "accept: bad or repeated id %r"
        self.last_counter = counter
        self._ids[self._next] = cmd_id
        self._next = (self._next + 1) % len(self._ids)

    def accepted_ids(self) -> "list[str]":
        """Remembered ids, oldest first."""
        out = []  # type: list[str]
        ids = self._ids
        for i in range(len(ids)):
            cmd_id = ids[(self._next + i) % len(ids)]
            if cmd_id:
                out.append(cmd_id)
        return out

    def to_state(self) -> dict:
        return {
            "meter_id": self.meter_id,
            "remember": len(self._ids),
            "last_counter": self.last_counter,
            "ids": self.accepted_ids(),
        }

    @classmethod
    def from_state(cls, data: dict) -> "DownlinkGuard":
        guard = cls(data["meter_id"], data["remember"])
        last = data["last_counter"]
        if not _is_int(last) or last < 0:
            raise _error(10, (last,))  # "bad last_counter %r"
        ids = data["ids"]
        # keep the newest `remember` ids if the stored list is longer
        remember = len(guard._ids)
        for cmd_id in ids[max(0, len(ids) - remember):]:
            guard._ids[guard._next] = cmd_id
            guard._next = (guard._next + 1) % remember
        guard.last_counter = last
        return guard
