"""MQTT 3.1.1 client codec and session state (sans-IO), on CPython and MicroPython.

Encoders for what a meter sends (CONNECT, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE,
UNSUBSCRIBE, PINGREQ, DISCONNECT), decoders for what a broker sends it
(CONNACK, PUBLISH QoS 0/1, PUBACK, SUBACK, UNSUBACK, PINGRESP), an
incremental ``PacketReader`` and a ``Session`` holding the protocol state
(packet ids, QoS 1 publishes in flight, keepalive).  No sockets, no clock:
the asyncio shell (``firmware/app/mqtt_client.py``) does the I/O and passes
``now`` in integer seconds from a monotonic clock.  QoS 2 is not supported:
the meter never publishes or subscribes at QoS 2, so a broker never sends it.

Section numbers refer to OASIS "MQTT Version 3.1.1" (29 October 2014).

>>> encode_publish("a/b", b"hi").hex()
'30070003612f626869'
>>> PacketReader().feed(bytes.fromhex("20020000"))   # CONNACK, accepted
[(2, 0, False)]
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]  # looser signature than the stub
        return x

# 2.2.1 Table 2.1: the control packet types a broker sends us.  Private names,
# which MicroPython's const compiles away; the public names (the whole table),
# CONNACK_NAMES, the texts of all error reports, and what only tests or a broker
# use (encode_unsubscribe, Session.unsubscribe/in_flight_ids/disconnect) live in
# ``mqtt_more``, loaded on first use through the module ``__getattr__`` below (or
# Session's): a meter whose broker behaves never loads it (heap).
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBACK = const(9)
_UNSUBACK = const(11)
_PINGRESP = const(13)

_MAX_REMAINING_LENGTH = const(268435455)  # 2.2.3: four bytes, 0xFF 0xFF 0xFF 0x7F
_MAX_STRING_BYTES = const(65535)  # 1.5.3: two-byte length prefix
# Largest incoming packet we buffer: an 8 KB CBOR downlink (cbor.MAX_BYTES)
# plus 1 KB for topic and headers; keeps a hostile length off the ~100 KB heap.
MAX_PACKET = const(9216)
_MAX_PACKET_ID = const(65535)
_SUBACK_FAILURE = const(0x80)  # 3.9.3 (public as SUBACK_FAILURE in mqtt_more)
_PINGREQ_PACKET = const(b"\xc0\x00")  # 3.12
# first bytes of the packets a broker may send us, but PUBLISH (its flags vary)
_FROM_BROKER = const(b"\x20\x40\x90\xb0\xd0")  # CONNACK PUBACK SUBACK UNSUBACK PINGRESP


def __getattr__(name):
    # CONNACK_NAMES, connack_name, the packet type numbers, encode_unsubscribe, ...
    from firmware.protocol import mqtt_more
    if name in mqtt_more.PUBLIC:
        return getattr(mqtt_more, name)
    raise AttributeError(name)


# Error reports: an index into ``mqtt_more.ERRORS`` (same order), formatted there
# on first use, so their ~40 texts are no str objects on a meter's heap.  From
# _E_WHAT the first argument is an index into ``mqtt_more.WHAT`` (the field
# named), from _E_KIND a packet type (its name is reported).
_E_REMAINING = const(0)
_E_LENGTH_4TH = const(1)
_E_PACKET_ID = const(2)
_E_TOPIC_EMPTY = const(3)
_E_TOPIC_WILD = const(4)
_E_FILTER_EMPTY = const(5)
_E_FILTER_HASH = const(6)
_E_FILTER_PLUS = const(7)
_E_EMPTY_ID = const(8)
_E_KEEPALIVE = const(9)
_E_PASSWORD = const(10)
_E_WILL = const(11)
_E_PAYLOAD = const(12)
_E_QOS0 = const(13)
_E_NO_FILTER = const(14)
_E_PUB_SHORT = const(15)
_E_PUB_TOPIC_LEN = const(16)
_E_PUB_UTF8 = const(17)
_E_PUB_TOPIC = const(18)
_E_PUB_DUP = const(19)
_E_CONNACK_LEN = const(20)
_E_CONNACK_FLAGS = const(21)
_E_CONNACK_CODE = const(22)
_E_CONNACK_PRESENT = const(23)
_E_SUBACK_SHORT = const(24)
_E_SUBACK_CODE = const(25)
_E_PINGRESP_LEN = const(26)
_E_NO_IDS = const(27)
_E_NOT_CONNECTED = const(28)
_E_IN_FLIGHT = const(29)
_E_NOT_BROKER = const(30)
_E_WHAT = const(31)  # the first of the errors about a field
_E_NOT_STR = const(31)
_E_TOO_LONG = const(32)
_E_NUL = const(33)
_E_NOT_BINARY = const(34)
_E_RANGE = const(35)
_E_KIND = const(36)  # the first of the errors about a packet type
_E_LEN_2 = const(36)
_E_ID_0 = const(37)
_E_TOO_BIG = const(38)
# fields named in errors: indexes into mqtt_more.WHAT
_W_CLIENT_ID = const(0)
_W_TOPIC_NAME = const(1)
_W_TOPIC_FILTER = const(2)
_W_WILL_TOPIC = const(3)
_W_WILL_MESSAGE = const(4)
_W_USERNAME = const(5)
_W_PASSWORD = const(6)
_W_QOS = const(7)
_W_WILL_QOS = const(8)
_W_REQUESTED_QOS = const(9)


def _err(code, *args):
    # the MqttError for error ``code`` (an _E_ constant) with its arguments
    from firmware.protocol.mqtt_more import error
    return error(code, args)


class MqttError(ValueError):
    """A packet that cannot be built, or malformed/unexpected input from the broker.

    On malformed input the connection must be closed (2.2.2, 4.8).
    """


# ------------------------------------------------------------------ primitives

def encode_remaining_length(n):
    """2.2.3 variable-length integer: 7 bits per byte, low group first.

    >>> encode_remaining_length(321).hex()
    'c102'
    """
    if not isinstance(n, int) or n < 0 or n > _MAX_REMAINING_LENGTH:
        raise _err(_E_REMAINING, _MAX_REMAINING_LENGTH, n)
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_remaining_length(buf, start=1):
    """(value, index after it) of the length at ``buf[start:]``, or None if incomplete.

    >>> decode_remaining_length(b"\\x30\\xc1\\x02")
    (321, 3)
    """
    value = 0
    for i in range(4):
        if start + i >= len(buf):
            return None
        b = buf[start + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, start + i + 1
    raise _err(_E_LENGTH_4TH)


def _utf8(what, s):
    if isinstance(s, str):
        data = s.encode("utf-8")
    else:
        raise _err(_E_NOT_STR, what, type(s).__name__)
    if len(data) > _MAX_STRING_BYTES:
        raise _err(_E_TOO_LONG, what, len(data))
    if "\x00" in s:
        raise _err(_E_NUL, what)
    return data


def _binary(what, b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    elif not (isinstance(b, bytes) or isinstance(b, bytearray) or isinstance(b, memoryview)):
        raise _err(_E_NOT_BINARY, what, type(b).__name__)
    if len(b) > _MAX_STRING_BYTES:
        raise _err(_E_TOO_LONG, what, len(b))
    return bytes(b)


def _field(out, data):
    n = len(data)
    out.append(n >> 8)
    out.append(n & 0xFF)
    out.extend(data)


def _packet(first, body):
    out = bytearray()
    out.append(first)
    out.extend(encode_remaining_length(len(body)))
    out.extend(body)
    return bytes(out)


def _check_packet_id(packet_id):
    if not isinstance(packet_id, int) or packet_id < 1 or packet_id > _MAX_PACKET_ID:
        raise _err(_E_PACKET_ID, packet_id)  # 2.3.1


def _check_qos(what, qos, highest):
    if qos is True or qos is False or not isinstance(qos, int) or qos < 0 or qos > highest:
        raise _err(_E_RANGE, what, highest, qos)


# ------------------------------------------------------------------ topics (4.7)

def check_topic_name(topic):
    """Raise MqttError unless ``topic`` is a valid topic to publish to (no wildcards).

    >>> check_topic_name("urja/m/42/readings")
    """
    if not isinstance(topic, str) or not topic:
        raise _err(_E_TOPIC_EMPTY)
    if "+" in topic or "#" in topic:
        raise _err(_E_TOPIC_WILD, topic)
    _utf8(_W_TOPIC_NAME, topic)


def check_topic_filter(topic_filter):
    """Raise MqttError unless ``topic_filter`` is a valid subscription filter.

    '+' must fill a whole level; '#' must be the last level (4.7.1.2, 4.7.1.3).

    >>> check_topic_filter("urja/m/+/cmd/#")
    """
    if not isinstance(topic_filter, str) or not topic_filter:
        raise _err(_E_FILTER_EMPTY)
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            raise _err(_E_FILTER_HASH, topic_filter)
        if "+" in level and level != "+":
            raise _err(_E_FILTER_PLUS, topic_filter)
    _utf8(_W_TOPIC_FILTER, topic_filter)


# ------------------------------------------------------------------ encoders

def encode_connect(client_id, keepalive_s=60, clean_session=True, username=None,
                   password=None, will_topic=None, will_message=b"", will_qos=0,
                   will_retain=False):
    """CONNECT (3.1): protocol 'MQTT' level 4, flags, keepalive, then the payload fields.

    >>> encode_connect("m1", keepalive_s=60).hex()
    '100e00044d5154540402003c00026d31'
    """
    cid = _utf8(_W_CLIENT_ID, client_id)
    if not cid and not clean_session:
        raise _err(_E_EMPTY_ID)
    if not isinstance(keepalive_s, int) or keepalive_s < 0 or keepalive_s > 0xFFFF:
        raise _err(_E_KEEPALIVE, keepalive_s)
    if password is not None and username is None:
        raise _err(_E_PASSWORD)
    flags = 0x02 if clean_session else 0
    if will_topic is not None:
        check_topic_name(will_topic)
        _check_qos(_W_WILL_QOS, will_qos, 2)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    elif will_qos or will_retain:
        raise _err(_E_WILL)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(b"\x00\x04MQTT\x04")
    body.append(flags)
    body.append(keepalive_s >> 8)
    body.append(keepalive_s & 0xFF)
    _field(body, cid)
    if will_topic is not None:
        _field(body, _utf8(_W_WILL_TOPIC, will_topic))
        _field(body, _binary(_W_WILL_MESSAGE, will_message))
    if username is not None:
        _field(body, _utf8(_W_USERNAME, username))
    if password is not None:
        _field(body, _binary(_W_PASSWORD, password))
    return _packet(0x10, body)


def encode_publish(topic, payload, qos=0, packet_id=0, retain=False, dup=False):
    """PUBLISH (3.3): flags DUP/QoS/RETAIN, topic, packet id if QoS 1, payload.

    Built in one exact-size bytearray (one copy of the payload: this is the
    frame that carries kilobytes on a ~100 KB heap).

    >>> bytes(encode_publish("a/b", b"x", qos=1, packet_id=10)).hex()
    '32080003612f62000a78'
    """
    check_topic_name(topic)
    _check_qos(_W_QOS, qos, 1)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    elif not (isinstance(payload, bytes) or isinstance(payload, bytearray)
              or isinstance(payload, memoryview)):  # no tuple of types: one less alloc
        raise _err(_E_PAYLOAD, type(payload).__name__)
    if qos == 0 and (dup or packet_id):
        raise _err(_E_QOS0)
    if qos:
        _check_packet_id(packet_id)
    t = topic.encode("utf-8")
    body_len = 2 + len(t) + (2 if qos else 0) + len(payload)
    head = encode_remaining_length(body_len)
    out = bytearray(1 + len(head) + body_len)
    out[0] = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    pos = 1 + len(head)
    out[1:pos] = head
    out[pos] = len(t) >> 8
    out[pos + 1] = len(t) & 0xFF
    pos += 2
    out[pos:pos + len(t)] = t
    pos += len(t)
    if qos:
        out[pos] = packet_id >> 8
        out[pos + 1] = packet_id & 0xFF
        pos += 2
    out[pos:] = payload
    return out


def encode_puback(packet_id):
    """PUBACK (3.4) for an incoming QoS 1 publish.

    >>> encode_puback(10).hex()
    '4002000a'
    """
    _check_packet_id(packet_id)
    return bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))


def encode_subscribe(packet_id, subscriptions):
    """SUBSCRIBE (3.8): fixed-header flags 0010, packet id, (filter, requested QoS) pairs.

    >>> encode_subscribe(1, [("a/#", 1)]).hex()
    '820800010003612f2301'
    """
    _check_packet_id(packet_id)
    subscriptions = list(subscriptions)
    if not subscriptions:
        raise _err(_E_NO_FILTER)
    body = bytearray((packet_id >> 8, packet_id & 0xFF))
    for topic_filter, qos in subscriptions:
        check_topic_filter(topic_filter)
        _check_qos(_W_REQUESTED_QOS, qos, 1)
        _field(body, topic_filter.encode("utf-8"))
        body.append(qos)
    return _packet(0x82, body)


# ------------------------------------------------------------------ decoded packets
#
# An incoming application message is a ``Publish``.  The broker's other packets
# are tuples whose first item is the packet type (2.2.1): a class each would
# hold ~400 bytes of a meter's heap for four one-line records.
#
#   CONNACK   (2, return_code, session_present)   accepted when return_code is 0
#   PUBACK    (4, packet_id)
#   SUBACK    (9, packet_id, granted)    one granted QoS per filter, or SUBACK_FAILURE
#   UNSUBACK  (11, packet_id)
#   PINGRESP  (13,)

class Publish:
    """An incoming application message: topic (str), payload (bytes), qos, packet_id (0 for QoS 0)."""

    def __init__(self, topic, payload, qos=0, packet_id=0, retain=False, dup=False):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.packet_id = packet_id
        self.retain = retain
        self.dup = dup

    def __repr__(self):
        from firmware.protocol.mqtt_more import publish_repr  # tests and logs only
        return publish_repr(self)


def _check_first_byte(first):
    # Lets through only what a broker may send this client; ``mqtt_more`` says what
    # is wrong with anything else (a meter never loads it while its broker behaves).
    if first in _FROM_BROKER or (first >> 4 == _PUBLISH and first & 0x06 < 0x04):
        return
    from firmware.protocol.mqtt_more import first_byte_error
    raise first_byte_error(first)


def _packet_id_only(kind, body):
    if len(body) != 2:
        raise _err(_E_LEN_2, kind, len(body))
    pid = (body[0] << 8) | body[1]
    if pid == 0:
        raise _err(_E_ID_0, kind)
    return pid


def decode_packet(first, body):
    """The packet for fixed-header byte ``first`` and the bytes after the length.

    >>> decode_packet(0x90, bytes.fromhex("00010180"))   # SUBACK
    (9, 1, [1, 128])
    """
    _check_first_byte(first)
    kind = first >> 4
    if kind == _PUBLISH:
        flags = first & 0x0F
        qos = (flags >> 1) & 3
        if len(body) < 2:
            raise _err(_E_PUB_SHORT)
        n = (body[0] << 8) | body[1]
        pos = 2 + n
        if len(body) < pos + (2 if qos else 0):
            raise _err(_E_PUB_TOPIC_LEN, n)
        try:
            topic = bytes(body[2:pos]).decode("utf-8")
        except UnicodeError:
            raise _err(_E_PUB_UTF8)
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise _err(_E_PUB_TOPIC, topic)
        pid = 0
        if qos:
            pid = _packet_id_only(kind, body[pos:pos + 2])
            pos += 2
        if qos == 0 and flags & 0x08:
            raise _err(_E_PUB_DUP)
        return Publish(topic, bytes(body[pos:]), qos, pid, bool(flags & 1), bool(flags & 8))
    if kind == _CONNACK:
        if len(body) != 2:
            raise _err(_E_CONNACK_LEN, len(body))
        if body[0] & 0xFE:
            raise _err(_E_CONNACK_FLAGS, body[0])
        if body[1] > 5:
            raise _err(_E_CONNACK_CODE, body[1])
        if body[1] and body[0]:
            raise _err(_E_CONNACK_PRESENT)
        return (kind, body[1], bool(body[0] & 1))
    if kind == _SUBACK:
        if len(body) < 3:
            raise _err(_E_SUBACK_SHORT)
        granted = list(body[2:])
        for code in granted:
            if code not in (0, 1, 2, _SUBACK_FAILURE):
                raise _err(_E_SUBACK_CODE, code)
        return (kind, _packet_id_only(kind, body[:2]), granted)
    if kind == _PINGRESP:
        if len(body):
            raise _err(_E_PINGRESP_LEN, len(body))
        return (kind,)
    # PUBACK or UNSUBACK: _check_first_byte let nothing else through
    return (kind, _packet_id_only(kind, body))


class PacketReader:
    """Turns bytes from the broker, as they arrive, into decoded packets.

    The fixed header is checked as soon as it is complete, so a reserved
    type, bad flags or a length over ``max_packet`` (whole packet, header
    included) fail before the body is buffered.  After an MqttError the
    connection must be closed; packets decoded earlier in the same call are
    lost with it (a persistent session gets QoS 1 ones again).

    >>> r = PacketReader()
    >>> r.feed(b"\\xd0")
    []
    >>> r.feed(b"\\x00\\x90\\x03\\x00\\x01\\x01")   # PINGRESP, SUBACK
    [(13,), (9, 1, [1])]
    """

    def __init__(self, max_packet=MAX_PACKET):
        self.max_packet = max_packet
        self._buf = bytearray()  # a fixed header and whatever follows it in one read
        # A packet longer than what has arrived gets one buffer of its final
        # size: growing a bytearray read by read fragments a 128 KB heap until
        # a 5 KB publish no longer finds a contiguous block.
        self._pkt = None
        self._fill = 0
        self._start = 0

    @property
    def buffered(self):
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf) + self._fill

    def feed(self, data):
        """Add received bytes; return the list of packets completed by them (may be empty)."""
        out: "list" = []
        pos = 0
        while True:
            pkt = self._pkt
            if pkt is not None:
                take = min(len(pkt) - self._fill, len(data) - pos)
                pkt[self._fill:self._fill + take] = data[pos:pos + take]
                self._fill += take
                pos += take
                if self._fill < len(pkt):
                    return out
                self._pkt = None
                self._fill = 0
                out.append(decode_packet(pkt[0], memoryview(pkt)[self._start:]))
            if pos < len(data):
                self._buf.extend(data[pos:] if pos else data)
                pos = len(data)
            if not self._buf:
                return out
            buf = self._buf
            _check_first_byte(buf[0])
            head = decode_remaining_length(buf, 1)
            if head is None:
                return out
            length, start = head
            end = start + length
            if end > self.max_packet:
                raise _err(_E_TOO_BIG, buf[0] >> 4, end, self.max_packet)
            if len(buf) >= end:
                out.append(decode_packet(buf[0], memoryview(buf)[start:end]))
                self._buf = buf[end:]
                continue
            pkt = bytearray(end)
            pkt[0:len(buf)] = buf
            self._pkt = pkt
            self._fill = len(buf)
            self._start = start
            self._buf = bytearray()


# ------------------------------------------------------------------ session

class Session:
    """Client-side protocol state of one MQTT session; survives reconnects.

    Every frame the caller gets back must be written at once (the session
    counts it as sent at ``now``).  ``now`` is integer seconds, monotonic.

    * packet ids 1..65535, skipping ids still in flight;
    * QoS 1 publishes stay in flight until their PUBACK; ``poll`` resends one
      with DUP=1 after ``retry_s`` (0 = only on reconnect); after a CONNACK
      every unacked one is sent again in original order: DUP=1 for a
      persistent session (4.4, [MQTT-4.4.0-1]); a clean session starts empty
      at the broker, so they go as new publishes (DUP=0) and no reading is
      lost between sessions;
    * keepalive (3.1.2.10): PINGREQ when nothing was sent or nothing received
      for ``keepalive_s``; the broker counts as dead after 1.5 x keepalive_s
      with no packet from it;
    * incoming QoS 1 publishes are answered with PUBACK.

    >>> s = Session("m1", keepalive_s=60)
    >>> frame = s.connect(now=0)            # write it
    >>> s.received((2, 0, False), now=1)    # CONNACK, accepted
    []
    >>> pid, frame = s.publish("urja/m1/r", b"\\x01", qos=1, now=2)
    >>> s.in_flight_ids()
    [1]
    >>> s.received((4, 1), now=3), s.in_flight_ids()   # PUBACK 1
    ([], [])
    """

    def __init__(self, client_id, keepalive_s=60, clean_session=True, username=None,
                 password=None, will_topic=None, will_message=b"", will_qos=0,
                 will_retain=False, retry_s=30, max_in_flight=8):
        self._connect_frame = encode_connect(
            client_id, keepalive_s, clean_session, username, password,
            will_topic, will_message, will_qos, will_retain)
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.clean_session = clean_session
        self.retry_s = retry_s
        self.max_in_flight = max_in_flight
        self.connected = False
        self.ping_outstanding = False
        self.last_sent = 0
        self.last_received = 0
        self.resent = 0  # QoS 1 publishes sent again (timeouts and reconnects)
        self._next_id = 1
        # QoS 1 publishes awaiting PUBACK, in first-send order (dicts are unordered on
        # MicroPython): [packet_id, frame, sent_at] each; the frame is resent as is,
        # with only its DUP bit changed (no second copy of the payload)
        self._in_flight = []
        self._pending = []  # packet ids of SUBSCRIBE/UNSUBSCRIBE awaiting their ack

    def __getattr__(self, name):
        # in_flight_ids(), unsubscribe() and disconnect(), which a meter never calls,
        # are functions of ``mqtt_more`` taking the session: one method here, not three
        from firmware.protocol import mqtt_more
        if name in mqtt_more.SESSION_MORE:
            fn = getattr(mqtt_more, "session_" + name)
            return lambda *args, **kwargs: fn(self, *args, **kwargs)
        raise AttributeError(name)

    # -------------------------------------------------------------- ids
    def next_packet_id(self):
        """Allocate the next free packet id (1..65535, wrapping, skipping ids in use)."""
        for _ in range(_MAX_PACKET_ID):
            pid = self._next_id
            self._next_id = 1 if pid == _MAX_PACKET_ID else pid + 1
            if pid in self._pending:
                continue
            for m in self._in_flight:
                if m[0] == pid:
                    break
            else:
                return pid
        raise _err(_E_NO_IDS)

    # -------------------------------------------------------------- outgoing
    def connect(self, now):
        """The CONNECT frame for a new network connection; starts the keepalive clocks."""
        self.connected = False
        self.ping_outstanding = False
        self._pending = []
        self.last_sent = now
        self.last_received = now  # so a broker that never answers counts as dead
        return self._connect_frame

    def _require_connected(self):
        if not self.connected:
            raise _err(_E_NOT_CONNECTED)

    def publish(self, topic, payload, qos=0, retain=False, now=0):
        """(packet_id, frame) for a publish; packet_id is 0 at QoS 0.

        A QoS 1 frame is kept (not copied) for resending: do not modify it.

        A QoS 1 publish is kept until its PUBACK; MqttError if ``max_in_flight``
        are already waiting (the caller should wait for acks first).
        """
        self._require_connected()
        if qos == 0:
            frame = encode_publish(topic, payload, 0, 0, retain)
            self.last_sent = now
            return 0, frame
        if len(self._in_flight) >= self.max_in_flight:
            raise _err(_E_IN_FLIGHT, len(self._in_flight))
        check_topic_name(topic)  # before taking an id, so a bad topic leaks nothing
        pid = self.next_packet_id()
        frame = encode_publish(topic, payload, qos, pid, retain)
        self._in_flight.append([pid, frame, now])
        self.last_sent = now
        return pid, frame

    def subscribe(self, subscriptions, now=0):
        """(packet_id, frame) for SUBSCRIBE to [(filter, qos), ...]."""
        self._require_connected()
        pid = self.next_packet_id()
        frame = encode_subscribe(pid, subscriptions)
        self._pending.append(pid)
        self.last_sent = now
        return pid, frame

    def ping(self, now):
        """A PINGREQ frame now (poll sends these by itself when due)."""
        self.ping_outstanding = True
        self.last_sent = now
        return _PINGREQ_PACKET

    def connection_lost(self):
        """The network connection ended; in-flight publishes wait for the next CONNACK."""
        self.connected = False
        self.ping_outstanding = False
        self._pending = []

    def _resend(self, m, dup, now):
        # m: an entry of _in_flight
        m[2] = now
        self.resent += 1
        self.last_sent = now
        frame = m[1]
        frame[0] = (frame[0] | 0x08) if dup else (frame[0] & 0xF7)
        return frame

    # -------------------------------------------------------------- incoming
    def received(self, packet, now):
        """Account for a decoded packet from the broker; return frames to send in reply."""
        self.last_received = now
        if isinstance(packet, Publish):
            if packet.qos == 1:
                self.last_sent = now
                return [encode_puback(packet.packet_id)]
            return []
        kind = packet[0]
        if kind == _PUBACK:
            for i in range(len(self._in_flight)):
                if self._in_flight[i][0] == packet[1]:
                    self._in_flight.pop(i)
                    break
            # an unknown id is a late ack of a resend: nothing to do
        elif kind == _PINGRESP:
            self.ping_outstanding = False
        elif kind == _CONNACK:
            if packet[1]:  # refused
                self.connected = False
                return []
            self.connected = True
            dup = not self.clean_session
            return [self._resend(m, dup, now) for m in self._in_flight]
        elif kind == _SUBACK or kind == _UNSUBACK:
            if packet[1] in self._pending:
                self._pending.remove(packet[1])
        else:
            raise _err(_E_NOT_BROKER, packet)
        return []

    # -------------------------------------------------------------- timers
    def broker_dead(self, now):
        """True once 1.5 x keepalive_s passed with no packet from the broker."""
        k = self.keepalive_s
        return bool(k) and 2 * (now - self.last_received) >= 3 * k

    def poll(self, now):
        """Frames due at ``now``: timed-out QoS 1 publishes (DUP=1), then PINGREQ if due.

        PINGREQ is due when nothing was sent or nothing received for keepalive_s
        (and none is outstanding).
        """
        if not self.connected:
            return []
        out = []
        if self.retry_s:
            for m in self._in_flight:
                if now - m[2] >= self.retry_s:
                    out.append(self._resend(m, True, now))
        k = self.keepalive_s
        if k and not self.ping_outstanding and (
                now - self.last_sent >= k or now - self.last_received >= k):
            out.append(self.ping(now))
        return out
