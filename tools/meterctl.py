"""meterctl: the technician's tool for a meter's serial commissioning CLI.

Speaks the line protocol of docs/protocol.md ("Serial commissioning CLI")
over pyserial, so it works the same on a real board's USB-serial port and on
a unix-board DUT's pty (``hil_tests``).

    meterctl ports                                   # which port is the meter?
    meterctl --port /dev/ttyUSB0 info
    meterctl --port /dev/ttyUSB0 --json balance
    meterctl --port /dev/ttyUSB0 topup 2905-4347-1393-0985-1356
    meterctl --port /dev/ttyUSB0 events 5
    meterctl --port /dev/ttyUSB0 commission --meter-id UJ-0001 --key 0011...eeff \\
        --broker mqtt.example.net:1883 --tariff tariff.json \\
        --register https://headend.example.net --token "$URJA_API_TOKEN"

``commission`` asks for whatever its flags do not give (meter id, key,
broker, tariff), sends each as ``set`` in commissioning mode, reads the
configuration back, and optionally registers the meter with the head-end
(``POST <URL>/meters``, headend/api.py).  Settings apply at the next boot.
"""
import argparse
import datetime
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

EXIT_OK = 0
EXIT_REFUSED = 1     # the meter answered ERR (bad token, locked, failed self-test, ...)
EXIT_USAGE = 2       # bad arguments (argparse uses 2 as well)
EXIT_PORT = 3        # cannot open the port, or it went away (cable pulled, board unplugged)
EXIT_NO_REPLY = 4    # the port is open but nothing answered in time (meter off? wrong port?)
EXIT_GARBAGE = 5     # something answered, but not the CLI protocol (wrong port or baud rate?)
EXIT_HEADEND = 6     # the head-end refused or could not be reached (commission --register)

EXIT_CODES_HELP = ("exit codes: 0 ok, 1 the meter refused (ERR reply), 2 bad arguments, "
                   "3 port cannot be opened or was disconnected, 4 no reply in time, "
                   "5 garbage reply (wrong port or baud?), 6 head-end registration failed")

DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_S = 3.0
MAX_REPLY = 4096  # a CLI reply is one line; more bytes than this without a line end is noise
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30), "IST")
REPLY_RE = re.compile(r"^(OK|ERR)( |$)")
ERR_RE = re.compile(r"^ERR (\d+) ([A-Z_]+): ?(.*)$")
# (setting, flag, prompt) asked by `commission`, in the order a technician reads them off the job card
GUIDED = (("meter_id", "meter_id", "meter id (printed on the meter)"),
          ("key_hex", "key", "downlink key (hex, 32..128 digits)"),
          ("broker", "broker", "broker host[:port]"),
          ("tariff", "tariff", "tariff (JSON text or a file path)"))


