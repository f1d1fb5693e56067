"""The parts of ``firmware.protocol.mqtt`` a meter never uses, loaded on first use.

The packet type numbers, limits and fixed packets under their public names,
CONNACK and packet type names, the texts of ``mqtt``'s error reports and what
is wrong with a first byte no broker may send, UNSUBSCRIBE (a meter never
unsubscribes).  ``mqtt`` hands these out through its module ``__getattr__``
(``mqtt.CONNACK_NAMES``, ``from firmware.protocol.mqtt import encode_unsubscribe``),
so a meter's heap holds them only once a refused CONNECT, a malformed packet or
a bad argument has been reported.  Also the methods of ``mqtt.Session`` and
``firmware.app.mqtt_client.MqttConnection`` a meter never calls (``close``,
``ping``, ``next_message``, ...), as functions taking the object, which their
classes' ``__getattr__`` hands out as methods.

>>> from firmware.protocol.mqtt import encode_unsubscribe
>>> encode_unsubscribe(2, ["a/#"]).hex()
'a20700020003612f23'
"""
from firmware.protocol.mqtt import (
    MqttError, _check_packet_id, _field, _packet, check_topic_filter,
)

# 2.2.1 Table 2.1: control packet types
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

MAX_REMAINING_LENGTH = 268435455  # 2.2.3: four bytes, 0xFF 0xFF 0xFF 0x7F
MAX_STRING_BYTES = 65535  # 1.5.3: two-byte length prefix
MAX_PACKET_ID = 65535
SUBACK_FAILURE = 0x80  # 3.9.3: a SUBACK return code

PINGREQ_PACKET = b"\xc0\x00"  # 3.12
DISCONNECT_PACKET = b"\xe0\x00"  # 3.14

# 3.2.2.3 Table 3.1: CONNACK return codes
CONNACK_NAMES = {
    0: "ACCEPTED",
    1: "UNACCEPTABLE_PROTOCOL_VERSION",
    2: "IDENTIFIER_REJECTED",
    3: "SERVER_UNAVAILABLE",
    4: "BAD_USERNAME_OR_PASSWORD",
    5: "NOT_AUTHORIZED",
}

PACKET_NAMES = ("RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
                "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
                "PINGRESP", "DISCONNECT", "RESERVED")


# The error reports of ``mqtt``, in the order of its _E_ constants: ``error`` formats
# them, so a meter holds none of these strings until it has something to report.
ERRORS = (
    "remaining length must be 0..%d, got %r",
    "malformed remaining length: continuation bit set in its 4th byte",
    "packet id must be 1..65535, got %r",
    "topic name must be a non-empty str (4.7.3)",
    "topic name %r must not contain wildcards + or # (3.3.2.1)",
    "topic filter must be a non-empty str (4.7.3)",
    "topic filter %r: '#' must be a whole, last level",
    "topic filter %r: '+' must be a whole level",
    "an empty client id needs clean_session=True (3.1.3.1)",
    "keepalive_s must be 0..65535, got %r",
    "a password needs a username (3.1.2.9)",
    "will_qos/will_retain need a will_topic (3.1.2.6, 3.1.2.7)",
    "payload must be bytes or str, got %s",
    "a QoS 0 publish has no packet id and DUP 0 (3.3.1.1, 2.3.1)",
    "SUBSCRIBE needs at least one topic filter (3.8.3)",
    "PUBLISH too short for its topic length",
    "PUBLISH topic length %d runs past the packet",
    "PUBLISH topic is not valid UTF-8 (1.5.3)",
    "PUBLISH topic %r is not a valid topic name (3.3.2.1)",
    "QoS 0 PUBLISH with DUP set (3.3.1.1)",
    "CONNACK remaining length must be 2, got %d",
    "CONNACK acknowledge flags 0x%02x: bits 7-1 are reserved (3.2.2.1)",
    "CONNACK return code %d is reserved (3.2.2.3)",
    "refused CONNACK with session present set (3.2.2.2)",
    "SUBACK needs a packet id and at least one return code",
    "SUBACK return code 0x%02x is reserved (3.9.3)",
    "PINGRESP remaining length must be 0, got %d",
    "all 65535 packet ids are in use",
    "not connected: wait for an accepted CONNACK",
    "%d QoS 1 publishes already await PUBACK",
    "not a packet from a broker: %r",
    # from here (mqtt._E_WHAT) the first argument is an index into WHAT
    "%s must be str, got %s",
    "%s is %d bytes, at most 65535",
    "%s must not contain U+0000 (1.5.3)",
    "%s must be bytes or str, got %s",
    "%s must be 0..%d, got %r",
    # from here (mqtt._E_KIND) the first argument is a packet type
    "%s remaining length must be 2, got %d",
    "%s with packet id 0 (2.3.1)",
    "incoming %s of %d bytes exceeds max_packet %d",
)
_E_WHAT = 31
_E_KIND = 36

