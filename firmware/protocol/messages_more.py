"""The head-end's side of ``firmware.protocol.messages``: uplink topics and bodies in,
commands out.  ``messages`` hands these out through its module ``__getattr__``
(``messages.decode_uplink``, ``from firmware.protocol.messages import
parse_topic``), so a meter, which never calls them, does not hold them on its heap.
"""
from firmware.protocol import cbor
from firmware.protocol.messages import (
    PREFIX, UPLINK_KINDS, MessageError, _check, _fields, validate,
)

INGEST_FILTER = "urja/v1/+/up/#"  # head-end: $share/<group>/urja/v1/+/up/#

# what ``messages.__getattr__`` hands out under ``messages``' name
PUBLIC = ("parse_topic", "decode_uplink", "encode_command", "INGEST_FILTER")


def parse_topic(t):
    """(meter_id, kind) of an uplink topic; MessageError if it is not one."""
    if not isinstance(t, str) or not t.startswith(PREFIX):
        raise MessageError("topic: must start with %s" % PREFIX)
    parts = t[len(PREFIX):].split("/")
    if len(parts) != 3 or parts[1] != "up" or not parts[0]:
        raise MessageError("topic: expected %s<meter>/up/<kind>, got %s" % (PREFIX, t))
    if parts[2] not in UPLINK_KINDS:
        raise MessageError("topic: unknown uplink kind %r" % (parts[2],))
    return parts[0], parts[2]


def decode_uplink(topic_name, payload):
    """Decode and validate an uplink; the topic's meter must match the body's ``m``."""
    meter_id, kind = parse_topic(topic_name)
    try:
        body = cbor.decode(payload)
    except cbor.CborError as err:
        raise MessageError("body: not valid CBOR (%s)" % (err,))
    validate(kind, body)
    if body["m"] != meter_id:
        raise MessageError("m: body says meter %r, topic says %r" % (body["m"], meter_id))
    body["kind"] = kind
    return body


def encode_command(cmd):
    """CBOR body of a downlink command dict (as built by ``core.auth.make_command``)."""
    _check(cmd, _fields("command"), "command")
    return cbor.encode(cmd)
