"""Fast uplink decoding for the ingest hot path: cbor2 (C) with the reference as the judge.

``decode_uplink(topic, payload)`` returns exactly what
``firmware.protocol.messages.decode_uplink`` returns and raises exactly what
it raises, at about a third of the cost (measured 23 us -> ~7 us per
reading uplink on this machine).  The fast path may only *accept*: whenever
it is not sure, the reference decoder (the same code the meter runs)
decides, so every rejection and every error message comes from the
reference.

Why an accepted payload decodes to the same value in both decoders:
cbor2 is more liberal than ``firmware.protocol.cbor`` (indefinite lengths,
duplicate keys, semantic tags such as bignums or shared values that turn
into plain ints, simple values, byte-string keys, trailing bytes).  The
fast path accepts a payload only when

1. it is at most 1024 bytes (so it cannot hold more than the reference's
   ``MAX_ITEMS`` = 1024 data items: every item has at least a one-byte head),
2. the decoded value is *plain*: dict (int/str keys), list, int within
   -2**64 .. 2**64-1, str, bytes, bool, None, nested at most 8 deep (the
   reference allows 16), and
3. ``cbor2.dumps(value) == payload``: re-encoding gives back the same bytes.
   cbor2 writes a plain value with shortest heads, definite lengths, no
   tags, dict keys in the decoded (= payload) order, so the payload holds
   no tag, no float, no duplicate key (it would have collapsed), no
   indefinite length and no trailing byte; on such bytes the two decoders
   build the same value.

Then the reference ``messages.validate`` checks the schema -- except for
readings (nearly all the traffic), whose schema ``_valid_reading`` checks
with exact types in one pass, and only while ``messages`` still declares
the schema it was written for (``_READING_FAST``); whatever it does not
accept goes to ``messages.validate``, which passes or names the error.
Proved by a hypothesis differential test over valid, mutated and hostile
payloads (headend/tests/test_fastdecode.py).

>>> from headend.fastdecode import decode_uplink
>>> decode_uplink(topic, payload)   # drop-in for messages.decode_uplink   # doctest: +SKIP
"""
import cbor2

from firmware.protocol import messages

MAX_FAST_BYTES = 1024   # reference cbor.MAX_ITEMS: items <= bytes
MAX_FAST_DEPTH = 8      # reference cbor.MAX_DEPTH is 16
_INT_MIN = -(1 << 64)
_INT_END = 1 << 64


def _plain(value, depth):
    """True if ``value`` is built only from the types the reference decoder builds the same way."""
    t = type(value)
    if t is int:
        return _INT_MIN <= value < _INT_END
    if t is str or t is bool or value is None or t is bytes:
        return True
    if depth >= MAX_FAST_DEPTH:
        return False
    if t is list:
        for item in value:
            if not _plain(item, depth + 1):
                return False
        return True
    if t is dict:
        for key, item in value.items():
            kt = type(key)
            if not (kt is str or (kt is int and _INT_MIN <= key < _INT_END)):
                return False
            if not _plain(item, depth + 1):
                return False
        return True
    return False  # float, cbor2 tag results (datetime, Decimal, CBORTag, ...), simple values


def _plain_body(body):
    """``_plain(body, 0)`` for a dict, unrolled for the shapes uplinks have (ints and strings
    at the top, lists of lists of ints or nulls below): about 3x fewer Python calls per
    reading uplink.  Anything else goes to ``_plain`` at the depth it was found."""
    lo, hi = _INT_MIN, _INT_END
    for key, value in body.items():
        kt = type(key)
        if not (kt is str or (kt is int and lo <= key < hi)):
            return False
        t = type(value)
        if t is int:
            if not lo <= value < hi:
                return False
        elif t is list:
            for row in value:
                if type(row) is list:
                    for x in row:
                        tx = type(x)
                        if tx is int:
                            if not lo <= x < hi:
                                return False
                        elif not (x is None or tx is str or tx is bool or tx is bytes
                                  or _plain(x, 3)):
                            return False
                elif not _plain(row, 2):
                    return False
        elif not (t is str or t is bool or value is None or t is bytes or _plain(value, 1)):
            return False
    return True


# The reading schema ``_valid_reading`` implements.  Read from the reference at import;
# if it ever differs, every reading goes through ``messages.validate`` again.
_READING_FAST = (
    getattr(messages, "_ENVELOPE", None) == ("v", "int", True, "m", "str", True,
                                             "s", "int", True, "t", "int", True)
    and messages.SCHEMA.get(messages.READING) == ("iv", "int", True, "u", "str", True,
                                                  "cum", "int", True, "r", "list", True)
    and getattr(messages, "READING_RECORD_LEN", None) == 6
    and type(getattr(messages, "FORMAT", None)) is int)


def _valid_reading(body):
    """True if ``messages.validate(READING, body)`` passes, for a body ``_plain_body`` accepted.

    Only a quick "yes": False sends the body to the reference (which may still
    accept it).  Exact types: a plain body has no int subclass but bool, which
    the schema refuses where it wants an int (so ``type(x) is int`` is the
    reference's ``isinstance(x, int) and not isinstance(x, bool)`` here).
    """
    g = body.get
    s, t, r = g("s"), g("t"), g("r")
    if not (type(s) is int and type(t) is int and type(r) is list and s >= 0 and t >= 0
            and type(g("m")) is str and type(g("u")) is str and type(g("iv")) is int
            and type(g("cum")) is int and type(g("v")) is int and g("v") == messages.FORMAT):
        return False
    for row in r:
        if type(row) is not list or len(row) != 6:
            return False
        for x in row:
            if x is not None and type(x) is not int:
                return False
    return True


def _fast(topic_name, payload):
    """The decoded body, or None when the reference decoder must decide."""
    if len(payload) > MAX_FAST_BYTES:
        return None
    meter_id, kind = messages.parse_topic(topic_name)
    body = cbor2.loads(payload)
    if type(body) is not dict or not _plain_body(body) or cbor2.dumps(body) != payload:
        return None
    if not (_READING_FAST and kind == messages.READING and _valid_reading(body)):
        messages.validate(kind, body)
    if body["m"] != meter_id:
        return None
    body["kind"] = kind
    return body


def decode_uplink(topic_name, payload):
    """Same contract as ``messages.decode_uplink``: the validated body with ``kind``, or MessageError.

    >>> decode_uplink(messages.topic("UJ-1", "heartbeat"),
    ...               messages.encode_uplink("heartbeat", "UJ-1", 7, 1795737600, {"up": 60}))["s"]
    7
    """
    try:
        body = _fast(topic_name, payload)
    except Exception:  # anything odd: the reference decides (and names the error)
        body = None
    if body is None:
        return messages.decode_uplink(topic_name, payload)
    return body
