"""Serial commissioning CLI on the meter's UART: one line in, one line out (pure, no I/O).

The shell feeds received bytes to ``LineReader`` and every complete line to
``Cli.handle``, and writes back the reply plus ``\\r\\n``.  Replies are both
readable and machine-parseable::

    OK key=value key=value ...
    ERR <code> <NAME>: <message>

Values never contain spaces: a space, ``%``, ``=`` or a non-printable
character inside a value is written as ``%XX`` (URL style).  Input is
printable ASCII only; an overlong line, any other byte, an unknown command
or a bad value gets an ``ERR`` and changes nothing.  (The one exception is
by design of the meter: a rejected STS token is recorded in the event log
as TOPUP_REJECTED, the audit trail of tampering attempts.)

``set`` and key provisioning need commissioning mode, a physical input on
the board (``ctx.commissioning()``), so a UART in the field cannot change
the tariff, the pulse constant or the keys.  Reading commands and ``topup``
(the keypad's job) are always allowed.  See ``docs/protocol.md`` ("Serial
commissioning CLI") for every command.

>>> cli = Cli(ctx)
>>> cli.handle(b"balance")
'OK balance_paise=20000 credit_paise=20000 emergency_used_paise=0 debt_paise=0 state=OK relay=closed'
>>> cli.handle(b"frobnicate")
'ERR 1 UNKNOWN_COMMAND: frobnicate (try help)'
"""
import json

from firmware.app import config as cfg
from firmware.core import events
from firmware.core.meter import Meter

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

MAX_LINE = const(1100)  # room for "set tariff " + 1024 characters of JSON

UNKNOWN_COMMAND = const(1)
BAD_ARGS = const(2)
BAD_VALUE = const(3)
LINE_TOO_LONG = const(4)
BAD_BYTES = const(5)
LOCKED = const(6)
REJECTED = const(7)
NOT_READY = const(8)
FAILED = const(9)
ERROR_NAMES = {UNKNOWN_COMMAND: "UNKNOWN_COMMAND", BAD_ARGS: "BAD_ARGS", BAD_VALUE: "BAD_VALUE",
               LINE_TOO_LONG: "LINE_TOO_LONG", BAD_BYTES: "BAD_BYTES", LOCKED: "LOCKED",
               REJECTED: "REJECTED", NOT_READY: "NOT_READY", FAILED: "FAILED"}

COMMANDS = ("help", "info", "read", "balance", "events", "topup", "relay", "config", "set",
            "selftest")
USAGE = {
    "help": "help",
    "info": "info",
    "read": "read",
    "balance": "balance",
    "events": "events [count 1..16]",
    "topup": "topup <20-digit STS token>",
    "relay": "relay",
    "config": "config",
    "set": "set <setting> <value>",
    "selftest": "selftest",
}
MAX_EVENTS = const(16)