# the fields ``mqtt`` names in errors, in the order of its _W_ constants
WHAT = ("client id", "topic name", "topic filter", "will topic", "will message", "username",
        "password", "qos", "will_qos", "requested qos")


def error(code, args):
    """The MqttError ``mqtt`` raises for error ``code`` (one of its _E_ constants).

    >>> error(2, (0,))
    MqttError('packet id must be 1..65535, got 0')
    """
    if code >= _E_KIND:
        args = (PACKET_NAMES[args[0]],) + args[1:]
    elif code >= _E_WHAT:
        args = (WHAT[args[0]],) + args[1:]
    return MqttError(ERRORS[code] % args)


def publish_repr(p):
    """``repr`` of an incoming ``mqtt.Publish``."""
    return "Publish(%r, %r, qos=%d, packet_id=%d, retain=%r, dup=%r)" % (
        p.topic, p.payload, p.qos, p.packet_id, p.retain, p.dup)


def session_in_flight_ids(session):
    """``Session.in_flight_ids()``: packet ids of QoS 1 publishes awaiting PUBACK, oldest first."""
    return [m[0] for m in session._in_flight]


def session_unsubscribe(session, topic_filters, now=0):
    """``Session.unsubscribe(topic_filters, now=0)``: (packet_id, frame) for UNSUBSCRIBE
    from [filter, ...]."""
    session._require_connected()
    pid = session.next_packet_id()
    frame = encode_unsubscribe(pid, topic_filters)
    session._pending.append(pid)
    session.last_sent = now
    return pid, frame


def session_disconnect(session):
    """``Session.disconnect()``: the DISCONNECT frame; the broker then discards the will
    (3.14)."""
    session.connected = False
    return DISCONNECT_PACKET


# the methods ``mqtt.Session.__getattr__`` hands out (as session_<name> here)
SESSION_MORE = ("in_flight_ids", "unsubscribe", "disconnect")


def connack_name(code):
    """Name of a CONNACK return code, e.g. 5 -> 'NOT_AUTHORIZED'."""
    return CONNACK_NAMES.get(code, "RESERVED_%d" % code)


def first_byte_error(first):
    """The MqttError for a fixed-header first byte that ``mqtt`` refused.

    >>> first_byte_error(0xC0)
    MqttError('PINGREQ is a client packet; a broker must not send it')
    """
    kind = first >> 4
    flags = first & 0x0F
    if kind == 0 or kind == 15:
        return MqttError("reserved packet type %d (2.2.1)" % kind)
    if kind == PUBLISH:
        if flags & 0x06 == 0x06:
            return MqttError("PUBLISH with QoS 3 is malformed (3.3.1.2)")
        return MqttError("PUBLISH at QoS 2 is not supported (we never subscribe at QoS 2)")
    want = 0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
    if flags != want:
        return MqttError("%s with reserved flags 0x%x, must be 0x%x (2.2.2)" % (
            PACKET_NAMES[kind], flags, want))
    if kind in (PUBREC, PUBREL, PUBCOMP):
        return MqttError("%s is QoS 2 flow, which this client does not use" % PACKET_NAMES[kind])
    return MqttError("%s is a client packet; a broker must not send it" % PACKET_NAMES[kind])


