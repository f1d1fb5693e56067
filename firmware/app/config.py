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

_MAX_PAYLOAD = const(4096)

# value kinds (private ints: a public name, or a short string, is interned for good)
_INT = const(0)
_WORD = const(1)     # printable ASCII, no spaces
_TEXT = const(2)     # printable ASCII, spaces allowed (Wi-Fi SSID)
_HEX = const(3)
_JSON = const(4)
_CHOICE = const(5)

# (name, kind, lo, hi / choices, secret, required, default)
# lo/hi bound an INT's value or a string's length.
KEYS = (
    ("meter_id", _WORD, 1, 32, False, True, None),
    ("service", _CHOICE, 0, ("electricity", "water", "gas"), False, False, "electricity"),
    ("broker_host", _WORD, 1, 64, False, True, None),
    ("broker_port", _INT, 1, 65535, False, False, 1883),
    ("wifi_ssid", _TEXT, 0, 32, False, False, ""),
    ("wifi_password", _TEXT, 0, 63, True, False, ""),
    ("pulse_constant", _INT, 1, 1000000, False, False, 3200),  # imp/kWh (water/gas: imp per litres_per_pulses L)
    ("litres_per_pulses", _INT, 1, 1000000, False, False, 10),
    ("interval_s", _CHOICE, 0, (900, 1800), False, False, 900),
    ("step_s", _INT, 10, 900, False, False, 60),
    ("heartbeat_s", _INT, 60, 86400, False, False, 900),
    ("clock_max_step_s", _INT, 1, 31536000, False, False, 86400),  # ``time`` downlink, unforced
    ("energy_source", _CHOICE, 0, ("pulses", "sdm", "dlms"), False, False, "pulses"),
    ("modbus_slave", _INT, 1, 247, False, False, 1),
    ("modbus_period_s", _INT, 1, 3600, False, False, 10),
    ("dlms_physical", _INT, 16, 16383, False, False, 17),
    ("dlms_period_s", _INT, 1, 3600, False, False, 60),
    ("tariff", _JSON, 2, 1024, False, True, None),
    ("credit", _JSON, 2, 1024, False, False, None),
    ("opening_credit_paise", _INT, 0, 100000000, False, False, 0),
    ("key_hex", _HEX, 32, 128, True, True, None),       # downlink HMAC key, 16..64 bytes
    ("sts_key_hex", _HEX, 16, 16, True, False, None),   # STS decoder key (DKGA02 output)
    ("sts_paise_per_unit", _INT, 1, 10000000, False, False, 1000),
)
NAMES = tuple([k[0] for k in KEYS])
# Settings that are key material: only in commissioning mode, and never printed.
SECRET_NAMES = tuple([k[0] for k in KEYS if k[4]])

_HEX_DIGITS = const("0123456789abcdefABCDEF")


class ConfigError(ValueError):
    """A setting that is unknown or invalid; the message starts with the key's name."""


def _spec(name):
    for k in KEYS:
        if k[0] == name:
            return k
    raise ConfigError("%s: unknown setting (settings: %s)" % (name, ", ".join(NAMES)))


def canonical_name(name):
    """The setting's name after aliases (short names the CLI accepts); ConfigError when unknown."""
    name = {"pulses_per_kwh": "pulse_constant", "wifi": "wifi_ssid", "key": "key_hex",
            "sts_key": "sts_key_hex", "port": "broker_port"}.get(name, name)
    _spec(name)
    return name


