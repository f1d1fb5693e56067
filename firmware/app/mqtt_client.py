"""MQTT 3.1.1 connection over asyncio streams (MicroPython and CPython).

A thin shell around the sans-IO ``firmware.protocol.mqtt`` codec and
``Session``: it owns one TCP connection, a receive task and a keepalive
task.  It never reconnects; when the link dies every waiter gets
``ConnectionLost`` and ``error`` says why.  A supervisor makes a new
``MqttConnection`` with the *same* ``Session``, so unacked QoS 1 publishes
are sent again after the next CONNACK.

    session = Session("meter-42", keepalive_s=60, clean_session=False,
                      will_topic="urja/m/42/status", will_message=b"offline")
    conn = MqttConnection(session)
    present = await conn.connect("broker.local", 1883)          # CONNACK's session present
    await conn.subscribe([("urja/m/42/cmd/#", 1)])
    await conn.publish("urja/m/42/readings", payload, qos=1)   # waits for PUBACK
    msg = await conn.next_message(timeout_s=5)                  # or on_message=callback
    await conn.close()
"""
import asyncio
import time

from firmware.protocol.mqtt import MqttError, PacketReader, Publish, MAX_PACKET

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

# packet types (MQTT 3.1.1 2.2.1) of the tuples ``mqtt`` decodes the broker's packets to
_CONNACK = const(2)
_PUBACK = const(4)
_PINGRESP = const(13)
# waiter keys: the packet id of a PUBACK, SUBACK or UNSUBACK (1..65535), or
# minus the packet type for the one CONNACK or PINGRESP awaited (mqtt_more's ping)
_CONNACK_KEY = const(-2)


def __getattr__(name):
    # ConnectRefused (an MqttError with ``return_code`` and ``name``: the broker
    # answered CONNECT with a non-zero return code) is made on first use and kept
    # in the module dict: a meter whose broker takes it never holds the class.
    if name == "ConnectRefused":
        g = globals()
        if name not in g:
            g[name] = type(name, (MqttError,), {})
        return g[name]
    raise AttributeError(name)


class ConnectionLost(MqttError):
    """The network connection ended (or was never open); ``MqttConnection.error`` says why."""


class AckTimeout(MqttError):
    """No acknowledgement in time; a QoS 1 publish stays in flight and is resent."""


_ticks_ms = getattr(time, "ticks_ms", None)
_elapsed_ms = 0
_last_ticks = _ticks_ms() if _ticks_ms else 0


def monotonic_s():
    """Integer seconds from a clock that never jumps: ticks_ms on MicroPython
    (wrap-safe as long as it is read at least every few days), time.monotonic
    on CPython.  Wall-clock time is useless here: an NTP sync would fire pings."""
    global _elapsed_ms, _last_ticks
    if _ticks_ms is None:
        return int(time.monotonic())  # type: ignore[attr-defined]  # CPython only
    t = _ticks_ms()
    _elapsed_ms += time.ticks_diff(t, _last_ticks)
    _last_ticks = t
    return _elapsed_ms // 1000


