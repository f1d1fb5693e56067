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
    await conn.connect("broker.local", 1883)
    await conn.subscribe([("urja/m/42/cmd/#", 1)])
    await conn.publish("urja/m/42/readings", payload, qos=1)   # waits for PUBACK
    msg = await conn.next_message(timeout_s=5)                  # or on_message=callback
    await conn.close()
"""
import asyncio
import time

from firmware.protocol.mqtt import (
    Connack, MqttError, PacketReader, Pingresp, Puback, Publish, MAX_PACKET,
)

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_CONNACK_KEY = const(-2)  # waiter keys: packet ids are 1..65535
_PING_KEY = const(-1)


class ConnectionLost(MqttError):
    """The network connection ended (or was never open); ``MqttConnection.error`` says why."""


class AckTimeout(MqttError):
    """No acknowledgement in time; a QoS 1 publish stays in flight and is resent."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a non-zero return code (``return_code``, ``name``)."""

    def __init__(self, connack):
        super().__init__("broker refused CONNECT: %s (%d)" % (connack.name, connack.return_code))
        self.return_code = connack.return_code
        self.name = connack.name


class MonotonicSeconds:
    """Integer seconds from a clock that never jumps: ticks_ms on MicroPython
    (wrap-safe as long as it is read at least every few days), time.monotonic
    on CPython.  Wall-clock time is useless here: an NTP sync would fire pings."""

    def __init__(self):
        self._ticks = getattr(time, "ticks_ms", None)
        self._ms = 0
        self._last = self._ticks() if self._ticks else 0

    def __call__(self):
        if self._ticks is None:
            return int(time.monotonic())  # type: ignore[attr-defined]  # CPython only
        t = self._ticks()
        self._ms += time.ticks_diff(t, self._last)
        self._last = t
        return self._ms // 1000


