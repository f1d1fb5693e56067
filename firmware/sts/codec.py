"""STS token codec (IEC 62055-41): fields <-> 64-bit block <-> 20 digits.

A token carries 66 bits: class (2) | subclass (4) | data (44) | CRC (16).
The 64 bits after the class are encrypted with EA07 (class 0 and 2; class 1
test tokens travel in clear), then the two class bits are *transposed*: they
replace bits 28 and 27 of the encrypted block, and the two bits they displace
become the top bits 65 and 64.  The 66-bit number, written in decimal and
zero-padded to 20 digits, is what the consumer types.

For credit and most management tokens the 44 data bits are
rnd (4) | TID (24) | amount or value (16).  The CRC is CRC-16 (poly
x^16+x^15+x^2+1, reflected 0xA001, init 0xFFFF, the Modbus CRC) over the
class..data 50 bits left-padded to 7 bytes, stored high byte = CRC low byte.

Amounts are 16 bits: exponent e (2 bits) and mantissa m (14 bits);
units = m * 10^e + sum(2^14 * 10^(i-1) for i in 1..e), in tenths of the
token's unit (0.1 kWh, 0.1 m3).  Encoding rounds up, in the consumer's
favour, as the standard requires.

>>> tok = decode("51043465443420856213", 0x0ABC12DEF3456789, SAMPLE)
>>> (tok.cls, tok.subclass, tok.rnd, tok.tid, tok.value, tok.crc_ok)
(0, 0, 11, 1698595, 256, True)
"""
from firmware.protocol.crc16 import crc16_modbus
from firmware.sts import ea07
from firmware.sts.ea07 import PRODUCTION, SAMPLE  # noqa: F401  (re-exported)

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore
        return x

# Token classes
CLASS_CREDIT = const(0)
CLASS_TEST = const(1)  # non meter-specific management (test/display), not encrypted
CLASS_MANAGEMENT = const(2)

# Class 0 subclasses (credit transfer)
ELECTRICITY = const(0)
WATER = const(1)
GAS = const(2)
TIME = const(3)

# Class 2 subclasses (meter-specific management)
SET_MAX_POWER_LIMIT = const(0)
CLEAR_CREDIT = const(1)
SET_TARIFF_RATE = const(2)
KEY_CHANGE_1 = const(3)  # Set 1st section decoder key
KEY_CHANGE_2 = const(4)  # Set 2nd section decoder key
CLEAR_TAMPER = const(5)
SET_MAX_PHASE_UNBALANCE = const(6)
SET_WATER_FACTOR = const(7)

CREDIT_NAMES = {ELECTRICITY: "electricity", WATER: "water", GAS: "gas", TIME: "time"}
MANAGEMENT_NAMES = {
    SET_MAX_POWER_LIMIT: "set_max_power_limit", CLEAR_CREDIT: "clear_credit",
    SET_TARIFF_RATE: "set_tariff_rate", KEY_CHANGE_1: "key_change_1",
    KEY_CHANGE_2: "key_change_2", CLEAR_TAMPER: "clear_tamper",
    SET_MAX_PHASE_UNBALANCE: "set_max_phase_unbalance", SET_WATER_FACTOR: "set_water_factor",
}

AMOUNT_MAX_UNITS = const(18201624)  # e=3, m=16383: 16383000 + 16384 * 111
TOKEN_LIMIT = 1 << 66
MASK64 = (1 << 64) - 1
CLASS_BITS = 3 << 27


class TokenFormatError(ValueError):
    """The text is not a 20-digit token (length, non-digits, > 66 bits)."""


class AmountError(ValueError):
    """An amount outside what the 16-bit amount field can carry."""


# ---- CRC -----------------------------------------------------------------

def crc16_sts(data):
    """The STS CRC of ``data`` as the 16-bit number stored in the token.

    >>> hex(crc16_sts(bytes([0x00, 0x0B, 0x19, 0xEB, 0x23, 0x01, 0x00])))
    '0xc207'
    """
    crc = crc16_modbus(data)
    return ((crc & 0xFF) << 8) | (crc >> 8)


