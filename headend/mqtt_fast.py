"""A lean MQTT v5 subscriber for the ingest hot path: QoS 1 in, PUBACKs when *we* say so.

Only what an ingest worker needs: CONNECT (clean start off, session expiry,
Receive Maximum), SUBSCRIBE, PUBLISH in (QoS 0/1), PUBACK out in batches,
PINGREQ, DISCONNECT.  Two layers (docs/STYLE.md sections 1 and 3):

- ``FrameReader`` and the ``*_packet`` encoders are pure bytes <-> values,
  tested byte by byte (headend/tests/test_mqtt_fast.py, frames from paho's
  encoder and Mosquitto).
- ``FastSubscriber`` owns the socket (an ``asyncio.Protocol``), reconnects
  with backoff and **subscribes again on every connect**: Mosquitto 2.0.11
  restores a persistent session after a restart but not its shared
  subscriptions, so ``session_present`` is not trusted.

Why not gmqtt here: gmqtt creates an asyncio task per PUBLISH and writes one
PUBACK per message; this reader parses every frame of a ``data_received``
chunk in one loop, hands them to ``on_messages`` as one list, and the caller
acknowledges a whole committed batch with one ``write`` (``ack_all``).  The
broker's in-flight window is our Receive Maximum (65535), so a batch that
waits for its commit can hold up to that many messages.

>>> sub = FastSubscriber("127.0.0.1", 1883, "ingest-0", ["$share/ingest/urja/v1/+/up/#"],
...                      on_messages=handle)                           # doctest: +SKIP
>>> await sub.start(); ...; sub.ack_all(conn, packet_ids)               # doctest: +SKIP
"""
import asyncio
import logging
import struct

log = logging.getLogger("urja.mqtt_fast")

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
PROTOCOL_V5 = 5
# property identifiers (MQTT 5.0, 2.2.2.2)
PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21
MAX_PACKET = 268435455  # the largest Remaining Length a varint can say


class MqttError(RuntimeError):
    """A refused CONNECT or SUBSCRIBE, or bytes that are not MQTT v5."""


def varint(n):
    """MQTT Variable Byte Integer.

    >>> varint(321)
    b'\\xc1\\x02'
    """
    if not 0 <= n <= MAX_PACKET:
        raise MqttError("varint out of range: %d" % n)
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(s):
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def _packet(kind, flags, body):
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


def connect_packet(client_id, keepalive_s=30, clean_start=False, session_expiry_s=0,
                   receive_maximum=65535):
    """CONNECT (v5): no will, no username; properties session expiry + receive maximum."""
    props = bytes([PROP_SESSION_EXPIRY]) + struct.pack("!I", session_expiry_s)
    props += bytes([PROP_RECEIVE_MAXIMUM]) + struct.pack("!H", receive_maximum)
    flags = 0x02 if clean_start else 0x00
    body = (_utf8("MQTT") + bytes([PROTOCOL_V5, flags]) + struct.pack("!H", keepalive_s)
            + varint(len(props)) + props + _utf8(client_id))
    return _packet(CONNECT, 0, body)


