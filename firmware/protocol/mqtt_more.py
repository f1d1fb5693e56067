"""The parts of ``firmware.protocol.mqtt`` a meter never uses, loaded on first use.

The packet type numbers, limits and fixed packets under their public names,
CONNACK and packet type names and what is wrong with a first byte no broker
may send (error messages), UNSUBSCRIBE (a meter never unsubscribes).  ``mqtt``
hands these out through its module ``__getattr__`` (``mqtt.CONNACK_NAMES``,
``from firmware.protocol.mqtt import encode_unsubscribe``), so a meter's heap
holds them only while a refused CONNECT or a malformed packet is being reported.

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


# what ``mqtt.__getattr__`` hands out under ``mqtt``'s name
PUBLIC = ("CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
          "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT",
          "MAX_REMAINING_LENGTH", "MAX_STRING_BYTES", "MAX_PACKET_ID", "SUBACK_FAILURE",
          "PINGREQ_PACKET", "DISCONNECT_PACKET", "CONNACK_NAMES", "connack_name",
          "encode_unsubscribe")
