"""The unix board's control-socket protocol: bytes in, reply lines out.

``parse``, ``handle`` and ``LineBuffer`` are sans-IO; ``BoardSession`` is the
socket glue for one client of ``boards.unix.hal.UnixBoard``, here so that it
loads with the protocol, at the first client (a meter nobody drives pays no
heap for it).

A test (or the simulator) plays the meter's physical world over a socket:
it injects pulses, flips the cover/commissioning/power-fail inputs, jumps
the clock, and reads back what the firmware did to the relay and LED.  One
ASCII command per line (``\\n`` or ``\\r\\n``), one reply line each:

=========================  ===============================  =====================
command                    meaning                          reply
=========================  ===============================  =====================
``pulses N``               N more impulses on the input     ``ok pulses TOTAL``
``pulses?``                impulses counted so far          ``pulses TOTAL``
``input NAME 0|1``         set an input (1 = active)        ``ok input NAME V``
``input? NAME``            read an input                    ``input NAME V``
``relay?``                 the relay the firmware set       ``relay closed|open``
``led?``                   the LED the firmware set         ``led on|off``
``clock T``                set UTC seconds (a clock jump)   ``ok clock T``
``clock?``                 the board clock                  ``clock T``
``watchdog?``              how often the watchdog was fed   ``watchdog FEEDS``
``help``                   list the commands                ``ok commands ...``
=========================  ===============================  =====================

NAME is ``cover``, ``commissioning`` or ``power_fail``; values are logical
(1 = cover open, commissioning enabled, power failing) whatever the pin's
active level.  Anything else gets ``err <why>`` and changes nothing.

>>> buf = LineBuffer()
>>> [handle(line, target) for line in buf.feed(b"pulses 5\\nrelay?\\n")]
['ok pulses 5', 'relay closed']
"""

import errno

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # same body as MicroPython's, looser signature
        return x

_READ_CHUNK = const(256)
_INPUT_NAMES = const(("cover", "commissioning", "power_fail"))  # as UnixBoard's attributes
_MAX_LINE = const(80)
_MAX_PULSES = const(1000000000)  # per command; a test never needs more, a typo is caught
COMMANDS = "pulses N, pulses?, input NAME 0|1, input? NAME, relay?, led?, clock T, clock?, watchdog?, help"


class ControlError(ValueError):
    """A control line that is not a valid command (the message says why)."""


def _uint(text, what, maximum):
    if not text or len(text) > 12:
        raise ControlError("%s must be a whole number" % what)
    for ch in text:
        if ch not in "0123456789":
            raise ControlError("%s must be a whole number, got %r" % (what, text))
    value = int(text)
    if value > maximum:
        raise ControlError("%s must be at most %d" % (what, maximum))
    return value


def _input_name(text):
    if text not in _INPUT_NAMES:
        raise ControlError("unknown input %r (inputs: %s)" % (text, ", ".join(_INPUT_NAMES)))
    return text


def parse(line):
    """One command line (str, no newline) -> a tuple, or raise ``ControlError``.

    >>> parse("input cover 1")
    ('input', 'cover', 1)
    """
    words = line.split()
    if not words:
        raise ControlError("empty line (try help)")
    verb, args = words[0], words[1:]
    if verb == "pulses" and len(args) == 1:
        return ("pulses", _uint(args[0], "pulse count", _MAX_PULSES))
    if verb == "input" and len(args) == 2:
        if args[1] not in ("0", "1"):
            raise ControlError("input value must be 0 or 1, got %r" % args[1])
        return ("input", _input_name(args[0]), int(args[1]))
    if verb == "input?" and len(args) == 1:
        return ("input?", _input_name(args[0]))
    if verb == "clock" and len(args) == 1:
        return ("clock", _uint(args[0], "clock (UTC seconds)", 2 ** 40))
    if verb in ("pulses?", "relay?", "led?", "clock?", "watchdog?", "help") and not args:
        return (verb,)
    if verb in ("pulses", "input", "input?", "clock", "pulses?", "relay?", "led?", "clock?",
                "watchdog?", "help"):
        raise ControlError("wrong arguments for %s (commands: %s)" % (verb, COMMANDS))
    raise ControlError("unknown command %r (commands: %s)" % (verb, COMMANDS))