class _Waiter:
    def __init__(self):
        self.event = asyncio.Event()
        self.packet = None


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

    def __init__(self, session, on_message=None, clock=None, read_size=512,
                 max_packet=MAX_PACKET, tick_s=1, inbox_size=16, keepalive_task=True):
        self.session = session
        self.on_message = on_message
        self.clock = clock or MonotonicSeconds()
        self.read_size = read_size
        self.tick_s = tick_s
        self.inbox_size = inbox_size
        self.error = ""  # why the connection ended, "" while open or before connect
        self.callback_errors = 0
        self.dropped = 0
        self._packets = PacketReader(max_packet)
        self._reader = None
        self._writer = None
        self._write_lock = asyncio.Lock()
        self._waiters = {}
        self._inbox = []
        self._inbox_event = asyncio.Event()
        self._acked = asyncio.Event()
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
        """Open TCP, send CONNECT, wait for CONNACK; return the ``Connack``.

        Raises ConnectRefused, AckTimeout (no CONNACK), or OSError from the socket.
        Unacked QoS 1 publishes of the session go out right after the CONNACK.
        """
        if self._reader is not None:
            raise MqttError("an MqttConnection is used once; make a new one to reconnect")
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), timeout_s)
        self._open = True
        waiter = self._expect(_CONNACK_KEY)
        self._rx_task = asyncio.create_task(self._receive_loop())
        try:
            await self._send(self.session.connect(self.clock()))
            connack = await self._wait(_CONNACK_KEY, waiter, timeout_s, "CONNACK")
        except Exception:
            await self._shutdown("connect failed")
            raise
        if not connack.accepted:
            await self._shutdown("broker refused CONNECT: " + connack.name)
            raise ConnectRefused(connack)
        if self._keepalive_task:
            self._ka_task = asyncio.create_task(self._keepalive_loop())
        return connack

    async def close(self):
        """Send DISCONNECT (the broker discards the will) and close the socket."""
        if not self._open:
            return
        try:
            await self._send(self.session.disconnect())
        except Exception:  # already broken: closing anyway
            pass
        await self._shutdown("closed by client")

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
        waiter = self._expect(pid)
        await self._send(frame)
        await self._wait(pid, waiter, timeout_s, "PUBACK")
        return pid

    async def subscribe(self, subscriptions, timeout_s=10):
        """SUBSCRIBE to [(filter, qos), ...]; return the granted QoS list (0x80 = refused)."""
        self._check_open()
        pid, frame = self.session.subscribe(subscriptions, self.clock())
        waiter = self._expect(pid)
        await self._send(frame)
        suback = await self._wait(pid, waiter, timeout_s, "SUBACK")
        return suback.granted

    async def unsubscribe(self, topic_filters, timeout_s=10):
        """UNSUBSCRIBE from [filter, ...] and wait for UNSUBACK."""
        self._check_open()
        pid, frame = self.session.unsubscribe(topic_filters, self.clock())
        waiter = self._expect(pid)
        await self._send(frame)
        await self._wait(pid, waiter, timeout_s, "UNSUBACK")

    async def ping(self, timeout_s=10):
        """Send PINGREQ now and wait for PINGRESP."""
        self._check_open()
        waiter = self._expect(_PING_KEY)
        await self._send(self.session.ping(self.clock()))
        await self._wait(_PING_KEY, waiter, timeout_s, "PINGRESP")

    async def wait_all_acked(self, timeout_s=10):
        """Wait until no QoS 1 publish of the session awaits PUBACK."""
        try:
            await asyncio.wait_for(self._until_all_acked(), timeout_s)
        except asyncio.TimeoutError:
            raise AckTimeout("publishes %r still unacked after %ss" % (
                self.session.in_flight_ids(), timeout_s))

    async def next_message(self, timeout_s=None):
        """The oldest unread incoming ``Publish``, or None after ``timeout_s``.

        Raises ConnectionLost once the inbox is empty and the connection is gone.
        """
        while not self._inbox:
            self._check_open()
            self._inbox_event.clear()
            if timeout_s is None:
                await self._inbox_event.wait()
                continue
            try:
                await asyncio.wait_for(self._inbox_event.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None
        return self._inbox.pop(0)

    # ------------------------------------------------------------ internals
    def _check_open(self):
        if not self._open:
            raise ConnectionLost(self.error or "not connected")

    def _expect(self, key):
        w = _Waiter()
        self._waiters[key] = w
        return w

    async def _wait(self, key, waiter, timeout_s, what):
        try:
            await asyncio.wait_for(waiter.event.wait(), timeout_s)
        except asyncio.TimeoutError:
            raise AckTimeout("no %s within %ss" % (what, timeout_s))
        finally:
            if self._waiters.get(key) is waiter:
                del self._waiters[key]
        if waiter.packet is None:
            raise ConnectionLost(self.error)
        return waiter.packet

    def _wake(self, key, packet):
        w = self._waiters.pop(key, None)
        if w is not None:
            w.packet = packet
            w.event.set()

    async def _until_all_acked(self):
        while self.session.in_flight_ids():
            self._check_open()
            self._acked.clear()
            await self._acked.wait()

    async def _send(self, frame):
        writer = self._writer
        if writer is None:
            raise ConnectionLost("not connected")
        # one writer at a time: MicroPython's drain() would send a shared buffer twice
        async with self._write_lock:
            writer.write(frame)
            await writer.drain()

    async def _receive_loop(self):
        reader = self._reader
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
                    await self._handle(packet)
        except Exception as err:  # socket errors, malformed packets: the link is over
            await self._shutdown("%s: %s" % (type(err).__name__, err))

    async def _handle(self, packet):
        for frame in self.session.received(packet, self.clock()):
            await self._send(frame)
        if isinstance(packet, Publish):
            self._deliver(packet)
        elif isinstance(packet, Puback):
            self._wake(packet.packet_id, packet)
            self._acked.set()
        elif isinstance(packet, Pingresp):
            self._wake(_PING_KEY, packet)
        elif isinstance(packet, Connack):
            self._wake(_CONNACK_KEY, packet)
        else:  # SUBACK or UNSUBACK: session.received let nothing else through
            self._wake(packet.packet_id, packet)

    def _deliver(self, publish):
        if self.on_message is not None:
            try:
                self.on_message(publish)
            except Exception:  # a bad handler must not stop acks and pings
                self.callback_errors += 1
            return
        if len(self._inbox) >= self.inbox_size:
            self._inbox.pop(0)
            self.dropped += 1
        self._inbox.append(publish)
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
        self._acked.set()
        self._inbox_event.set()
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