def _check(name, value):
    """Validate one typed value for ``name``; returns it (ConfigError otherwise)."""
    _, kind, lo, hi, _, _, _ = _spec(name)
    if kind == _INT:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError("%s: must be a whole number in %d..%d" % (name, lo, hi))
        return value
    if kind == _CHOICE:
        if value not in hi or isinstance(value, bool):
            raise ConfigError("%s: one of %s" % (name, ", ".join([str(c) for c in hi])))
        return value
    if kind == _JSON:
        if not isinstance(value, dict):
            raise ConfigError("%s: must be a JSON object" % name)
        try:
            if name == "tariff":
                tariff.Tariff.from_dict(value)
            else:
                credit.CreditConfig.from_dict(value)
        except ValueError as err:
            # TariffError / CreditConfigError (ValueErrors, the only ones these raise),
            # caught by their base: naming them would intern the names at import
            raise ConfigError("%s.%s" % (name, err))
        return value
    if not isinstance(value, str) or not lo <= len(value) <= hi:
        raise ConfigError("%s: must be %d..%d characters" % (name, lo, hi))
    for ch in value:
        o = ord(ch)
        if o < 0x20 or o > 0x7E or (o == 0x20 and kind != _TEXT):
            raise ConfigError("%s: printable ASCII only%s"
                              % (name, "" if kind == _TEXT else ", no spaces"))
    if kind == _HEX:
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


def parse_text(name, raw):
    """CLI text ``raw`` -> typed value for ``name`` (then checked)."""
    kind = _spec(name)[1]
    if kind == _INT or (kind == _CHOICE and name == "interval_s"):
        if not raw or len(raw) > 10 or not _all_digits(raw):
            raise ConfigError("%s: must be a whole number" % name)
        return _check(name, int(raw))
    if kind == _JSON:
        if len(raw) > 1024:
            raise ConfigError("%s: longer than 1024 characters" % name)
        try:
            value = json.loads(raw)
        except ValueError:
            raise ConfigError("%s: not valid JSON" % name)
        return _check(name, value)
    return _check(name, raw)


def _all_digits(raw):
    for ch in raw:
        if not 0x30 <= ord(ch) <= 0x39:  # '0'..'9' (str.isdigit takes other scripts' digits)
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
        self.journal = Journal(slots, max_payload=_MAX_PAYLOAD)
        self.values = {}
        self.load_error = ""
        saved = self.journal.load()
        if saved:
            try:
                data = json.loads(saved)
                for name in data:
                    self.values[name] = _check(name, data[name])
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

    def missing(self, values=None):
        """Required settings not set yet (in ``values``, by default those saved), in table order."""
        if values is None:
            values = self.values
        return [k[0] for k in KEYS if k[5] and k[0] not in values]

    def set_text(self, name, raw, now):
        """Parse CLI text ``raw`` and save it; returns the value stored."""
        name = canonical_name(name)
        value = parse_text(name, raw)
        self.set_many({name: value}, now)
        return value

    def set_many(self, settings, now):
        """Validate every update in ``settings``, then the whole configuration, then save once."""
        merged = {}
        for name in self.values:
            merged[name] = self.values[name]
        for name in settings:
            merged[canonical_name(name)] = _check(canonical_name(name), settings[name])
        if not self.missing(merged):  # else checked again once the last required key arrives
            self.meter_config(merged)
        self.journal.commit(json.dumps(merged).encode(), now)
        self.values = merged

    def meter_config(self, values=None):
        """The ``MeterConfig`` these settings describe (``values``: by default those saved);
        ConfigError when incomplete or not a valid whole."""
        if values is None:
            values = self.values
        missing = self.missing(values)
        if missing:
            raise ConfigError("not commissioned: set %s" % ", ".join(missing))
        v = lambda name: values[name] if name in values else _spec(name)[6]  # noqa: E731
        d = {"meter_id": v("meter_id"), "service": v("service"),
             "pulses_per_unit": v("pulse_constant"), "litres_per_pulses": v("litres_per_pulses"),
             "interval_s": v("interval_s"), "key_hex": v("key_hex"), "tariff": v("tariff"),
             "credit": v("credit") or {}}
        if v("sts_key_hex"):
            d["sts"] = {"key_hex": v("sts_key_hex"), "paise_per_unit": v("sts_paise_per_unit")}
        try:
            return MeterConfig.from_dict(d)
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