def token_crc(cls, subclass, data44):
    """CRC over class (2) | subclass (4) | data (44), left-padded to 7 bytes."""
    v = (cls << 48) | (subclass << 44) | data44
    b = bytearray(7)
    for i in range(6, -1, -1):
        b[i] = v & 0xFF
        v >>= 8
    return crc16_sts(b)


# ---- amount --------------------------------------------------------------

def decode_amount(field):
    """Units (tenths of kWh / m3) carried by a 16-bit amount field.

    >>> decode_amount((1 << 14) | 0)
    16384
    """
    e = field >> 14
    units = (field & 0x3FFF) * 10 ** e
    for i in range(1, e + 1):
        units += 16384 * 10 ** (i - 1)
    return units


def encode_amount(units):
    """The 16-bit amount field for ``units`` tenths, rounded up to the next
    value the field can carry (never less than paid for).

    >>> encode_amount(10)
    10
    """
    if units < 0 or units > AMOUNT_MAX_UNITS:
        raise AmountError("amount %r tenths outside 0..%d" % (units, AMOUNT_MAX_UNITS))
    offset = 0
    for e in range(4):
        if e:
            offset += 16384 * 10 ** (e - 1)
        scale = 10 ** e
        m = (units - offset + scale - 1) // scale  # ceil
        if m <= 0x3FFF:
            return (e << 14) | m
    raise AmountError("amount %r too large" % units)  # unreachable below the max


# ---- 20 digits <-> (class, 64-bit block) ---------------------------------

def transpose(cls, block64):
    """The 66-bit token number for ``cls`` and the (encrypted) 64-bit block."""
    top = (block64 >> 27) & 3  # bits 28, 27 move to 65, 64
    return (top << 64) | (block64 & ~CLASS_BITS & MASK64) | (cls << 27)


def untranspose(number):
    """(class, 64-bit block) from a 66-bit token number."""
    cls = (number >> 27) & 3
    block = (number & MASK64 & ~CLASS_BITS) | ((number >> 64) << 27)
    return cls, block


def to_digits(number):
    """Zero-padded 20-digit text of a 66-bit token number."""
    s = str(number)
    return "0" * (20 - len(s)) + s


def parse_digits(text):
    """The 66-bit number in ``text`` (spaces and dashes allowed between digits).

    >>> parse_digits("0000-0000-0000-0000-0042")
    42
    """
    digits = "".join(c for c in text if c not in " -")
    if len(digits) != 20:
        raise TokenFormatError("a token has 20 digits, got %d" % len(digits))
    for c in digits:
        if c < "0" or c > "9":
            raise TokenFormatError("a token has only digits 0-9, got %r" % c)
    number = int(digits)
    if number >= TOKEN_LIMIT:
        raise TokenFormatError("token number exceeds 66 bits")
    return number


# ---- token ---------------------------------------------------------------

class Token:
    """A decoded token.  ``data`` is the 44 data bits; for credit and most
    management tokens ``rnd``/``tid``/``value`` split it (4/24/16 bits).

    >>> Token(0, 0, (5 << 40) | (7 << 16) | 10, 0).tid
    7
    """

    def __init__(self, cls, subclass, data, crc):
        self.cls = cls
        self.subclass = subclass
        self.data = data
        self.crc = crc
        self.crc_ok = crc == token_crc(cls, subclass, data)
        self.rnd = data >> 40
        self.tid = (data >> 16) & 0xFFFFFF
        self.value = data & 0xFFFF

    def kind(self):
        """Readable name: 'electricity', 'clear_credit', ... or 'class3/sub7'."""
        if self.cls == CLASS_CREDIT and self.subclass in CREDIT_NAMES:
            return CREDIT_NAMES[self.subclass]
        if self.cls == CLASS_MANAGEMENT and self.subclass in MANAGEMENT_NAMES:
            return MANAGEMENT_NAMES[self.subclass]
        return "class%d/sub%d" % (self.cls, self.subclass)

    def units(self):
        """Credit tokens: amount in tenths of the unit; others: the raw 16-bit value."""
        if self.cls == CLASS_CREDIT:
            return decode_amount(self.value)
        return self.value

    def key_change(self):
        """Fields of a key change token (class 2, subclass 3 or 4), else None.

        1st section: KENHO (4) | KRN (4) | RO (1) | res (1) | KT (2) | NKHO (32)
        2nd section: KENLO (4) | TI (8) | NKLO (32)
        """
        d = self.data
        if self.cls != CLASS_MANAGEMENT:
            return None
        if self.subclass == KEY_CHANGE_1:
            return {"section": 1, "kenho": d >> 40, "krn": (d >> 36) & 0xF,
                    "ro": (d >> 35) & 1, "key_type": (d >> 32) & 3,
                    "nkho": d & 0xFFFFFFFF}
        if self.subclass == KEY_CHANGE_2:
            return {"section": 2, "kenlo": d >> 40, "ti": (d >> 32) & 0xFF,
                    "nklo": d & 0xFFFFFFFF}
        return None


