"""Uplink and downlink messages: MQTT topics and CBOR bodies (docs/protocol.md).

One module for both ends: the meter encodes uplinks and decodes downlinks,
the head-end (CPython) decodes and validates uplinks and encodes downlinks,
so the two can never disagree about a field.  The head-end's half (uplinks in,
commands out) is in ``messages_more``, which this module hands out on first use.

Every uplink body is a CBOR map with the envelope ``v`` (format 1), ``m``
(meter id), ``s`` (the meter's uplink sequence number: monotonic across all
kinds, survives reboots; the head-end dedupes on (m, s)) and ``t`` (UTC
seconds when created), plus the fields of its kind.

>>> from firmware.protocol.messages import decode_uplink
>>> body = encode_uplink("heartbeat", "UJ-1", 7, 1795737600, {"up": 60, "hf": 51200})
>>> decode_uplink(topic("UJ-1", "heartbeat"), body)["s"]
7
"""
from firmware.protocol import cbor

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

FORMAT = 1
PREFIX = "urja/v1/"

READING = "reading"
EVENT = "event"
STATUS = "status"
HEARTBEAT = "heartbeat"
ACK = "ack"
SNAPSHOT = "snapshot"
UPLINK_KINDS = (READING, EVENT, STATUS, HEARTBEAT, ACK, SNAPSHOT)



def _fields(kind):
    # The field schema of an uplink ``kind``, of the uplink envelope ("envelope") or of
    # a downlink "command": flat (name, type, required) triples, one list, not a tuple
    # per field.  Types: "int", "str", "bool", "list", "int?" (int or null).  Unknown
    # fields are allowed (forward compatible) but every listed one is checked.  Lists
    # built per call from interned names: as constant tuples they would hold ~1.8 KB of
    # a meter's heap from import on.  SCHEMA, COMMAND_FIELDS and _ENVELOPE, the same
    # as tuples, are made from these when asked for (the head-end and its tests).
    if kind == "envelope":
        return ["v", "int", True, "m", "str", True, "s", "int", True, "t", "int", True]
    if kind == READING:
        # records: [start_t, energy, avg_mv|null, avg_ma|null, flags, span_s]
        return ["iv", "int", True, "u", "str", True, "cum", "int", True, "r", "list", True]
    if kind == EVENT:
        # events: [event_seq, t, code, value]
        return ["e", "list", True, "lost", "int", False]
    if kind == STATUS:
        return ["bal", "int", True, "cr", "int", True, "em", "int", True, "dt", "int", True,
                "st", "str", True, "rl", "bool", True, "ld", "str", True, "tv", "int", True,
                "tt", "int", True, "tc", "int", True]
    if kind == HEARTBEAT:
        return ["up", "int", True, "hf", "int", False, "rssi", "int?", False,
                "ob", "int", False, "dr", "int", False, "fw", "str", False,
                "jw", "int", False, "rfm", "int", False, "rfd", "int", False]
    if kind == ACK:
        return ["id", "str", True, "c", "int", True, "r", "int", True, "rn", "str", True,
                "d", "str", False, "n", "int", False, "lo", "int", False]  # n, lo: backfill
    if kind == SNAPSHOT:
        # k "daily"|"monthly", key YYYYMMDD or month index, at = local midnight (UTC s)
        return ["k", "str", True, "key", "int", True, "at", "int", True, "cum", "int", True,
                "bal", "int", True, "md", "int?", False, "f", "int", False]
    if kind == "command":
        return ["kind", "str", True, "meter_id", "str", True, "counter", "int", True,
                "expires_at", "int", True, "id", "str", True, "fields", "list", True,
                "mac", "str", True]
    raise KeyError(kind)


READING_RECORD_LEN = 6
_EVENT_RECORD_LEN = const(4)