def subscribe_packet(packet_id, filters):
    """SUBSCRIBE (v5): ``filters`` = [(topic filter, max qos)], no properties."""
    body = struct.pack("!H", packet_id) + b"\x00"
    for topic_filter, qos in filters:
        body += _utf8(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def puback_packet(packet_id):
    """PUBACK, reason Success (the short v5 form: 2 bytes, reason and properties omitted)."""
    return b"\x40\x02" + struct.pack("!H", packet_id)


def pubacks(packet_ids):
    """All the PUBACKs of a batch as one buffer (one write).

    Each is 4 bytes, 0x40 0x02 and the id: one big-endian word per id, packed at once.

    >>> pubacks([1, 258]) == puback_packet(1) + puback_packet(258)
    True
    """
    return struct.pack("!%dI" % len(packet_ids), *[0x40020000 | pid for pid in packet_ids])


COALESCE_BELOW = 32768  # bytes: a read this small is followed by a read_coalesce_s pause
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # v5: reason 0 (normal) may be omitted


def _read_varint(buf, pos, end):
    """(value, next position) or None when the buffer ends inside the varint."""
    value = shift = 0
    for i in range(4):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MqttError("malformed Variable Byte Integer")


class Publish:
    """One received PUBLISH: ``topic`` (str), ``payload`` (bytes), ``qos``, ``packet_id``,
    ``dup``."""
    __slots__ = ("topic", "payload", "qos", "packet_id", "dup")

    def __init__(self, topic, payload, qos, packet_id, dup):
        self.topic, self.payload, self.qos, self.packet_id, self.dup = (
            topic, payload, qos, packet_id, dup)

    def __repr__(self):
        return "Publish(%r, %d bytes, qos=%d, id=%s)" % (self.topic, len(self.payload), self.qos,
                                                         self.packet_id)


def parse_frame(buf, pos, end, max_packet=MAX_PACKET):
    """The frame at ``buf[pos:end]``: (Publish or (type, flags, body bytes), next position),
    or None while it is incomplete.  MqttError for bytes that are not MQTT v5: every
    field must lie inside its frame (a PUBLISH whose topic, packet id or properties
    run past its Remaining Length is refused, not read from the next frame).

    >>> parse_frame(b"\\x30\\x0b\\x00\\x03a/b\\x00hello", 0, 13)
    (Publish('a/b', 5 bytes, qos=0, id=None), 13)
    """
    if end - pos < 2:
        return None
    head = buf[pos]
    rl = _read_varint(buf, pos + 1, end)
    if rl is None:
        return None
    length, body = rl
    if length > max_packet:
        raise MqttError("packet of %d bytes exceeds the limit" % length)
    stop = body + length
    if stop > end:
        return None
    kind = head >> 4
    if kind != PUBLISH:
        return (kind, head & 0x0F, bytes(buf[body:stop])), stop
    qos = (head >> 1) & 3
    if qos == 3:
        raise MqttError("PUBLISH with QoS 3")
    p = body + 2
    if p > stop:
        raise MqttError("PUBLISH too short for its topic length")
    tlen = (buf[body] << 8) | buf[body + 1]
    topic_end = p + tlen
    packet_id = None
    if qos:
        if topic_end + 2 > stop:
            raise MqttError("PUBLISH too short for its topic and packet id")
        packet_id = (buf[topic_end] << 8) | buf[topic_end + 1]
        p = topic_end + 2
    else:
        p = topic_end
    if p > stop:
        raise MqttError("PUBLISH too short for its topic")
    props = _read_varint(buf, p, stop)  # properties: skipped (no aliases asked)
    if props is None or props[0] > stop - props[1]:
        raise MqttError("PUBLISH properties run past the frame")
    p = props[1] + props[0]
    topic = buf[body + 2:topic_end].decode("utf-8")
    return Publish(topic, bytes(buf[p:stop]), qos, packet_id, bool(head & 0x08)), stop


class FrameReader:
    """Incremental MQTT v5 reader: ``feed(bytes)`` -> (publishes, other packets).

    Frames may arrive whole, split anywhere, or many per chunk.  Other
    packets come back as (type, flags, body bytes).

    >>> r = FrameReader()
    >>> r.feed(b"\\x30\\x0b\\x00\\x03a/b\\x00hello"[:5])
    ([], [])
    >>> pubs, _ = r.feed(b"\\x30\\x0b\\x00\\x03a/b\\x00hello"[5:]); pubs[0].topic, pubs[0].payload
    ('a/b', b'hello')
    """

    # A subclass's fast path: ``_take(buf, pos, pubs)`` appends what it takes from the
    # frames at ``pos`` to ``pubs`` and returns where it stopped (headend.fastscan).
    _take = None

    def __init__(self, max_packet=MAX_PACKET):
        self._buf = bytearray()
        self.max_packet = max_packet

    def feed(self, data):
        buf = self._buf
        buf += data
        end = len(buf)
        pos = 0
        pubs, others = [], []
        take = self._take
        while True:
            if take is not None:
                pos = take(buf, pos, pubs)
            frame = parse_frame(buf, pos, end, self.max_packet)
            if frame is None:
                break
            item, pos = frame
            (pubs if type(item) is Publish else others).append(item)
        if pos:
            del buf[:pos]
        return pubs, others


class _Connection(asyncio.Protocol):
    """One TCP connection; the subscriber hands it the parsed frames."""

    def __init__(self, owner):
        self.owner = owner
        self.reader = owner.reader_factory()
        self.transport = None
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.last_rx = self.loop.time()
        self.coalesce_s = owner.read_coalesce_s
        self._resume_at = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.last_rx = self.loop.time()
        if self.coalesce_s and len(data) < COALESCE_BELOW and self._resume_at is None:
            # A small read: let the kernel gather the next ones for a moment.  Every
            # wake-up costs the event loop and a recv() whatever it brings; at ~2 KB
            # per read these were ~1 us per message (docs/SCALING.md).
            self.transport.pause_reading()
            self._resume_at = self.loop.call_later(self.coalesce_s, self._resume)
        try:
            pubs, others = self.reader.feed(data)
        except (MqttError, UnicodeDecodeError) as err:  # what parse_frame raises
            log.error("malformed data from the broker: %s", err)
            self.transport.close()
            return
        for kind, flags, body in others:
            self.owner._control(self, kind, flags, body)
        if pubs:
            self.owner.on_messages(self, pubs)

    def _resume(self):
        self._resume_at = None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc):
        if self._resume_at is not None:
            self._resume_at.cancel()
        if not self.closed.done():
            self.closed.set_result(exc)

    def write(self, data):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            return True
        return False

    @property
    def open(self):
        return self.transport is not None and not self.transport.is_closing()


