"""Modbus register maps as data: a generic format, its decoder and read planner,
and the Eastron SDM120 / SDM630 input-register maps.

An entry is ``(name, address, type, scale, unit)``:
  * ``type``: F32 (IEEE 754 float32), U16, S16, U32, S32 (the strings "f32",
    "u16", ...); 32-bit values take two registers, high word first (Eastron's
    order);
  * ``scale``: power of ten applied before rounding to an integer,
    ``value = round(raw * 10**scale)``, half to even, computed exactly in
    integers (a float32 is expanded from its bits, so the ESP32's
    single-precision floats never round the result);
  * ``unit``: the unit of that integer ("Wh", "dV", ...).

The firmware keeps integer units (energy Wh, as everywhere in the core), so
the SDM maps turn kWh into Wh (scale 3), volts into decivolts, amps into mA.

The type names (F32, ..., WIDTH), SDM630, SDM_MAX_READ_REGISTERS, check_map
and f32_to_scaled_int are in ``modbus_more``, handed out by ``__getattr__``
(``sdm.SDM630``, ``from firmware.protocol.sdm import F32``): a meter reading
an SDM120 needs none of their names on its heap.

>>> block = [0x4366, 0x0000]            # 230.0 V as float32 0x43660000
>>> decode_registers((("voltage_dv", 0, F32, 1, "dV"),), 0, block)
{'voltage_dv': 2300}
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

_F32 = const("f32")
# Every type, 16-bit ones first: its index here says its width and sign (find()
# rather than a dict, whose keys would be interned names on every meter)
_TYPES = const("u16 s16 f32 u32 s32")
_MAX_READ_REGISTERS = const(125)  # Modbus Application Protocol V1.1b3, 6.4
_MORE = const("firmware.protocol.modbus_more")  # a string: see ``modbus``


# Addresses: Eastron SDM120 Modbus protocol manual (input registers, FC 04),
# cross-checked with merlokk/SmartHome lib/eastron.h (SDM220/SDM630) and
# ESPHome's sdm_meter registers.
SDM120 = (
    ("voltage_dv", 0x0000, _F32, 1, "dV"),
    ("current_ma", 0x0006, _F32, 3, "mA"),
    ("active_power_w", 0x000C, _F32, 0, "W"),
    ("power_factor_milli", 0x001E, _F32, 3, "1/1000"),
    ("frequency_chz", 0x0046, _F32, 2, "cHz"),
    ("import_wh", 0x0048, _F32, 3, "Wh"),
    ("export_wh", 0x004A, _F32, 3, "Wh"),
    ("total_wh", 0x0156, _F32, 3, "Wh"),
)


def __getattr__(name):
    # RegisterMapError (a ValueError: a malformed register map, or a block that does not
    # hold an entry) is made on first use and kept in the module dict: held from import
    # on, the class would cost heap a meter with a good map never needs.  Raise sites
    # here call ``__getattr__("RegisterMapError")``.
    if name == "RegisterMapError":
        g = globals()
        if name not in g:
            g[name] = type(name, (ValueError,), {})
        return g[name]
    # The type names, SDM630, check_map, ... are in ``modbus_more`` (see above).
    if name[:1] == "_":  # private, or CPython's import probing __path__: never handed out
        raise AttributeError(name)
    more = __import__(_MORE, None, None, ["__name__"])  # a fromlist: the module itself
    if name in more.PUBLIC[__name__]:
        return getattr(more, name)
    raise AttributeError(name)


def decode_registers(entries, start, registers):
    """Named integer values of ``entries`` from ``registers`` read from ``start``.

    Each is ``round(raw * 10**scale)``, half to even, in exact integers; a
    float32 is expanded from its bits first.  A float32 that is NaN or
    infinite decodes to None.  An entry that does not lie wholly inside the
    block raises RegisterMapError; an unknown type, KeyError.
    """
    values = {}  # type: dict
    end = start + len(registers)
    for name, address, kind, scale, _unit in entries:
        t = _TYPES.find(kind)
        if t & 3 or len(kind) != 3:  # not found (-1), or not a whole type name
            raise KeyError(kind)
        width = 1 if t < 8 else 2
        if address < start or address + width > end:
            raise __getattr__("RegisterMapError")(
                "%s (0x%04x) is outside registers 0x%04x..0x%04x" % (name, address, start, end - 1))
        i = address - start
        v = registers[i] if width == 1 else (registers[i] << 16) | registers[i + 1]
        den = 1
        if t == 8:  # f32: sign, 8-bit exponent, 23-bit fraction
            exp = (v >> 23) & 0xFF
            if exp == 0xFF:  # NaN or infinite
                values[name] = None
                continue
            num = v & 0x7FFFFF
            if exp:
                num |= 0x800000
            else:
                exp = 1  # subnormal
            if v >> 31:
                num = -num
            if exp >= 150:
                num <<= exp - 150
            else:
                den = 1 << (150 - exp)
        elif t == 4 and v & 0x8000:  # s16
            num = v - 0x10000
        elif t == 16 and v & 0x80000000:  # s32
            num = v - 0x100000000
        else:
            num = v
        # num / den * 10**scale rounded half to even (den > 0)
        if scale >= 0:
            num *= 10 ** scale
        else:
            den *= 10 ** -scale
        q, r = divmod(num, den)
        if 2 * r > den or (2 * r == den and q & 1):
            q += 1
        values[name] = q
    return values


def plan_reads(entries, max_count=_MAX_READ_REGISTERS, max_gap=None):
    """The fewest reads that cover every entry: [(address, count, entries), ...].

    Greedy from the lowest address: each read starts at the first entry not
    yet covered and takes every following entry that ends within
    ``max_count`` registers (optimal for points on a line).  ``max_gap``
    (registers) stops a read from spanning unmapped registers longer than
    that, for meters that answer such reads with an exception.

    >>> [(a, n) for a, n, _ in plan_reads(SDM120, SDM_MAX_READ_REGISTERS)]
    [(0, 76), (342, 2)]
    """
    if max_count < 2:
        raise __getattr__("RegisterMapError")("max_count must be at least 2")
    ordered = sorted(entries, key=lambda e: e[1])
    plans = []  # type: list
    group = []  # type: list
    first = last_end = 0
    for entry in ordered:
        address = entry[1]
        t = _TYPES.find(entry[2])  # as in decode_registers
        if t & 3 or len(entry[2]) != 3:
            raise KeyError(entry[2])
        end = address + (1 if t < 8 else 2)
        if group and (end - first > max_count or
                      (max_gap is not None and address - last_end > max_gap)):
            plans.append((first, last_end - first, group))
            group = []
        if not group:
            first = address
        group.append(entry)
        last_end = max(last_end, end) if len(group) > 1 else end
    if group:
        plans.append((first, last_end - first, group))
    return plans