def __getattr__(name):
    # MessageError (a ValueError): a message that does not follow docs/protocol.md; the
    # text names the field.  Made on first use: a meter that builds sane uplinks and
    # gets well-formed commands never holds the class.  Raise sites here call
    # ``__getattr__("MessageError")``; ``messages.MessageError`` works as for any class.
    g = globals()
    if name == "MessageError":
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # The schemas as tuples, for the head-end (see _fields)
    if name == "SCHEMA":
        g[name] = {kind: tuple(_fields(kind)) for kind in UPLINK_KINDS}
        return g[name]
    if name == "COMMAND_FIELDS" or name == "_ENVELOPE":
        g[name] = tuple(_fields("command" if name == "COMMAND_FIELDS" else "envelope"))
        return g[name]
    # The head-end's side (parse_topic, decode_uplink, encode_command, INGEST_FILTER) is
    # in ``messages_more``, loaded on first use: a meter never decodes an uplink or
    # encodes a command, so their code and strings stay off its heap.  Kept in this
    # module's dict once fetched (the head-end calls them per message).
    from firmware.protocol import messages_more
    if name in messages_more.PUBLIC:
        value = g[name] = getattr(messages_more, name)
        return value
    raise AttributeError(name)


def topic(meter_id, kind):
    """Uplink topic of ``kind`` for a meter: ``urja/v1/<meter>/up/<kind>``."""
    return PREFIX + meter_id + "/up/" + kind


def command_topic(meter_id):
    """Downlink topic the meter subscribes to (QoS 1)."""
    return PREFIX + meter_id + "/cmd"


def online_topic(meter_id):
    """Retained presence topic: b"1" after connect, b"0" as the last will."""
    return PREFIX + meter_id + "/online"


def _check(body, fields, where):
    for i in range(0, len(fields), 3):
        name, kind, required = fields[i], fields[i + 1], fields[i + 2]
        if name not in body:
            if required:
                raise __getattr__("MessageError")("%s.%s: missing" % (where, name))
            continue
        value = body[name]
        if kind == "int?" and value is None:
            continue
        if kind == "int" or kind == "int?":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "str":
            ok = isinstance(value, str)
        elif kind == "bool":
            ok = isinstance(value, bool)
        else:
            ok = kind == "list" and isinstance(value, list)
        if not ok:
            raise __getattr__("MessageError")("%s.%s: must be %s, got %r" % (
                where, name, kind, value))


def _check_records(rows, width, where):
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise __getattr__("MessageError")("%s[%d]: must be a list of %d items" % (
                where, i, width))
        for j, x in enumerate(row):
            if x is not None and (not isinstance(x, int) or isinstance(x, bool)):
                raise __getattr__("MessageError")("%s[%d][%d]: must be an integer or null" % (
                    where, i, j))


def encode_uplink(kind, meter_id, seq, t, fields):
    """CBOR body of an uplink: the envelope plus ``fields`` (checked against SCHEMA)."""
    if kind not in UPLINK_KINDS:
        raise __getattr__("MessageError")("kind: unknown uplink kind %r" % (kind,))
    body = {"v": FORMAT, "m": meter_id, "s": seq, "t": t}
    for k in fields:
        body[k] = fields[k]
    validate(kind, body)
    return cbor.encode(body)


def validate(kind, body):
    """Check an uplink body (a decoded dict) against its schema; returns it."""
    if not isinstance(body, dict):
        raise __getattr__("MessageError")("body: must be a CBOR map")
    _check(body, _fields("envelope"), kind)
    if body["v"] != FORMAT:
        raise __getattr__("MessageError")("%s.v: format %r not supported (expected %d)" % (
            kind, body["v"], FORMAT))
    if body["s"] < 0 or body["t"] < 0:
        raise __getattr__("MessageError")("%s: s and t must be >= 0" % kind)
    _check(body, _fields(kind), kind)
    if kind == READING:
        _check_records(body["r"], READING_RECORD_LEN, "reading.r")
    elif kind == EVENT:
        _check_records(body["e"], _EVENT_RECORD_LEN, "event.e")
    elif kind == SNAPSHOT and body["k"] not in ("daily", "monthly"):
        raise __getattr__("MessageError")("snapshot.k: daily or monthly, got %r" % (body["k"],))
    return body


def decode_command(payload):
    """Downlink command dict from CBOR; authenticity is checked later by the meter's guard."""
    try:
        cmd = cbor.decode(payload)
    except cbor.CborError as err:
        raise __getattr__("MessageError")("command: not valid CBOR (%s)" % (err,))
    if not isinstance(cmd, dict):
        raise __getattr__("MessageError")("command: must be a CBOR map")
    _check(cmd, _fields("command"), "command")
    return cmd