class CliError(Exception):
    """An ERR reply: ``code`` (one of the codes above) and a message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def escape(value):
    """A value as one token: None -> '-', bool -> 1/0, spaces etc. -> %XX.

    >>> escape("Home Wifi")
    'Home%20Wifi'
    """
    if value is None:
        return "-"
    if value is True:
        return "1"
    if value is False:
        return "0"
    text = str(value)
    out = []
    for ch in text:
        o = ord(ch)
        if o <= 0x20 or o >= 0x7F or ch in "%=":
            if o > 0xFF:
                out.append("?")
            else:
                out.append("%%%02X" % o)
        else:
            out.append(ch)
    return "".join(out)


def ok(pairs):
    """'OK k=v ...' from a list of (key, value)."""
    parts = ["OK"]
    for k, v in pairs:
        parts.append("%s=%s" % (k, escape(v)))
    return " ".join(parts)


def err(code, message):
    return "ERR %d %s: %s" % (code, ERROR_NAMES[code], message)


class LineReader:
    """Split UART bytes into lines (``\\n`` or ``\\r`` ends one; ``\\r\\n`` counts once).

    A line longer than ``max_line`` comes out once as ``None`` and the rest of
    it is dropped up to its end, so a flood of bytes never grows the heap.

    >>> LineReader(8).feed(b"info\\r\\nbalance too long\\nread")
    [b'info', None]
    """

    def __init__(self, max_line=MAX_LINE):
        self.max_line = max_line
        self.buf = bytearray()
        self.overlong = False
        self.last_cr = False

    def feed(self, data):
        out: "list[bytes | None]" = []
        for b in data:
            if b == 0x0A or b == 0x0D:
                if b == 0x0A and self.last_cr:
                    self.last_cr = False
                    continue
                self.last_cr = b == 0x0D
                if self.overlong:
                    self.overlong = False
                else:
                    out.append(bytes(self.buf))
                self.buf = bytearray()
                continue
            self.last_cr = False
            if self.overlong:
                continue
            if len(self.buf) >= self.max_line:
                self.overlong = True
                self.buf = bytearray()
                out.append(None)
            else:
                self.buf.append(b)
        return out


class CliContext:
    """What the CLI needs from the meter; the shell subclasses it, tests fill it in.

    ``meter`` (``core.meter.Meter`` or None before commissioning), ``config``
    (``app.config.ConfigStore``); methods below have harmless defaults.
    """

    # None until set: the shell and tests assign them
    meter: Meter = None  # type: ignore[assignment]
    config: cfg.ConfigStore = None  # type: ignore[assignment]

    def now(self):
        """UTC seconds."""
        raise NotImplementedError

    def commissioning(self):
        """True while the board's commissioning input is active."""
        return False

    def info(self):
        """Extra (key, value) pairs for ``info``: firmware version, board, uptime."""
        return []

    def live(self):
        """(key, value) pairs of live values for ``read`` (SDM/DLMS readings, power)."""
        return []

    def selftest(self):
        """[(check name, ok, detail)] for ``selftest``."""
        return []

    def meter_changed(self, now):
        """Called after a command changed the meter (drive the relay, queue a status)."""


