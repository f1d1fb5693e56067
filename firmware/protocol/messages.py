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

# Field schema per kind: flat (name, type, required) triples -- one tuple per kind, not
# a tuple per field (that is ~50 tuples fewer on the meter's heap).  Types: "int",
# "str", "bool", "list", "int?" (int or null).  Unknown fields are allowed (forward
# compatible) but every listed one is checked.
_ENVELOPE = const(("v", "int", True, "m", "str", True, "s", "int", True, "t", "int", True))
SCHEMA = {
    # records: [start_t, energy, avg_mv|null, avg_ma|null, flags, span_s]
    READING: ("iv", "int", True, "u", "str", True, "cum", "int", True, "r", "list", True),
    # events: [event_seq, t, code, value]
    EVENT: ("e", "list", True, "lost", "int", False),
    STATUS: ("bal", "int", True, "cr", "int", True, "em", "int", True, "dt", "int", True,
             "st", "str", True, "rl", "bool", True, "ld", "str", True, "tv", "int", True,
             "tt", "int", True, "tc", "int", True),
    HEARTBEAT: ("up", "int", True, "hf", "int", False, "rssi", "int?", False,
                "ob", "int", False, "dr", "int", False, "fw", "str", False,
                "jw", "int", False, "rfm", "int", False, "rfd", "int", False),
    ACK: ("id", "str", True, "c", "int", True, "r", "int", True, "rn", "str", True,
          "d", "str", False, "n", "int", False, "lo", "int", False),  # n, lo: backfill
    # snapshot: k "daily"|"monthly", key YYYYMMDD or month index, at = local midnight (UTC s)
    SNAPSHOT: ("k", "str", True, "key", "int", True, "at", "int", True, "cum", "int", True,
               "bal", "int", True, "md", "int?", False, "f", "int", False),
}
READING_RECORD_LEN = 6
_EVENT_RECORD_LEN = const(4)


def __getattr__(name):
    # The head-end's side (parse_topic, decode_uplink, encode_command, INGEST_FILTER) is
    # in ``messages_more``, loaded on first use: a meter never decodes an uplink or
    # encodes a command, so their code and strings stay off its heap.  Kept in this
    # module's dict once fetched (the head-end calls them per message).
    if name in ("parse_topic", "decode_uplink", "encode_command", "INGEST_FILTER"):
        from firmware.protocol import messages_more
        value = globals()[name] = getattr(messages_more, name)
        return value
    raise AttributeError(name)


class MessageError(ValueError):
    """A message that does not follow docs/protocol.md; the text names the field."""


def topic(meter_id, kind):
    """Uplink topic of ``kind`` for a meter: ``urja/v1/<meter>/up/<kind>``."""
    return PREFIX + meter_id + "/up/" + kind


def command_topic(meter_id):
    """Downlink topic the meter subscribes to (QoS 1)."""
    return PREFIX + meter_id + "/cmd"


def online_topic(meter_id):
    """Retained presence topic: b"1" after connect, b"0" as the last will."""
    return PREFIX + meter_id + "/online"


def _type_ok(value, kind):
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "int?":
        return value is None or (isinstance(value, int) and not isinstance(value, bool))
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    return False


def _check(body, fields, where):
    for i in range(0, len(fields), 3):
        name, kind, required = fields[i], fields[i + 1], fields[i + 2]
        if name not in body:
            if required:
                raise MessageError("%s.%s: missing" % (where, name))
            continue
        if not _type_ok(body[name], kind):
            raise MessageError("%s.%s: must be %s, got %r" % (where, name, kind, body[name]))


def _check_records(rows, width, where):
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise MessageError("%s[%d]: must be a list of %d items" % (where, i, width))
        for j, x in enumerate(row):
            if x is not None and (not isinstance(x, int) or isinstance(x, bool)):
                raise MessageError("%s[%d][%d]: must be an integer or null" % (where, i, j))


def encode_uplink(kind, meter_id, seq, t, fields):
    """CBOR body of an uplink: the envelope plus ``fields`` (checked against SCHEMA)."""
    if kind not in SCHEMA:
        raise MessageError("kind: unknown uplink kind %r" % (kind,))
    body = {"v": FORMAT, "m": meter_id, "s": seq, "t": t}
    for k in fields:
        body[k] = fields[k]
    validate(kind, body)
    return cbor.encode(body)


def validate(kind, body):
    """Check an uplink body (a decoded dict) against its schema; returns it."""
    if not isinstance(body, dict):
        raise MessageError("body: must be a CBOR map")
    _check(body, _ENVELOPE, kind)
    if body["v"] != FORMAT:
        raise MessageError("%s.v: format %r not supported (expected %d)" % (kind, body["v"], FORMAT))
    if body["s"] < 0 or body["t"] < 0:
        raise MessageError("%s: s and t must be >= 0" % kind)
    _check(body, SCHEMA[kind], kind)
    if kind == READING:
        _check_records(body["r"], READING_RECORD_LEN, "reading.r")
    elif kind == EVENT:
        _check_records(body["e"], _EVENT_RECORD_LEN, "event.e")
    elif kind == SNAPSHOT and body["k"] not in ("daily", "monthly"):
        raise MessageError("snapshot.k: daily or monthly, got %r" % (body["k"],))
    return body


COMMAND_FIELDS = ("kind", "str", True, "meter_id", "str", True, "counter", "int", True,
                  "expires_at", "int", True, "id", "str", True, "fields", "list", True,
                  "mac", "str", True)


def decode_command(payload):
    """Downlink command dict from CBOR; authenticity is checked later by the meter's guard."""
    try:
        cmd = cbor.decode(payload)
    except cbor.CborError as err:
        raise MessageError("command: not valid CBOR (%s)" % (err,))
    if not isinstance(cmd, dict):
        raise MessageError("command: must be a CBOR map")
    _check(cmd, COMMAND_FIELDS, "command")
    return cmd
