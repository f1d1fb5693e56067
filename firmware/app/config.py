"""Commissioning configuration: what a technician sets on a meter, validated and persisted.

One table (``KEYS``) lists every setting: its name, how the CLI text is
parsed, its limits, whether it is a secret (never echoed), and whether it
is required before the meter runs.  ``ConfigStore`` keeps the values in a
two-slot ``Journal`` over any ``boards.hal.SlotStorage`` (a pair of files on
the unix board, NVS blobs on the ESP32), so a power cut during ``set``
leaves either the old or the new configuration, never half of one.

A bad value raises ``ConfigError`` with a message that names the key and
changes nothing: values are checked alone, then together (the complete
configuration must build a ``MeterConfig``) before anything is written.
New values take effect at the next boot (the running meter is not rebuilt
under the technician's feet).

>>> store = ConfigStore(RamSlots())
>>> store.set_text("pulse_constant", "1600", now=1795737600)
1600
>>> store.get("pulse_constant")
1600
>>> store.set_text("pulse_constant", "-5", now=1795737600)
Traceback (most recent call last):
ConfigError: pulse_constant: must be a whole number in 1..1000000
"""
import json

from firmware.core import credit, tariff
from firmware.core.journal import Journal
from firmware.core.meter import MeterConfig, MeterConfigError

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

MAX_PAYLOAD = const(4096)

# value kinds
INT = "int"
WORD = "word"      # printable ASCII, no spaces
TEXT = "text"      # printable ASCII, spaces allowed (Wi-Fi SSID)
HEX = "hex"
JSON = "json"
CHOICE = "choice"

# (name, kind, lo, hi / choices, secret, required, default)
# lo/hi bound an INT's value or a string's length.
KEYS = (
    ("meter_id", WORD, 1, 32, False, True, None),
    ("service", CHOICE, 0, ("electricity", "water", "gas"), False, False, "electricity"),
    ("broker_host", WORD, 1, 64, False, True, None),
    ("broker_port", INT, 1, 65535, False, False, 1883),
    ("wifi_ssid", TEXT, 0, 32, False, False, ""),
    ("wifi_password", TEXT, 0, 63, True, False, ""),
    ("pulse_constant", INT, 1, 1000000, False, False, 3200),  # imp/kWh (water/gas: imp per litres_per_pulses L)
    ("litres_per_pulses", INT, 1, 1000000, False, False, 10),
    ("interval_s", CHOICE, 0, (900, 1800), False, False, 900),
    ("step_s", INT, 10, 900, False, False, 60),
    ("heartbeat_s", INT, 60, 86400, False, False, 900),
    ("clock_max_step_s", INT, 1, 31536000, False, False, 86400),  # ``time`` downlink, unforced
    ("energy_source", CHOICE, 0, ("pulses", "sdm", "dlms"), False, False, "pulses"),
    ("modbus_slave", INT, 1, 247, False, False, 1),
    ("modbus_period_s", INT, 1, 3600, False, False, 10),
    ("dlms_physical", INT, 16, 16383, False, False, 17),
    ("dlms_period_s", INT, 1, 3600, False, False, 60),
    ("tariff", JSON, 2, 1024, False, True, None),
    ("credit", JSON, 2, 1024, False, False, None),
    ("opening_credit_paise", INT, 0, 100000000, False, False, 0),
    ("key_hex", HEX, 32, 128, True, True, None),       # downlink HMAC key, 16..64 bytes
    ("sts_key_hex", HEX, 16, 16, True, False, None),   # STS decoder key (DKGA02 output)
    ("sts_paise_per_unit", INT, 1, 10000000, False, False, 1000),
)
NAMES = tuple(k[0] for k in KEYS)
# Settings that are key material: only in commissioning mode, and never printed.
SECRET_NAMES = tuple(k[0] for k in KEYS if k[4])
# Short names the CLI accepts.
ALIASES = {"pulses_per_kwh": "pulse_constant", "wifi": "wifi_ssid", "key": "key_hex",
           "sts_key": "sts_key_hex", "port": "broker_port"}

_HEX_DIGITS = "0123456789abcdefABCDEF"


class ConfigError(ValueError):
    """A setting that is unknown or invalid; the message starts with the key's name."""


def _spec(name):
    for k in KEYS:
        if k[0] == name:
            return k
    raise ConfigError("%s: unknown setting (settings: %s)" % (name, ", ".join(NAMES)))


def canonical_name(name):
    """The setting's name after aliases; ConfigError when unknown."""
    name = ALIASES.get(name, name)
    _spec(name)
    return name


def _printable(text, spaces):
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o > 0x7E or (ch == " " and not spaces):
            return False
    return True