class FastSubscriber:
    """Connect, subscribe on every connect, deliver PUBLISH batches, reconnect forever.

    ``on_messages(conn, [Publish])`` runs in the event loop for every chunk
    read; acknowledge QoS 1 messages later with ``ack_all(conn, ids)``: if
    ``conn`` is no longer the live connection the acks are dropped (the broker
    re-sends those messages on the next connection, dedupe absorbs them).
    ``on_subscribed()`` runs after every SUBACK.
    """

    def __init__(self, host, port, client_id, filters, on_messages, on_subscribed=None,
                 keepalive_s=30, session_expiry_s=7 * 86400, receive_maximum=65535,
                 reconnect_delay_s=1.0, max_reconnect_delay_s=10.0, reader_factory=FrameReader,
                 read_coalesce_s=0.0):
        self.host, self.port, self.client_id = host, port, client_id
        # a new reader per connection: anything with FrameReader's feed() (headend.fastscan)
        self.reader_factory = reader_factory
        # > 0: after a read smaller than COALESCE_BELOW, pause reading this long
        self.read_coalesce_s = read_coalesce_s
        self.filters = list(filters)  # [(topic filter, qos)]
        self.on_messages = on_messages
        self.on_subscribed = on_subscribed or (lambda: None)
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.reconnect_delay_s = reconnect_delay_s
        self.max_reconnect_delay_s = max_reconnect_delay_s
        self.conn = None
        self.connects = 0
        self._connack = None
        self._task = None
        self._stopping = False
        self._packet_id = 0

    # --- control packets (event loop) ---------------------------------------------------------

    def _control(self, conn, kind, flags, body):
        if kind == CONNACK:
            if len(body) < 2:
                raise MqttError("short CONNACK")
            if body[1] == 0:
                # live from now on: a resumed session's redeliveries can follow the
                # CONNACK in the same read, and their acks must not be dropped
                self.conn = conn
            if self._connack is not None and not self._connack.done():
                self._connack.set_result((bool(body[0] & 1), body[1]))
        elif kind == SUBACK:
            plen, p = _read_varint(body, 2, len(body))
            codes = body[p + plen:]
            if any(c >= 0x80 for c in codes):
                log.error("subscription refused: reason codes %s", list(codes))
                conn.transport.close()
                return
            self.on_subscribed()
        elif kind == DISCONNECT:
            log.warning("broker sent DISCONNECT (reason %s)", body[0] if body else 0)
            conn.transport.close()
        # PINGRESP, PUBACK of nothing we sent: ignore

    # --- connection lifecycle -----------------------------------------------------------------

    async def _connect_once(self):
        loop = asyncio.get_running_loop()
        _transport, conn = await loop.create_connection(lambda: _Connection(self), self.host,
                                                        self.port)
        self._connack = loop.create_future()
        conn.write(connect_packet(self.client_id, self.keepalive_s, False, self.session_expiry_s,
                                  self.receive_maximum))
        try:
            session_present, code = await asyncio.wait_for(self._connack, 10)
        except asyncio.TimeoutError:
            conn.transport.close()
            raise MqttError("no CONNACK within 10 s")
        if code:
            conn.transport.close()
            raise MqttError("CONNECT refused, reason 0x%02x" % code)
        self.conn = conn
        self.connects += 1
        self._packet_id = self._packet_id % 65535 + 1
        conn.write(subscribe_packet(self._packet_id, self.filters))  # always: see module doc
        return conn

    async def _keepalive(self, conn):
        while conn.open:
            await asyncio.sleep(self.keepalive_s / 2)
            if conn.loop.time() - conn.last_rx > self.keepalive_s * 1.5:
                # not even a PINGRESP: a half-open link (the broker's host vanished)
                log.warning("nothing from %s:%d for %.0fs; reconnecting", self.host, self.port,
                            conn.loop.time() - conn.last_rx)
                conn.transport.abort()
                return
            conn.write(PINGREQ_PACKET)

    async def _supervise(self, first):
        delay = self.reconnect_delay_s
        conn = first
        while not self._stopping:
            if conn is None:
                try:
                    conn = await self._connect_once()
                    delay = self.reconnect_delay_s
                except (OSError, MqttError) as err:
                    log.warning("connect to %s:%d failed: %s; retry in %.1fs", self.host,
                                self.port, err, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_reconnect_delay_s)
                    continue
            pinger = asyncio.ensure_future(self._keepalive(conn))
            await conn.closed
            pinger.cancel()
            if self.conn is conn:
                self.conn = None
            conn = None
            if not self._stopping:
                log.warning("connection to %s:%d lost; reconnecting", self.host, self.port)
                await asyncio.sleep(self.reconnect_delay_s)

    async def start(self):
        """Connect (raises when the first attempt fails) and keep reconnecting afterwards."""
        first = await self._connect_once()
        self._task = asyncio.ensure_future(self._supervise(first))

    def ack_all(self, conn, packet_ids):
        """PUBACK ``packet_ids`` on ``conn`` in one write; False (nothing sent) if it is gone."""
        if not packet_ids or conn is not self.conn:
            return False
        return conn.write(pubacks(packet_ids))

    async def stop(self):
        """Send DISCONNECT (the session stays: expiry > 0) and close."""
        self._stopping = True
        conn = self.conn
        if conn is not None and conn.open:
            conn.write(DISCONNECT_PACKET)
            conn.transport.close()
            await asyncio.wait_for(asyncio.shield(conn.closed), 5)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