def handle(line, target):
    """Run one line against ``target`` and return the reply line (no newline).

    ``line`` is ``bytes``/``str`` from ``LineBuffer.feed`` (``None`` = an overlong
    line).  ``target`` is the board's world: ``add_pulses(n) -> total``,
    ``pulse_total()``, ``set_input(name, bool)``, ``input_value(name) -> bool``,
    ``relay_closed() -> bool``, ``led_on() -> bool``, ``now() -> int``,
    ``set_now(t)``, ``watchdog_feeds() -> int`` (``BoardSession`` on the unix board).
    """
    if line is None:
        return "err line longer than %d bytes" % _MAX_LINE
    try:
        if isinstance(line, (bytes, bytearray)):
            for b in line:
                if b < 0x20 or b > 0x7E:
                    raise ControlError("only printable ASCII is accepted")
            line = bytes(line).decode()
        cmd = parse(line)
    except ControlError as err:
        return "err " + str(err)
    verb = cmd[0]
    if verb == "pulses":
        return "ok pulses %d" % target.add_pulses(cmd[1])
    if verb == "pulses?":
        return "pulses %d" % target.pulse_total()
    if verb == "input":
        target.set_input(cmd[1], bool(cmd[2]))
        return "ok input %s %d" % (cmd[1], cmd[2])
    if verb == "input?":
        return "input %s %d" % (cmd[1], 1 if target.input_value(cmd[1]) else 0)
    if verb == "relay?":
        return "relay closed" if target.relay_closed() else "relay open"
    if verb == "led?":
        return "led on" if target.led_on() else "led off"
    if verb == "clock":
        target.set_now(cmd[1])
        return "ok clock %d" % cmd[1]
    if verb == "clock?":
        return "clock %d" % target.now()
    if verb == "watchdog?":
        return "watchdog %d" % target.watchdog_feeds()
    return "ok commands " + COMMANDS


class LineBuffer:
    """Split a byte stream into lines of at most ``max_line`` bytes.

    ``feed`` returns the complete lines (``bytes``, without ``\\r\\n``); a line
    that grows past ``max_line`` comes out once as ``None`` and the rest of it,
    up to its newline, is dropped.

    >>> LineBuffer(8).feed(b"relay?\\nclock 123456789\\nled?")
    [b'relay?', None]
    """

    def __init__(self, max_line=_MAX_LINE):
        self.max_line = max_line
        self.buf = bytearray()
        self.overlong = False

    def feed(self, data):
        out: "list[bytes | None]" = []
        for b in data:
            if b == 0x0A:  # \n
                if self.overlong:
                    self.overlong = False
                else:
                    line = bytes(self.buf)
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    out.append(line)
                self.buf = bytearray()
            elif self.overlong:
                continue
            elif len(self.buf) >= self.max_line:
                self.overlong = True
                self.buf = bytearray()
                out.append(None)
            else:
                self.buf.append(b)
        return out


class BoardSession:
    """One control client of a ``boards.unix.hal.UnixBoard``, and ``handle``'s target for it.

    The board accepts the client, adds the session to its ``clients`` and
    registers ``conn`` with its ``poller``; it calls ``serve`` whenever
    ``conn`` is readable.  The target methods read and set the board's memory
    parts.

    >>> handle(b"pulses 16", BoardSession(board, conn))
    'ok pulses 16'
    """

    def __init__(self, board, conn):
        self.board = board
        self.conn = conn
        self.lines = LineBuffer()

    def serve(self):
        """Answer the complete lines that arrived; a client that is gone is dropped."""
        try:
            data = self.conn.recv(_READ_CHUNK)
        except OSError as err:
            if err.errno == errno.EAGAIN:  # spurious wake-up: nothing to read yet
                return
            data = b""  # ECONNRESET and friends: the client is gone
        if not data:
            self.close()
            return
        replies = [handle(line, self) for line in self.lines.feed(data)]
        if replies:
            try:
                self.conn.send(("\n".join(replies) + "\n").encode())
            except OSError:
                self.close()

    def close(self):
        try:
            self.board.poller.unregister(self.conn)
        except (OSError, ValueError, KeyError):
            pass
        self.conn.close()
        self.board.clients.remove(self)

    # ---------------------------------------- handle's target: the board's memory parts
    def add_pulses(self, n):
        counter = self.board.pulse_counter
        if counter is None:  # a board file without a pulse input
            return 0
        counter.total += n
        return counter.total

    def pulse_total(self):
        counter = self.board.pulse_counter
        return counter.total if counter is not None else 0

    def set_input(self, name, active):
        getattr(self.board, name).set(active)  # name: one of _INPUT_NAMES, checked by parse

    def input_value(self, name):
        return getattr(self.board, name).value()

    def relay_closed(self):
        return self.board.relay.closed()

    def led_on(self):
        led = self.board.led
        return led.on() if led is not None else False

    def now(self):
        return self.board.clock.now()

    def set_now(self, t):
        self.board.clock.set(t)

    def watchdog_feeds(self):
        wdt = self.board.watchdog
        return wdt.feeds if wdt is not None else 0