class MeterctlError(Exception):
    """A failure with the exit ``code`` and a message that says what to do next.

    >>> raise MeterctlError(EXIT_PORT, "cannot open /dev/ttyUSB9: no such device")
    """

    def __init__(self, code, message, detail=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail or {}


class MeterRefused(MeterctlError):
    """The meter answered ``ERR <code> <NAME>: <message>``.

    >>> parse_reply("ERR 6 LOCKED: set pulse_constant needs commissioning mode")
    Traceback (most recent call last):
    MeterRefused: LOCKED (6): set pulse_constant needs commissioning mode
    """

    def __init__(self, err_code, name, text):
        MeterctlError.__init__(self, EXIT_REFUSED, "%s (%d): %s" % (name, err_code, text),
                               {"err_code": err_code, "err_name": name, "err_message": text})
        self.err_code = err_code
        self.name = name
        self.text = text


def unescape(value):
    """A CLI value back to text: '%20' -> ' ', '-' -> None (docs/protocol.md).

    >>> unescape("Home%20Wifi"), unescape("-")
    ('Home Wifi', None)
    """
    if value == "-":
        return None
    if "%" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        if value[i] == "%" and _is_hex(value[i + 1:i + 3]):
            out.append(chr(int(value[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _is_hex(text):
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def parse_reply(line):
    """One reply line -> the OK fields as a dict of text (None for '-').

    Raises ``MeterRefused`` for ERR, ``MeterctlError(EXIT_GARBAGE)`` for
    anything that is not the protocol.

    >>> parse_reply("OK balance_paise=7000 relay=closed wifi=Home%20Wifi")
    {'balance_paise': '7000', 'relay': 'closed', 'wifi': 'Home Wifi'}
    """
    if line.startswith("ERR"):
        m = ERR_RE.match(line)
        if not m:
            raise MeterctlError(EXIT_GARBAGE, "malformed ERR reply %r" % line[:120])
        raise MeterRefused(int(m.group(1)), m.group(2), m.group(3))
    if not REPLY_RE.match(line):
        raise MeterctlError(EXIT_GARBAGE, "not a CLI reply: %r (wrong port or baud rate?)" % line[:120])
    fields = {}
    for part in line.split()[1:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise MeterctlError(EXIT_GARBAGE, "malformed field %r in reply %r" % (part, line[:120]))
        fields[key] = unescape(value)
    return fields


def typed(fields):
    """Fields for --json: whole numbers as int (only when that round-trips), the rest as text.

    >>> typed({"balance_paise": "-150", "meter": "0042", "relay": "closed", "wifi": None})
    {'balance_paise': -150, 'meter': '0042', 'relay': 'closed', 'wifi': None}
    """
    out = {}
    for key, value in fields.items():
        if value is not None and re.fullmatch(r"-?\d{1,18}", value) and str(int(value)) == value:
            out[key] = int(value)
        else:
            out[key] = value
    return out


def parse_events(text):
    """The ``events`` field 'seq@t:NAME:value,...' -> list of dicts.

    >>> parse_events("3@1795753800:TOPUP:5000")
    [{'seq': 3, 't': 1795753800, 'event': 'TOPUP', 'value': 5000}]
    """
    rows = []
    for item in (text or "").split(","):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)@(\d+):([A-Z0-9_?]+):(-?\d+)", item)
        if not m:
            raise MeterctlError(EXIT_GARBAGE, "malformed event %r" % item[:60])
        rows.append({"seq": int(m.group(1)), "t": int(m.group(2)), "event": m.group(3),
                     "value": int(m.group(4))})
    return rows


def ist(t):
    """UTC seconds -> '2026-11-27 10:00:00 IST' (the technician's wall clock)."""
    return datetime.datetime.fromtimestamp(t, IST).strftime("%Y-%m-%d %H:%M:%S IST")


# --- the serial link ---------------------------------------------------------------

class MeterLink:
    """One open CLI port: ``command(line)`` -> OK fields, one reply line per command.

    >>> with MeterLink("/dev/ttyUSB0") as link:
    ...     link.command("balance")["balance_paise"]
    '7000'
    """

    def __init__(self, port, baud=DEFAULT_BAUD, timeout_s=DEFAULT_TIMEOUT_S, log=None):
        try:
            import serial  # type: ignore[import-untyped]
        except ImportError:
            raise MeterctlError(EXIT_USAGE, "pyserial is not installed (pip install pyserial)")
        self.serial_mod = serial
        self.errors = _port_errors(serial)
        self.port = port
        self.timeout_s = timeout_s
        self.log = log  # called with each non-reply line the meter prints (its log)
        try:
            s = serial.serial_for_url(port, do_not_open=True, baudrate=baud, timeout=0.05,
                                      write_timeout=timeout_s)
            # ESP32 dev boards wire DTR/RTS to EN/IO0: keep both released so opening the port
            # does not reset the meter into its bootloader.
            s.dtr = False
            s.rts = False
            s.open()
        except _port_errors(serial) + (ValueError,) as e:
            raise MeterctlError(EXIT_PORT, "cannot open %s: %s (is the cable plugged in? "
                                "try `meterctl ports`)" % (port, _why(e)))
        self.serial = s

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.serial.close()
        except self.errors:
            pass

    def _disconnected(self, e):
        return MeterctlError(EXIT_PORT, "%s disconnected: %s (cable pulled or meter unplugged?)"
                             % (self.port, _why(e)))

    def command(self, line):
        """Send one command line, return the OK fields (raises on ERR, garbage, silence)."""
        return parse_reply(self.exchange(line))

    def exchange(self, line):
        """Send one command line and return its reply line (text, without the line end)."""
        s = self.serial
        try:
            s.reset_input_buffer()  # a stale reply must not answer this command
            s.write(line.encode("ascii") + b"\r\n")
            s.flush()
        except self.errors as e:
            raise self._disconnected(e)
        buf = b""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = s.read(256)
            except self.errors as e:
                raise self._disconnected(e)
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                reply = self._reply_line(raw.rstrip(b"\r"), line)
                if reply is not None:
                    return reply
            if len(buf) > MAX_REPLY:
                raise MeterctlError(EXIT_GARBAGE, "%d bytes without a line end from %s "
                                    "(wrong port or baud rate?)" % (len(buf), self.port))
        if buf.strip():
            raise MeterctlError(EXIT_GARBAGE, "incomplete reply %r to %r from %s (wrong port or "
                                "baud rate?)" % (buf[:80], line.split(" ")[0], self.port))
        raise MeterctlError(EXIT_NO_REPLY, "no reply to %r from %s within %.1f s (is the meter "
                            "powered, and is this its CLI port?)"
                            % (line.split(" ")[0], self.port, self.timeout_s))

    def _reply_line(self, raw, sent):
        """The reply text, or None for a line to skip (blank, or the meter's own log)."""
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MeterctlError(EXIT_GARBAGE, "non-ASCII bytes %r from %s in reply to %r (wrong "
                                "port or baud rate?)" % (raw[:40], self.port, sent.split(" ")[0]))
        if not text.strip():
            return None
        if text.startswith("urja: "):  # a board whose log shares the CLI UART
            if self.log:
                self.log(text)
            return None
        return text


def _port_errors(serial):
    """What a vanished port raises: pyserial's error, OSError, and termios.error (not an OSError)."""
    errors = (serial.SerialException, OSError)
    try:
        import termios
    except ImportError:  # Windows
        return errors
    return errors + (termios.error,)


def _why(e):
    text = str(e) or type(e).__name__
    return text[:200]


# --- commands ----------------------------------------------------------------------

class Output:
    """Human text on stdout, or one JSON document with --json; prompts and notes on stderr."""

    def __init__(self, as_json, stdout, stderr):
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr

    def fields(self, fields, order=None):
        keys = order or list(fields)
        width = max([len(k) for k in keys] + [1])
        for k in keys:
            v = fields.get(k)
            self.stdout.write("%-*s  %s\n" % (width, k, "-" if v is None else v))

    def json(self, doc):
        self.stdout.write(json.dumps(doc, indent=1) + "\n")

    def note(self, text):
        self.stderr.write(text + "\n")


def simple(verb):
    """info / read / balance / selftest: one command, its fields."""

    def run(args, link, out):
        fields = link.command(verb)
        if out.as_json:
            out.json({"ok": True, "command": verb, "port": args.port, "reply": typed(fields)})
        else:
            out.fields(fields)
        return EXIT_OK
    return run


def cmd_events(args, link, out):
    line = "events" if args.count is None else "events %d" % args.count
    fields = link.command(line)
    rows = parse_events(fields.get("events"))
    if out.as_json:
        out.json({"ok": True, "command": "events", "port": args.port,
                  "reply": {"count": int(fields["count"]), "last_seq": int(fields["last_seq"]),
                            "events": rows}})
        return EXIT_OK
    if not rows:
        out.stdout.write("no events\n")
    for r in rows:
        out.stdout.write("%6d  %s  %-20s %d\n" % (r["seq"], ist(r["t"]), r["event"], r["value"]))
    return EXIT_OK


def token_digits(text):
    """A token as printed on a receipt ('2905 4347-1393...') -> 20 digits, else a usage error.

    >>> token_digits("2905-4347-1393-0985-1356")
    '29054347139309851356'
    """
    digits = re.sub(r"[\s-]", "", text)
    if not re.fullmatch(r"\d{20}", digits):
        raise MeterctlError(EXIT_USAGE, "a token is 20 digits (spaces and dashes allowed), got %r"
                            % text[:40])
    return digits


def cmd_topup(args, link, out):
    token = token_digits(args.token)
    fields = link.command("topup " + token)
    if out.as_json:
        out.json({"ok": True, "command": "topup", "port": args.port, "reply": typed(fields)})
    else:
        out.fields(fields)
    return EXIT_OK


def cmd_ports(args, out):
    from tools.flash import list_ports

    ports = list_ports()
    if out.as_json:
        out.json({"ok": True, "command": "ports", "ports": ports})
        return EXIT_OK
    if not ports:
        out.stdout.write("no serial ports found: plug the meter's USB-serial cable in\n")
    for p in ports:
        mark = "  <- likely a meter (%s)" % p["bridge"] if p["bridge"] else ""
        out.stdout.write("%-16s %s%s\n" % (p["device"], p["description"], mark))
    return EXIT_OK


def pick_port(args):
    """--port, else $URJA_METER_PORT, else the one USB-serial bridge plugged in."""
    if args.port:
        return args.port
    env = os.environ.get("URJA_METER_PORT")
    if env:
        return env
    from tools.flash import list_ports

    likely = [p["device"] for p in list_ports() if p["bridge"]]
    if len(likely) == 1:
        return likely[0]
    raise MeterctlError(EXIT_PORT, "no --port given and %s; run `meterctl ports`" % (
        "no USB-serial bridge is plugged in" if not likely else
        "several could be the meter: " + ", ".join(likely)))


# --- commission --------------------------------------------------------------------

def _read_tariff(text):
    """Tariff JSON text or a path to a JSON file -> compact JSON text (one CLI line)."""
    if not text.lstrip().startswith("{"):
        try:
            with open(text) as f:
                text = f.read()
        except OSError as e:
            raise MeterctlError(EXIT_USAGE, "cannot read tariff file %s: %s" % (text, e.strerror))
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except ValueError as e:
        raise MeterctlError(EXIT_USAGE, "tariff is not valid JSON: %s" % e)


def _guided_values(args, ask):
    """The settings to send, in order: [(setting, value text)]."""
    values = []
    for setting, flag, question in GUIDED:
        value = getattr(args, flag)
        if not value:
            value = ask(question)
        if setting == "broker":
            host, _, port = value.partition(":")
            values.append(("broker_host", host))
            if port:
                values.append(("broker_port", port))
        elif setting == "tariff":
            values.append(("tariff", _read_tariff(value)))
        elif setting == "key_hex":
            if not re.fullmatch(r"([0-9a-fA-F]{2}){16,64}", value):
                raise MeterctlError(EXIT_USAGE, "the key is 32..128 hex digits, even count")
            values.append(("key_hex", value.lower()))
        else:
            values.append((setting, value))
    if args.service:
        values.append(("service", args.service))
    if args.wifi:
        values.append(("wifi_ssid", args.wifi))
    if args.wifi_password:
        values.append(("wifi_password", args.wifi_password))
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MeterctlError(EXIT_USAGE, "--set wants NAME=VALUE, got %r" % item)
        values.append((name, value))
    return values


def _asker(stdin, out):
    def ask(question):
        out.stderr.write(question + ": ")
        out.stderr.flush()
        line = stdin.readline()
        if not line:
            raise MeterctlError(EXIT_USAGE, "no answer for %r (give it as a flag)" % question)
        answer = line.strip()
        if not answer:
            raise MeterctlError(EXIT_USAGE, "%s may not be empty" % question)
        return answer
    return ask


def wait_commissioning(link, out, wait_s):
    """Poll ``info`` until the commissioning input is on (the technician flips the switch)."""
    info = link.command("info")
    if info.get("commissioning") == "1":
        return info
    out.note("meter %s is not in commissioning mode: switch the commissioning input on "
             "(waiting %d s)" % (info.get("meter") or "(new)", wait_s))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        info = link.command("info")
        if info.get("commissioning") == "1":
            return info
    raise MeterctlError(EXIT_REFUSED, "the meter is not in commissioning mode: settings would be "
                        "refused (LOCKED); switch the commissioning input on and run again")


def register(url, token, meter_id, service, key_hex, now_s):
    """POST <url>/meters (headend/api.py ``register_meter``) -> the head-end's MeterOut dict."""
    body = {"id": meter_id, "service": service or "electricity", "key_hex": key_hex,
            "installed_at": now_s}
    req = urllib.request.Request(url.rstrip("/") + "/meters", data=json.dumps(body).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("detail", detail)
        except (ValueError, AttributeError):
            pass
        hint = {401: " (token missing or expired: --token / $URJA_API_TOKEN)",
                403: " (this user may not register meters)",
                409: " (already registered: nothing changed at the head-end)"}.get(e.code, "")
        raise MeterctlError(EXIT_HEADEND, "head-end refused the registration: HTTP %d %s%s"
                            % (e.code, detail, hint))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise MeterctlError(EXIT_HEADEND, "cannot reach the head-end at %s: %s"
                            % (url, getattr(e, "reason", e)))


def cmd_commission(args, link, out, stdin):
    info = wait_commissioning(link, out, args.wait_s)
    out.note("meter on %s: fw %s, board %s, commissioned %s" % (
        args.port, info.get("fw"), info.get("board"), "yes" if info.get("commissioned") == "1" else "no"))
    values = _guided_values(args, _asker(stdin, out))
    sent = []
    for name, value in values:
        link.command("set %s %s" % (name, value))
        sent.append(name)
        shown = "(secret)" if name in ("key_hex", "wifi_password", "sts_key_hex") else value
        out.note("  set %-18s %s" % (name, shown if len(shown) < 60 else shown[:57] + "..."))
    config = link.command("config")
    want = dict(values)
    for name in ("meter_id", "broker_host", "broker_port", "service", "wifi_ssid"):
        if name in want and config.get(name) != want[name]:
            raise MeterctlError(EXIT_REFUSED, "read back %s=%r, sent %r: settings not stored"
                                % (name, config.get(name), want[name]))
    if "key_hex" in want and config.get("key_hex") != "set":
        raise MeterctlError(EXIT_REFUSED, "the meter does not report its key as set")
    registered = None
    if args.register:
        if args.register.startswith("http://") and not re.match(
                r"http://(localhost|127\.|\[::1\])", args.register):
            out.note("warning: sending the meter key over plain http to %s" % args.register)
        registered = register(args.register, args.token or os.environ.get("URJA_API_TOKEN"),
                              want["meter_id"], want.get("service"), want["key_hex"],
                              int(time.time()))
        out.note("registered %s with the head-end (tenant %s)" % (
            want["meter_id"], registered.get("tenant_id")))
    if out.as_json:
        out.json({"ok": True, "command": "commission", "port": args.port,
                  "meter_id": want["meter_id"], "set": sent, "registered": registered,
                  "applies": "next_boot"})
    else:
        out.stdout.write("commissioned %s: %d settings saved; they apply at the next boot.\n"
                         "Switch commissioning mode off and power-cycle the meter, then run "
                         "`meterctl info`.\n" % (want["meter_id"], len(sent)))
    return EXIT_OK


# --- command line ------------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(
        prog="meterctl", description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[2] + "\n\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", help="serial port or pyserial URL (default: $URJA_METER_PORT, "
                   "else the one USB-serial bridge plugged in)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="default %(default)s")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds to wait for each reply (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("ports", help="list serial ports; marks USB-serial bridges")
    for verb, text in (("info", "meter id, firmware, board, link state"),
                       ("read", "energy, demand and live values"),
                       ("balance", "credit, debt, state and relay"),
                       ("selftest", "run the meter's self-test (exit 1 if a check fails)")):
        sub.add_parser(verb, help=text)
    e = sub.add_parser("events", help="the latest events, with IST times")
    e.add_argument("count", nargs="?", type=int, choices=range(1, 17), metavar="N",
                   help="how many (1..16, default all kept)")
    t = sub.add_parser("topup", help="enter a 20-digit STS token")
    t.add_argument("token", help="20 digits; spaces and dashes are ignored")
    c = sub.add_parser("commission", help="guided set-up in commissioning mode",
                       description="Asks for what the flags do not give.")
    c.add_argument("--meter-id", dest="meter_id")
    c.add_argument("--key", help="downlink HMAC key, hex")
    c.add_argument("--broker", help="host[:port]")
    c.add_argument("--tariff", help="tariff JSON text or file")
    c.add_argument("--service", choices=("electricity", "water", "gas"))
    c.add_argument("--wifi", help="Wi-Fi SSID")
    c.add_argument("--wifi-password", dest="wifi_password")
    c.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any other setting of docs/protocol.md (repeatable)")
    c.add_argument("--register", metavar="URL", help="head-end API base URL to register the meter")
    c.add_argument("--token", help="head-end bearer token (default $URJA_API_TOKEN)")
    c.add_argument("--wait-s", dest="wait_s", type=float, default=30,
                   help="how long to wait for commissioning mode (default %(default)s)")
    return p


COMMANDS = {"info": simple("info"), "read": simple("read"), "balance": simple("balance"),
            "selftest": simple("selftest"), "events": cmd_events, "topup": cmd_topup}


def main(argv=None, stdin=None, stdout=None, stderr=None):
    """Run meterctl; returns the exit code (see EXIT_CODES_HELP)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = parser().parse_args(argv)
    out = Output(args.json, stdout, stderr)
    try:
        if args.command == "ports":
            return cmd_ports(args, out)
        if args.command == "topup":
            token_digits(args.token)  # a typo is caught before the port is touched
        args.port = pick_port(args)
        with MeterLink(args.port, args.baud, args.timeout,
                       log=lambda line: out.note("meter log: " + line)) as link:
            if args.command == "commission":
                return cmd_commission(args, link, out, stdin or sys.stdin)
            return COMMANDS[args.command](args, link, out)
    except MeterctlError as e:
        if args.json:
            out.json({"ok": False, "command": args.command, "port": args.port, "exit": e.code,
                      "error": e.message, **e.detail})
        kind = {EXIT_REFUSED: "meter refused", EXIT_PORT: "port error",
                EXIT_NO_REPLY: "no reply", EXIT_GARBAGE: "garbage reply",
                EXIT_HEADEND: "head-end error"}.get(e.code, "error")
        stderr.write("meterctl: %s: %s\n" % (kind, e.message))
        return e.code


if __name__ == "__main__":
    sys.exit(main())