def check_value(name, value):
    """Validate one typed value for ``name``; returns it (ConfigError otherwise)."""
    _, kind, lo, hi, _, _, _ = _spec(name)
    if kind == INT:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError("%s: must be a whole number in %d..%d" % (name, lo, hi))
        return value
    if kind == CHOICE:
        if value not in hi or isinstance(value, bool):
            raise ConfigError("%s: one of %s" % (name, ", ".join([str(c) for c in hi])))
        return value
    if kind == JSON:
        if not isinstance(value, dict):
            raise ConfigError("%s: must be a JSON object" % name)
        try:
            if name == "tariff":
                tariff.Tariff.from_dict(value)
            else:
                credit.CreditConfig.from_dict(value)
        except (tariff.TariffError, credit.CreditConfigError) as err:
            raise ConfigError("%s.%s" % (name, err))
        return value
    if not isinstance(value, str) or not lo <= len(value) <= hi:
        raise ConfigError("%s: must be %d..%d characters" % (name, lo, hi))
    if not _printable(value, kind == TEXT):
        raise ConfigError("%s: printable ASCII only%s" % (name, "" if kind == TEXT else ", no spaces"))
    if kind == HEX:
        if len(value) % 2:
            raise ConfigError("%s: an even number of hex digits" % name)
        for ch in value:
            if ch not in _HEX_DIGITS:
                raise ConfigError("%s: hex digits only" % name)
        return value.lower()
    if name == "wifi_password" and 0 < len(value) < 8:
        raise ConfigError("wifi_password: WPA2 needs 8..63 characters (or empty for an open network)")
    if name == "meter_id" and "|" in value:
        raise ConfigError("meter_id: '|' is not allowed (it separates signed fields)")
    return value


def parse_text(name, text):
    """CLI text -> typed value for ``name`` (then ``check_value``)."""
    kind = _spec(name)[1]
    if kind == INT or (kind == CHOICE and name == "interval_s"):
        if not text or len(text) > 10 or not _all_digits(text):
            raise ConfigError("%s: must be a whole number" % name)
        return check_value(name, int(text))
    if kind == JSON:
        if len(text) > 1024:
            raise ConfigError("%s: longer than 1024 characters" % name)
        try:
            value = json.loads(text)
        except ValueError:
            raise ConfigError("%s: not valid JSON" % name)
        return check_value(name, value)
    return check_value(name, text)


def _all_digits(text):
    for ch in text:
        if ch not in "0123456789":
            return False
    return True


class ConfigStore:
    """The meter's commissioning settings over two-slot storage.

    >>> store = ConfigStore(slots)                 # loads what was saved
    >>> store.set_many({"meter_id": "UJ-7", "broker_host": "10.0.0.2"}, now)
    >>> store.missing()                            # required, not yet set
    ['tariff', 'key_hex']
    """

    def __init__(self, slots):
        self.journal = Journal(slots, max_payload=MAX_PAYLOAD)
        self.values = {}
        self.load_error = ""
        saved = self.journal.load()
        if saved:
            try:
                data = json.loads(saved)
                for name in data:
                    self.values[name] = check_value(name, data[name])
            except (ValueError, ConfigError) as err:
                # a record that passed its CRC but not validation: a format from
                # another firmware.  Start empty and say so (selftest reports it).
                self.values = {}
                self.load_error = str(err)

    def get(self, name):
        """The value of ``name``, or its default when not set (None when there is none)."""
        name = canonical_name(name)
        if name in self.values:
            return self.values[name]
        return _spec(name)[6]

    def is_set(self, name):
        return canonical_name(name) in self.values

    def missing(self):
        """Required settings not set yet, in table order."""
        return [k[0] for k in KEYS if k[5] and k[0] not in self.values]

    def set_text(self, name, text, now):
        """Parse CLI ``text`` and save it; returns the value stored."""
        name = canonical_name(name)
        value = parse_text(name, text)
        self.set_many({name: value}, now)
        return value

    def set_many(self, updates, now):
        """Validate every update, then the whole configuration, then save once."""
        merged = {}
        for name in self.values:
            merged[name] = self.values[name]
        for name in updates:
            merged[canonical_name(name)] = check_value(canonical_name(name), updates[name])
        self._check_together(merged)
        self.journal.commit(json.dumps(merged).encode(), now)
        self.values = merged

    def _check_together(self, values):
        for k in KEYS:
            if k[5] and k[0] not in values:
                return  # incomplete: checked again once the last required key arrives
        try:
            MeterConfig.from_dict(self._meter_dict(values))
        except MeterConfigError as err:
            raise ConfigError(str(err))

    def _value(self, values, name):
        return values[name] if name in values else _spec(name)[6]

    def _meter_dict(self, values):
        v = lambda name: self._value(values, name)  # noqa: E731
        d = {"meter_id": v("meter_id"), "service": v("service"),
             "pulses_per_unit": v("pulse_constant"), "litres_per_pulses": v("litres_per_pulses"),
             "interval_s": v("interval_s"), "key_hex": v("key_hex"), "tariff": v("tariff"),
             "credit": v("credit") or {}}
        if v("sts_key_hex"):
            d["sts"] = {"key_hex": v("sts_key_hex"), "paise_per_unit": v("sts_paise_per_unit")}
        return d

    def meter_config(self):
        """The ``MeterConfig`` these settings describe; ConfigError when incomplete."""
        missing = self.missing()
        if missing:
            raise ConfigError("not commissioned: set %s" % ", ".join(missing))
        try:
            return MeterConfig.from_dict(self._meter_dict(self.values))
        except MeterConfigError as err:
            raise ConfigError(str(err))

    def public(self):
        """(name, value) for every setting, secrets shown only as set/unset."""
        out = []
        for k in KEYS:
            name = k[0]
            if k[4]:
                out.append((name, "set" if self.values.get(name) else "unset"))
            else:
                out.append((name, self.get(name)))
        return out
