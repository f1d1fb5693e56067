"""Fault injection for HIL tests: a lossy TCP proxy, clock jumps, a corrupted flash slot.

- ``TcpProxy``: sits between the DUT and the broker; ``delay_s``, ``loss``
  (probability of dropping a chunk, then the connection, as a broken link
  does to TCP) and ``partition()`` / ``heal()`` (every connection cut, new
  ones refused until healed).  Point the DUT's ``broker_port`` at
  ``proxy.port``.
- ``clock_jump(dut, t)``: sets the board clock over the unix control socket.
- ``corrupt_newer_slot(state_dir)``: overwrites the journal slot with the
  higher sequence number with garbage, as a torn flash page would.

>>> with TcpProxy(("127.0.0.1", 1883)) as proxy:
...     proxy.partition(); proxy.heal()
"""
import os
import random
import select
import socket
import struct
import threading
import time

# Journal record header (firmware/core/journal.py docstring, big-endian):
# b"UJ" | version u8 | sequence u32 | payload length u32 | payload | CRC-32 u32
_HEADER = struct.Struct(">2sBII")


class TcpProxy:
    """A TCP forwarder on 127.0.0.1:<port> with delay, loss and partition controls.

    >>> proxy = TcpProxy(("127.0.0.1", 1883)).start()
    >>> proxy.delay_s = 0.2       # every chunk, both ways
    >>> proxy.partition()         # the network is gone
    >>> proxy.heal()
    >>> proxy.close()
    """

    def __init__(self, upstream, delay_s=0.0, loss=0.0, seed=1):
        self.upstream = tuple(upstream)
        self.delay_s = delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.partitioned = False
        self.connections = 0  # accepted so far (a reconnect shows up here)
        self.dropped = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._pairs = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="tcp-proxy")

    def start(self):
        self._thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def _accept_loop(self):
        while not self._stop.is_set():
            ready, _, _ = select.select([self._listener], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            if self.partitioned:  # no route: the connection dies at once
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()  # broker down: the DUT sees the connection fail
                continue
            with self._lock:
                self.connections += 1
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready:
                    if self.partitioned:
                        break
                    continue
                data = src.recv(4096)
            except (OSError, ValueError):
                break
            if not data or self.partitioned:
                break
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                break  # a lost TCP segment that never gets through ends as a dead connection
            if self.delay_s:
                time.sleep(self.delay_s)
            try:
                dst.sendall(data)
            except OSError:
                break
        self._shut(src, dst)

    def _shut(self, *socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def partition(self):
        """Cut every open connection and refuse new ones until ``heal()``."""
        self.partitioned = True
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._shut(*pair)

    def heal(self):
        self.partitioned = False

    def close(self):
        self._stop.set()
        self.partition()
        if self._thread.is_alive():
            self._thread.join(2)
        self._listener.close()


def clock_jump(dut, t):
    """Set the DUT's board clock to UTC second ``t`` (control socket) -> the reply line.

    >>> clock_jump(dut, 1795753800 + 86400)
    'ok clock 1795840200'
    """
    reply = dut.control("clock %d" % t)
    if reply != "ok clock %d" % t:
        raise AssertionError("clock jump refused: %r" % reply)
    return reply


def read_slot(path):
    """(sequence, payload) of the journal record in file ``path``, or None (missing/garbage).

    Parsed from the documented layout, not with firmware.core.journal, and
    the CRC-32 checked with the standard zlib polynomial.
    """
    import zlib

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < _HEADER.size + 4:
        return None
    magic, version, seq, length = _HEADER.unpack_from(data)
    end = _HEADER.size + length
    if magic != b"UJ" or len(data) < end + 4:
        return None
    (crc,) = struct.unpack_from(">I", data, end)
    if zlib.crc32(data[:end]) != crc:
        return None
    return seq, data[_HEADER.size:end]


def journal_slots(state_dir):
    """{slot: (sequence, payload) or None} for the unix board's slot0.bin / slot1.bin."""
    return {i: read_slot(os.path.join(state_dir, "slot%d.bin" % i)) for i in (0, 1)}


def corrupt_newer_slot(state_dir, seed=7):
    """Overwrite the slot holding the newest valid record with random bytes (same length).

    Returns ``(corrupted_slot, older_record)`` where ``older_record`` is the
    (sequence, payload) the journal must fall back to.  Do it with the meter
    powered off (after ``dut.kill()``).
    """
    slots = journal_slots(state_dir)
    valid = {i: r for i, r in slots.items() if r is not None}
    if len(valid) != 2:
        raise AssertionError("need two valid journal slots, found %r" % sorted(valid))
    newer = max(valid, key=lambda i: valid[i][0])
    path = os.path.join(state_dir, "slot%d.bin" % newer)
    size = os.path.getsize(path)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(bytes(rng.randrange(256) for _ in range(size)))
    return newer, valid[1 - newer]
