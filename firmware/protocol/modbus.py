"""Modbus RTU master codec (sans-IO): requests out, responses in, timing as arithmetic.

Function codes 03/04 (read holding/input registers), 06 (write one) and 16
(write many); frame = slave, PDU, CRC-16/MODBUS low byte first.  The master
task that owns the UART calls these; nothing here touches I/O or a clock.

>>> read_input_registers(1, 0, 2).adu.hex()
'01040000000271cb'
>>> p = ResponseParser(read_input_registers(1, 0, 2))
>>> p.feed(bytes.fromhex("01040400"))  # partial: None
>>> p.feed(bytes.fromhex("0008e67dce")).registers
[0, 2278]
"""
from firmware.protocol.crc16 import crc16_modbus

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]  # looser signature than the stub
        return x

_READ_HOLDING_REGISTERS = const(3)
_READ_INPUT_REGISTERS = const(4)
_WRITE_SINGLE_REGISTER = const(6)
_WRITE_MULTIPLE_REGISTERS = const(16)

# Modbus Application Protocol V1.1b3, sections 6.3, 6.4 and 6.12
_MAX_READ_COUNT = const(125)
_MAX_WRITE_COUNT = const(123)
_BROADCAST = const(0)
# imported by its name as a string: an import statement would intern that name and
# "modbus_more" with this module on every meter, which never loads it
_MORE = const("firmware.protocol.modbus_more")


def __getattr__(name):
    # ModbusError (a ValueError: a request that cannot be built, or a parser used for a
    # request with no reply) is made on first use and kept in the module dict: held from
    # import on, the class would cost heap a meter sending good requests never needs.
    # Raise sites here call ``__getattr__("ModbusError")``.
    if name == "ModbusError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # EXCEPTION_NAMES with exception_name(), the function codes and limits under their
    # public names, the requests a meter reading an SDM never sends (FC 03, 06, 16) and
    # the timing helpers it never calls: in ``modbus_more``, loaded on first use (a
    # meter's heap holds them only then)
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    more = __import__(_MORE, None, None, ["__name__"])  # a fromlist: the module itself
    if name in more.PUBLIC[__name__]:
        return getattr(more, name)
    raise AttributeError(name)


class Request:
    """One master request and its RTU frame (``adu``); build it with the helpers below.

    >>> from firmware.protocol.modbus import write_single_register  # modbus_more
    >>> r = write_single_register(1, 0x0014, 2)
    >>> r.adu.hex(), r.response_length
    ('010600140002480f', 8)
    """

    def __init__(self, slave, function, address, count, values=None):
        if not isinstance(slave, int) or slave < 0 or slave > 247:
            raise __getattr__("ModbusError")(
                "slave must be 0 (broadcast) or 1..247, got %r" % (slave,))
        if not isinstance(address, int) or address < 0 or address > 0xFFFF:
            raise __getattr__("ModbusError")("address must be 0..65535, got %r" % (address,))
        if function not in (_READ_HOLDING_REGISTERS, _READ_INPUT_REGISTERS,
                            _WRITE_SINGLE_REGISTER, _WRITE_MULTIPLE_REGISTERS):
            raise __getattr__("ModbusError")(
                "function code %r not supported (3, 4, 6, 16)" % (function,))
        reads = function == _READ_HOLDING_REGISTERS or function == _READ_INPUT_REGISTERS
        if reads and slave == _BROADCAST:
            raise __getattr__("ModbusError")("a read cannot be broadcast")
        limit = _MAX_READ_COUNT if reads else _MAX_WRITE_COUNT
        if count < 1 or count > limit:
            raise __getattr__("ModbusError")("count must be 1..%d, got %d" % (limit, count))
        if address + count > 0x10000:
            raise __getattr__("ModbusError")("registers 0x%04x+%d run past 0xffff" % (address, count))
        self.slave = slave
        self.function = function
        self.address = address
        self.count = count
        self.values = values
        pdu = bytearray((slave, function, address >> 8, address & 0xFF))
        if function == _WRITE_SINGLE_REGISTER:
            pdu.extend((values[0] >> 8, values[0] & 0xFF))
        else:
            pdu.extend((count >> 8, count & 0xFF))
        if function == _WRITE_MULTIPLE_REGISTERS:
            pdu.append(2 * count)
            for v in values:
                pdu.extend((v >> 8, v & 0xFF))
        crc = crc16_modbus(pdu)
        pdu.extend((crc & 0xFF, crc >> 8))  # low byte first
        self.adu = bytes(pdu)

    @property
    def response_length(self):
        """Bytes in a normal (non-exception) response frame."""
        if self.function == _READ_HOLDING_REGISTERS or self.function == _READ_INPUT_REGISTERS:
            return 5 + 2 * self.count  # slave, fc, byte count, data, crc(2)
        return 8  # slave, fc, address(2), value or count(2), crc(2)

    def __repr__(self):
        return "Request(slave=%d, fc=%d, address=0x%04x, count=%d)" % (
            self.slave, self.function, self.address, self.count)