class Cli:
    """Parses and runs one command line against a ``CliContext``.

    >>> Cli(ctx).handle(b"relay")
    'OK relay=closed state=OK load=NORMAL'
    """

    def __init__(self, ctx):
        self.ctx = ctx
        self.handled = 0
        self.errors = 0

    def handle(self, line):
        """Reply (str, no newline) to one line from ``LineReader``; None for a blank line."""
        try:
            reply = self._handle(line)
        except CliError as e:
            reply = err(e.code, e.message)
        if reply is None:
            return None
        self.handled += 1
        if reply.startswith("ERR"):
            self.errors += 1
        return reply

    def _handle(self, line):
        if line is None:
            raise CliError(LINE_TOO_LONG, "line longer than %d bytes, ignored" % MAX_LINE)
        if isinstance(line, str):
            line = line.encode()
        for b in line:
            if b < 0x20 or b > 0x7E:
                raise CliError(BAD_BYTES, "only printable ASCII is accepted (byte 0x%02x)" % b)
        text = bytes(line).decode().strip()
        if not text:
            return None
        cut = text.find(" ")
        verb = (text if cut < 0 else text[:cut]).lower()
        rest = "" if cut < 0 else text[cut + 1:].strip()
        if verb not in COMMANDS:
            raise CliError(UNKNOWN_COMMAND, "%s (try help)" % _clip(verb))
        if verb == "set":
            return self._set(rest)
        if verb == "topup":
            return self._topup(rest)
        if verb == "events":
            return self._events(rest)
        if rest:
            raise CliError(BAD_ARGS, "usage: " + USAGE[verb])
        if verb == "help":
            return ok([("commands", ",".join(COMMANDS))])
        if verb == "info":
            return self._info()
        if verb == "config":
            return ok([(k, json.dumps(v) if isinstance(v, dict) else v)
                       for k, v in self.ctx.config.public()])
        if verb == "read":
            return self._read()
        if verb == "balance":
            return self._balance()
        if verb == "relay":
            return self._relay()
        return self._selftest()

    # -- commands ---------------------------------------------------------------
    def _meter(self):
        m = self.ctx.meter
        if m is None:
            missing = self.ctx.config.missing()
            raise CliError(NOT_READY, "meter not commissioned (set %s)" % ",".join(missing))
        return m

    def _info(self):
        c = self.ctx.config
        pairs = [("meter", c.get("meter_id")), ("commissioned", self.ctx.meter is not None),
                 ("commissioning", self.ctx.commissioning())]
        pairs.extend(self.ctx.info())
        return ok(pairs)

    def _read(self):
        m = self._meter()
        s = m.status()
        pairs = [("t", self.ctx.now()), ("energy_wh", s["energy_wh"]), ("md_w", s["md_w"])]
        pairs.extend(self.ctx.live())
        return ok(pairs)

    def _balance(self):
        s = self._meter().status()
        return ok([("balance_paise", s["balance_paise"]), ("credit_paise", s["credit_paise"]),
                   ("emergency_used_paise", s["emergency_used_paise"]),
                   ("debt_paise", s["debt_paise"]), ("state", s["state"]), ("relay", s["relay"])])

    def _relay(self):
        s = self._meter().status()
        return ok([("relay", s["relay"]), ("state", s["state"]), ("load", s["load_state"])])

    def _events(self, rest):
        n = MAX_EVENTS
        if rest:
            if len(rest) > 2 or not cfg._all_digits(rest) or not 1 <= int(rest) <= MAX_EVENTS:
                raise CliError(BAD_ARGS, "usage: " + USAGE["events"])
            n = int(rest)
        log = self._meter().log
        names = events.NAMES  # built when asked for (``events.__getattr__``): once, not per row
        rows = ["%d@%d:%s:%d" % (seq, t, names.get(code, "?"), value)
                for seq, t, code, value in log.recent(n)]
        return ok([("count", len(rows)), ("last_seq", log.last_seq),
                   ("events", ",".join(rows) if rows else None)])

    def _topup(self, rest):
        if len(rest) != 20 or not cfg._all_digits(rest):
            raise CliError(BAD_ARGS, "usage: " + USAGE["topup"])
        m = self._meter()
        now = self.ctx.now()
        before = m.status()["balance_paise"]
        reason, detail = m.apply_sts_token(rest, now)
        self.ctx.meter_changed(now)
        if reason != 0:  # sts.acceptor.ACCEPTED
            # the acceptor's names only now: meters without STS tokens never load it (heap)
            from firmware.sts.acceptor import REASON_NAMES
            raise CliError(REJECTED, "token %s (%s)" % (REASON_NAMES[reason], detail))
        s = m.status()
        return ok([("credited_paise", s["balance_paise"] - before),
                   ("balance_paise", s["balance_paise"]), ("relay", s["relay"])])

    def _set(self, rest):
        cut = rest.find(" ")
        if cut < 0:
            raise CliError(BAD_ARGS, "usage: " + USAGE["set"])
        name, text = rest[:cut], rest[cut + 1:].strip()
        try:
            name = cfg.canonical_name(name)
        except cfg.ConfigError as e:
            raise CliError(BAD_VALUE, _clip(str(e), 200))
        if not self.ctx.commissioning():
            raise CliError(LOCKED, "set %s needs commissioning mode (the commissioning input)" % name)
        try:
            value = self.ctx.config.set_text(name, text, self.ctx.now())
        except cfg.ConfigError as e:
            raise CliError(BAD_VALUE, _clip(str(e), 200))
        except OSError as e:
            raise CliError(FAILED, "could not save: %s" % e)
        shown = "set" if name in cfg.SECRET_NAMES else value
        if name in ("tariff", "credit"):
            shown = "ok"
        return ok([(name, shown), ("applies", "next_boot")])

    def _selftest(self):
        results = self.ctx.selftest()
        bad = [r for r in results if not r[1]]
        if bad:
            raise CliError(FAILED, " ".join(["%s:%s" % (r[0], escape(r[2])) for r in bad]))
        return ok([(r[0], r[2] or "ok") for r in results])


def _clip(text, n=32):
    return text if len(text) <= n else text[:n] + "..."
