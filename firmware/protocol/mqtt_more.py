"""The parts of ``firmware.protocol.mqtt`` a meter never uses, loaded on first use.

The packet type numbers and limits under their public names, CONNACK and
packet type names (error messages), UNSUBSCRIBE and UNSUBACK (a meter never
unsubscribes).  ``mqtt`` hands these out through its module ``__getattr__``
(``mqtt.CONNACK_NAMES``, ``from firmware.protocol.mqtt import Unsuback``), so
a meter's heap holds them only while a refused CONNECT or a malformed packet
is being reported.

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


class Unsuback:
    """UNSUBACK for UNSUBSCRIBE ``packet_id``."""

    def __init__(self, packet_id):
        self.packet_id = packet_id

    def __repr__(self):
        return "Unsuback(%d)" % self.packet_id


# what ``mqtt.__getattr__`` hands out under ``mqtt``'s name
PUBLIC = ("CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE",
          "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT",
          "MAX_REMAINING_LENGTH", "MAX_STRING_BYTES", "MAX_PACKET_ID", "CONNACK_NAMES",
          "encode_unsubscribe", "Unsuback")