def read_input_registers(slave, address, count):
    """FC 04 request: ``count`` input registers from ``address``.

    >>> read_input_registers(1, 0x48, 2).adu.hex()
    '010400480002f1dd'
    """
    return Request(slave, _READ_INPUT_REGISTERS, address, count)


class Response:
    """A CRC-checked response that matches its request.

    ``exception_code`` is 0 for a normal response, else the slave's Modbus
    exception code (``exception_name`` says which).  ``registers`` holds the
    register values of a read, else None.  ``pdu`` is function code + data.

    A read response also indexes like its registers (``len(r)``, ``r[i]``)
    straight from the frame: the meter decodes a block that way, without the
    list (80 registers are a 640-byte block on a fragmented ~128 KB heap).
    """

    def __init__(self, slave, pdu):
        self.slave = slave
        self.pdu = pdu
        self.function = pdu[0] & 0x7F
        self.exception_code = pdu[1] if pdu[0] & 0x80 else 0

    @property
    def registers(self):
        """The register values of a read (a list, built when asked for), else None."""
        if self.exception_code or len(self.pdu) < 4 or (
                self.function != _READ_HOLDING_REGISTERS and self.function != _READ_INPUT_REGISTERS):
            return None
        return [self[k] for k in range(len(self))]

    def __len__(self):
        return (len(self.pdu) - 2) // 2

    def __getitem__(self, k):
        pdu = self.pdu
        if k < 0 or 2 * k + 3 >= len(pdu):
            raise IndexError(k)
        return (pdu[2 + 2 * k] << 8) | pdu[3 + 2 * k]

    @property
    def ok(self):
        """True unless the slave answered with an exception."""
        return self.exception_code == 0

    @property
    def exception_name(self):
        """Name of the exception code ('' for a normal response)."""
        if not self.exception_code:
            return ""
        return __getattr__("exception_name")(self.exception_code)

    def __repr__(self):
        if self.exception_code:
            return "Response(slave=%d, fc=%d, exception=%s)" % (
                self.slave, self.function, self.exception_name)
        return "Response(slave=%d, fc=%d, registers=%r)" % (self.slave, self.function, self.registers)


class ResponseParser:
    """Finds the response to one request in bytes fed as they arrive.

    RTU frames have no start marker, so the parser hunts: it drops bytes until
    one equals the slave address and the next the function code (or the code
    | 0x80), derives the frame length (FC 03/04 from the byte count, which must
    be 2 x count), waits for that many bytes and checks the CRC.  A candidate
    that fails is dropped one byte at a time, so a frame behind garbage or a
    corrupted frame is still found.  Frames from other slaves are garbage.
    Counters tell the master why nothing came: ``discarded`` (bytes dropped),
    ``crc_errors``, ``mismatches`` (CRC-valid write echoes that differ).

    >>> from firmware.protocol.modbus import write_single_register
    >>> p = ResponseParser(write_single_register(1, 0x14, 2))
    >>> p.feed(b"\\x00" + write_single_register(1, 0x14, 2).adu).ok
    True
    """

    def __init__(self, request):
        if request.slave == _BROADCAST:
            raise __getattr__("ModbusError")("a broadcast request gets no response")
        self.request = request
        self.discarded = 0
        self.crc_errors = 0
        self.mismatches = 0
        self._buf = bytearray()

    def reset(self):
        """Forget buffered bytes (e.g. before a retry); counters keep counting."""
        self._buf = bytearray()

    def feed(self, data):
        """Add received bytes; return the ``Response`` once complete, else None."""
        self._buf.extend(data)
        req = self.request
        slave = req.slave
        fc = req.function
        while True:
            buf = self._buf
            n = len(buf)
            i = 0
            while i < n:
                if buf[i] == slave:
                    if i + 1 == n or buf[i + 1] & 0x7F == fc:
                        break
                i += 1
            if i:
                self._drop(i)
                buf = self._buf
                n = len(buf)
            if n < 3:
                return None
            if buf[1] & 0x80:
                length = 5
            elif fc == _READ_HOLDING_REGISTERS or fc == _READ_INPUT_REGISTERS:
                if buf[2] != 2 * req.count:
                    self._drop(1)  # implausible byte count: not our frame
                    continue
                length = 5 + buf[2]
            else:
                length = 8
            if n < length:
                return None
            frame = bytes(buf[:length])
            if crc16_modbus(frame):  # over a frame and its own CRC: 0 iff the CRC is right
                self.crc_errors += 1
                self._drop(1)
                continue
            if length == 8 and frame[2:6] != req.adu[2:6]:
                self.mismatches += 1  # a write echo that is not our write
                self._drop(length)
                continue
            self._buf = buf[length:]
            # a read's registers are decoded from the frame when asked for (Response)
            return Response(slave, frame[1:-2])

    def _drop(self, k):
        self.discarded += k
        self._buf = self._buf[k:]