class MqttConnection:
    """One MQTT network connection driven by a ``Session``.

    Incoming publishes go to ``on_message(publish)`` if given (a plain
    function; its exceptions are counted in ``callback_errors``, not allowed
    to kill the receive task), else to an inbox read with ``next_message``;
    the inbox keeps the newest ``inbox_size`` and counts the rest in
    ``dropped``.  QoS 1 publishes from the broker are acked on receipt.

    Keepalive (PINGREQ when due, the broker dead after 1.5 x keepalive) runs
    in a task of its own every ``tick_s``; with ``keepalive_task=False`` the
    owner calls ``tick()`` from its own loop instead, at least every
    ``tick_s`` while it is not waiting for an ack (the meter: one coroutine
    less on its heap).
    """

    # read_size: one buffer held for the connection's whole life (all day on a
    # meter) while what comes in is 4-byte PUBACKs and the odd command, which
    # PacketReader assembles in a buffer of its own exact size whatever the read size
    def __init__(self, session, on_message=None, clock=None, read_size=256,
                 max_packet=MAX_PACKET, tick_s=1, inbox_size=16, keepalive_task=True):
        self.session = session
        self.on_message = on_message
        self.clock = clock or monotonic_s
        self.read_size = read_size
        self.tick_s = tick_s
        self.inbox_size = inbox_size
        self.error = ""  # why the connection ended, "" while open or before connect
        self.callback_errors = 0
        self.dropped = 0
        self._packets = PacketReader(max_packet)
        self._writer = None
        self._write_lock = asyncio.Lock()
        self._waiters = {}  # key -> [Event, the packet that set it, or None: link lost]
        # The inbox (a list made by the first message without on_message) and the
        # events made by the first next_message / wait_all_acked: the meter uses none
        # (on_message, one PUBACK at a time), so its connection holds none.
        self._inbox = None
        self._inbox_event = None  # set when the inbox gets a message
        self._acked = None  # set on every PUBACK
        self._rx_task = None
        self._ka_task = None
        self._keepalive_task = keepalive_task
        self._open = False

    @property
    def is_connected(self):
        """True between an accepted CONNACK and the end of the connection."""
        return self._open and self.session.connected

    # ------------------------------------------------------------ connect / close
    async def connect(self, host, port, timeout_s=10):
        """Open TCP, send CONNECT, wait for CONNACK; return its session present flag.

        Raises ConnectRefused, AckTimeout (no CONNACK), or OSError from the socket.
        Unacked QoS 1 publishes of the session go out right after the CONNACK.
        """
        if self._writer is not None:
            raise MqttError("an MqttConnection is used once; make a new one to reconnect")
        streams: "tuple" = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        reader, self._writer = streams  # the reader is _receive_loop's alone
        self._open = True
        self._rx_task = asyncio.create_task(self._receive_loop(reader))
        try:
            connack = await self._request(_CONNACK_KEY, self.session.connect(self.clock()),
                                          timeout_s, "CONNACK")
        except Exception:
            await self._shutdown("connect failed")
            raise
        if connack[1]:
            from firmware.protocol.mqtt_more import connection_refused
            raise await connection_refused(self, connack[1])
        if self._keepalive_task:
            self._ka_task = asyncio.create_task(self._keepalive_loop())
        return connack[2]

    async def abort(self, reason="aborted by client"):
        """Close the socket without DISCONNECT (the broker publishes the will)."""
        await self._shutdown(reason)

    # ------------------------------------------------------------ requests
    async def publish(self, topic, payload, qos=0, retain=False, timeout_s=10):
        """Publish; at QoS 1 wait for PUBACK.  Returns the packet id (0 at QoS 0).

        On AckTimeout the message stays in the session and is resent (after
        ``retry_s`` or on reconnect); ``wait_all_acked`` waits for it.
        """
        self._check_open()
        pid, frame = self.session.publish(topic, payload, qos, retain, self.clock())
        if qos == 0:
            await self._send(frame)
            return 0
        await self._request(pid, frame, timeout_s, "PUBACK")
        return pid

    async def subscribe(self, subscriptions, timeout_s=10):
        """SUBSCRIBE to [(filter, qos), ...]; return the granted QoS list (0x80 = refused)."""
        self._check_open()
        pid, frame = self.session.subscribe(subscriptions, self.clock())
        suback = await self._request(pid, frame, timeout_s, "SUBACK")
        return suback[2]

    def __getattr__(self, name):
        # close, unsubscribe, ping, wait_all_acked and next_message (coroutines:
        # ``await conn.close()``), which a meter never calls (it aborts), are functions
        # of ``firmware.protocol.mqtt_more`` taking the connection: one method here,
        # not six.  Their docstrings are there.
        from firmware.protocol import mqtt_more
        if name in mqtt_more.CONNECTION_MORE:
            fn = getattr(mqtt_more, "connection_" + name)
            return lambda *args, **kwargs: fn(self, *args, **kwargs)
        raise AttributeError(name)

    # ------------------------------------------------------------ internals
    def _check_open(self):
        if not self._open:
            raise ConnectionLost(self.error or "not connected")

    async def _request(self, key, frame, timeout_s, what):
        # Send ``frame``, then wait for the broker's answer (``what``), which
        # _receive_loop hands to the waiter under ``key``; the waiter is in place
        # before the frame goes, so no answer can come first.
        waiter: "list" = [asyncio.Event(), None]  # the event, then the answer
        self._waiters[key] = waiter
        try:
            await self._send(frame)
            await asyncio.wait_for(waiter[0].wait(), timeout_s)
        except asyncio.TimeoutError:
            raise AckTimeout("no %s within %ss" % (what, timeout_s))
        finally:
            if self._waiters.get(key) is waiter:
                del self._waiters[key]
        if waiter[1] is None:
            raise ConnectionLost(self.error)
        return waiter[1]

    def _wake(self, key, packet):
        w = self._waiters.pop(key, None)
        if w is not None:
            w[1] = packet
            w[0].set()

    async def _send(self, frame):
        writer = self._writer
        if writer is None:
            raise ConnectionLost("not connected")
        # one writer at a time: MicroPython's drain() would send a shared buffer twice
        async with self._write_lock:
            writer.write(frame)
            await writer.drain()

    async def _receive_loop(self, reader):
        # MicroPython's stream reads into one buffer held for the connection: a read()
        # per PUBACK would allocate read_size bytes and shrink them, holes that
        # fragment a small heap.  CPython's StreamReader has no readinto.
        buf = bytearray(self.read_size) if hasattr(reader, "readinto") else None
        view = memoryview(buf) if buf is not None else None
        try:
            while True:
                if view is None:
                    data = await reader.read(self.read_size)  # type: ignore[union-attr]
                else:
                    n = await reader.readinto(buf)  # type: ignore[union-attr]
                    if n is None:  # woken with nothing to read yet
                        continue
                    data = view[:n]
                if not data:
                    raise ConnectionLost("broker closed the connection")
                for packet in self._packets.feed(data):
                    for frame in self.session.received(packet, self.clock()):
                        await self._send(frame)
                    if isinstance(packet, Publish):
                        self._deliver(packet)
                        continue
                    kind = packet[0]  # session.received let only broker packets through
                    if kind == _CONNACK or kind == _PINGRESP:
                        self._wake(-kind, packet)
                    else:  # PUBACK, SUBACK or UNSUBACK: keyed by packet id
                        self._wake(packet[1], packet)
                        if kind == _PUBACK and self._acked is not None:
                            self._acked.set()
        except Exception as err:  # socket errors, malformed packets: the link is over
            await self._shutdown("%s: %s" % (type(err).__name__, err))

    def _deliver(self, publish):
        if self.on_message is not None:
            try:
                self.on_message(publish)
            except Exception:  # a bad handler must not stop acks and pings
                self.callback_errors += 1
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = []
        if len(inbox) >= self.inbox_size:
            inbox.pop(0)
            self.dropped += 1
        inbox.append(publish)
        if self._inbox_event is not None:
            self._inbox_event.set()

    async def tick(self):
        """One keepalive check: close the connection if the broker is dead, else send
        what the session has due (PINGREQ, timed-out QoS 1 resends)."""
        now = self.clock()
        if self.session.broker_dead(now):
            await self._shutdown("no packet from the broker for 1.5 x keepalive")
            return
        for frame in self.session.poll(now):
            await self._send(frame)

    async def _keepalive_loop(self):
        try:
            while self._open:
                await asyncio.sleep(self.tick_s)
                await self.tick()
        except Exception as err:
            await self._shutdown("%s: %s" % (type(err).__name__, err))

    async def _shutdown(self, reason):
        if not self._open:
            return
        self._open = False
        self.error = reason
        self.session.connection_lost()
        for key in list(self._waiters):
            self._wake(key, None)
        for event in (self._acked, self._inbox_event):
            if event is not None:
                event.set()
        current = asyncio.current_task()
        for task in (self._rx_task, self._ka_task):
            if task is not None and task is not current:
                task.cancel()
        writer = self._writer
        if writer is not None:
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:  # the peer may have reset it already
                pass