def block_of(subclass, data44, crc):
    """The 64-bit plain block: subclass (4) | data (44) | CRC (16)."""
    return (subclass << 60) | (data44 << 16) | crc


def decode(text, key, tables=PRODUCTION):
    """Decrypt and split a 20-digit token under the 64-bit decoder ``key``.

    A wrong key or a mistyped digit shows as ``crc_ok == False``.
    """
    cls, block = untranspose(parse_digits(text))
    if cls != CLASS_TEST:
        block = ea07.decrypt(block, key, tables)
    return Token(cls, block >> 60, (block >> 16) & ((1 << 44) - 1), block & 0xFFFF)


def encode(cls, subclass, data44, key, tables=PRODUCTION):
    """The 20 digits of a token with these fields (the CRC is computed here)."""
    if not 0 <= cls <= 3 or not 0 <= subclass <= 15 or not 0 <= data44 < (1 << 44):
        raise ValueError("class 0..3, subclass 0..15, data 44 bits")
    block = block_of(subclass, data44, token_crc(cls, subclass, data44))
    if cls != CLASS_TEST:
        block = ea07.encrypt(block, key, tables)
    return to_digits(transpose(cls, block))


def data_rnd_tid_value(rnd, tid, value):
    """The 44 data bits rnd (4) | TID (24) | value (16)."""
    if not 0 <= rnd <= 15 or not 0 <= tid <= 0xFFFFFF or not 0 <= value <= 0xFFFF:
        raise ValueError("rnd 0..15, tid 0..16777215, value 0..65535")
    return (rnd << 40) | (tid << 16) | value


def encode_credit(subclass, rnd, tid, units, key, tables=PRODUCTION):
    """Class 0 credit token for ``units`` tenths (rounded up to the field)."""
    return encode(CLASS_CREDIT, subclass, data_rnd_tid_value(rnd, tid, encode_amount(units)),
                  key, tables)


def encode_management(subclass, rnd, tid, value, key, tables=PRODUCTION):
    """Class 2 token whose data is rnd | TID | 16-bit value (power limit in W,
    register to clear, pad 0 for clear tamper, ...)."""
    return encode(CLASS_MANAGEMENT, subclass, data_rnd_tid_value(rnd, tid, value), key, tables)


def encode_key_change(new_key, old_key, krn, key_type, ken, ti, ro=0, tables=PRODUCTION):
    """The two tokens (1st, 2nd section) that move a meter to ``new_key``.

    Both are encrypted under the *old* key; the new key's high 32 bits ride in
    the 1st section, its low 32 bits in the 2nd.
    """
    d1 = ((ken >> 4) << 40) | ((krn & 0xF) << 36) | ((ro & 1) << 35) | ((key_type & 3) << 32) \
        | (new_key >> 32)
    d2 = ((ken & 0xF) << 40) | ((ti & 0xFF) << 32) | (new_key & 0xFFFFFFFF)
    return (encode(CLASS_MANAGEMENT, KEY_CHANGE_1, d1, old_key, tables),
            encode(CLASS_MANAGEMENT, KEY_CHANGE_2, d2, old_key, tables))