# ------------------------------------------------------------------ timing
# Modbus over Serial Line V1.02, 2.5.1.1: a character is 11 bits (start, 8
# data, parity or second stop, stop); frames are separated by 3.5 character
# times (t3.5) and a gap over 1.5 (t1.5) inside a frame breaks it.  Above
# 19200 baud both are fixed: t1.5 = 750 us, t3.5 = 1750 us.  Pass bits=10 for
# 8N1 links such as the SDM120's default.  ``Transaction`` works out its reply
# timeout here; the same arithmetic under public names (``frame_time_us``,
# ``inter_frame_gap_us``, ``response_timeout_ms``, ``char_time_us``,
# ``inter_char_timeout_us`` for t1.5) is in ``modbus_more``.

_FAST_BAUD = const(19200)
_DEFAULT_TURNAROUND_MS = const(200)  # slave processing allowance; not in the standard, tune per meter


class Transaction:
    """One request with retries and timeouts, driven by the master's ms clock.

    The master task owns the UART and a monotonic ms counter (``now_ms`` must
    not wrap, e.g. the asyncio loop's time in ms):

        tx = Transaction(read_input_registers(1, 0x0000, 2), baud=2400, bits=10)
        uart.write(tx.start(now_ms()))
        while not tx.done:
            data = uart.read()          # whatever arrived, may be None
            if data:
                tx.feed(data)
            frame = tx.poll(now_ms())   # a retry to send after a timeout
            if frame:
                uart.write(frame)
            await asyncio.sleep_ms(5)
        tx.response  # a Response (check .ok), or None with tx.error saying why

    An exception response ends the transaction (no retry): the slave answered.
    A broadcast is done once its timeout has passed, with no response.
    """

    def __init__(self, request, baud, retries=2, bits=11, turnaround_ms=_DEFAULT_TURNAROUND_MS):
        self.request = request
        self.retries = retries
        # sending the request + t3.5 + the slave's turnaround + receiving the longest
        # normal reply, rounded up to whole ms (modbus.response_timeout_ms)
        gap_us = 1750 if baud > _FAST_BAUD else -(-35 * bits * 1000000 // (10 * baud))
        wire_us = -(-(len(request.adu) + request.response_length) * bits * 1000000 // baud)
        self.timeout_ms = -(-(wire_us + gap_us) // 1000) + turnaround_ms
        self.parser = None if request.slave == _BROADCAST else ResponseParser(request)
        self.attempts = 0
        self.deadline_ms = 0
        self.done = False
        self.response = None
        self.error = ""

    def start(self, now_ms):
        """The frame to send now (first attempt)."""
        self.attempts = 1
        self.deadline_ms = now_ms + self.timeout_ms
        return self.request.adu

    def feed(self, data):
        """Received bytes; returns the Response when it completes."""
        if self.done or self.parser is None:
            return None
        resp = self.parser.feed(data)
        if resp is not None:
            self.done = True
            self.response = resp
        return resp

    def poll(self, now_ms):
        """After a timeout: the frame to resend, or None (waiting, or done)."""
        if self.done or now_ms < self.deadline_ms:
            return None
        if self.parser is None:
            self.done = True
            return None
        if self.attempts > self.retries:
            self.done = True
            p = self.parser
            self.error = "no valid response after %d attempts (%d crc errors, %d bytes discarded)" % (
                self.attempts, p.crc_errors, p.discarded)
            return None
        self.attempts += 1
        self.parser.reset()
        self.deadline_ms = now_ms + self.timeout_ms
        return self.request.adu