def encode_unsubscribe(packet_id, topic_filters):
    """UNSUBSCRIBE (3.10): fixed-header flags 0010, packet id, filters.

    >>> encode_unsubscribe(2, ["a/#"]).hex()
    'a20700020003612f23'
    """
    _check_packet_id(packet_id)
    topic_filters = list(topic_filters)
    if not topic_filters:
        raise MqttError("UNSUBSCRIBE needs at least one topic filter (3.10.3)")
    body = bytearray((packet_id >> 8, packet_id & 0xFF))
    for topic_filter in topic_filters:
        check_topic_filter(topic_filter)
        _field(body, topic_filter.encode("utf-8"))
    return _packet(0xA2, body)


# ------------------------------------------------------------------ MqttConnection's rare parts
# ``firmware.app.mqtt_client.MqttConnection.__getattr__`` hands these out as its
# methods (``await conn.ping()``): a meter never calls them, so its heap holds
# neither their code objects nor their strings.

async def connection_close(conn):
    """``MqttConnection.close``: send DISCONNECT (the broker discards the will) and
    close the socket."""
    if not conn._open:
        return
    try:
        await conn._send(session_disconnect(conn.session))
    except Exception:  # already broken: closing anyway
        pass
    await conn._shutdown("closed by client")


async def connection_unsubscribe(conn, topic_filters, timeout_s=10):
    """``MqttConnection.unsubscribe``: UNSUBSCRIBE from [filter, ...] and wait for UNSUBACK."""
    conn._check_open()
    pid, frame = session_unsubscribe(conn.session, topic_filters, conn.clock())
    await conn._request(pid, frame, timeout_s, "UNSUBACK")


async def connection_ping(conn, timeout_s=10):
    """``MqttConnection.ping``: send PINGREQ now and wait for PINGRESP."""
    conn._check_open()
    await conn._request(-PINGRESP, conn.session.ping(conn.clock()), timeout_s, "PINGRESP")


async def connection_wait_all_acked(conn, timeout_s=10):
    """``MqttConnection.wait_all_acked``: wait until no QoS 1 publish of the session
    awaits PUBACK."""
    import asyncio
    from firmware.app.mqtt_client import AckTimeout
    try:
        await asyncio.wait_for(_until_all_acked(conn), timeout_s)
    except asyncio.TimeoutError:
        raise AckTimeout("publishes %r still unacked after %ss" % (
            session_in_flight_ids(conn.session), timeout_s))


async def _until_all_acked(conn):
    import asyncio
    while conn.session._in_flight:
        conn._check_open()
        event = conn._acked
        if event is None:
            event = conn._acked = asyncio.Event()
        event.clear()
        await event.wait()


async def connection_next_message(conn, timeout_s=None):
    """``MqttConnection.next_message``: the oldest unread incoming ``Publish``, or None
    after ``timeout_s``.

    Raises ConnectionLost once the inbox is empty and the connection is gone.
    """
    import asyncio
    while not conn._inbox:
        conn._check_open()
        event = conn._inbox_event
        if event is None:
            event = conn._inbox_event = asyncio.Event()
        event.clear()
        if timeout_s is None:
            await event.wait()
            continue
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except asyncio.TimeoutError:
            return None
    return conn._inbox.pop(0)


async def connection_refused(conn, code):
    """Close ``conn`` after a CONNACK with return ``code``; the ConnectRefused to raise."""
    from firmware.app import mqtt_client
    name = connack_name(code)
    await conn._shutdown("broker refused CONNECT: " + name)
    err = mqtt_client.ConnectRefused("broker refused CONNECT: %s (%d)" % (name, code))
    err.return_code = code
    err.name = name
    return err


# the methods ``MqttConnection.__getattr__`` hands out (as connection_<name> here)
CONNECTION_MORE = ("close", "unsubscribe", "ping", "wait_all_acked", "next_message")


# what ``mqtt.__getattr__`` hands out under ``mqtt``'s name
PUBLIC = ("CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
          "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT",
          "MAX_REMAINING_LENGTH", "MAX_STRING_BYTES", "MAX_PACKET_ID", "SUBACK_FAILURE",
          "PINGREQ_PACKET", "DISCONNECT_PACKET", "CONNACK_NAMES", "connack_name",
          "encode_unsubscribe")
