"""Modbus register maps as data: a generic format, its decoder and read planner,
and the Eastron SDM120 / SDM630 input-register maps.

An entry is ``(name, address, type, scale, unit)``:
  * ``type``: F32 (IEEE 754 float32), U16, S16, U32, S32; 32-bit values take
    two registers, high word first (Eastron's order);
  * ``scale``: power of ten applied before rounding to an integer,
    ``value = round(raw * 10**scale)``, half to even, computed exactly in
    integers (a float32 is expanded from its bits, so the ESP32's
    single-precision floats never round the result);
  * ``unit``: the unit of that integer ("Wh", "dV", ...).

The firmware keeps integer units (energy Wh, as everywhere in the core), so
the SDM maps turn kWh into Wh (scale 3), volts into decivolts, amps into mA.

>>> block = [0x4366, 0x0000]            # 230.0 V as float32 0x43660000
>>> decode_registers((("voltage_dv", 0, F32, 1, "dV"),), 0, block)
{'voltage_dv': 2300}
"""
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc, no-redef]
        return x

F32 = "f32"
U16 = "u16"
S16 = "s16"
U32 = "u32"
S32 = "s32"
WIDTH = {F32: 2, U16: 1, S16: 1, U32: 2, S32: 2}

_MAX_READ_REGISTERS = const(125)  # Modbus Application Protocol V1.1b3, 6.4
# "Each request for data must be restricted to 40 parameters or less" (80
# registers): Eastron SDM630 Modbus protocol manual 1.2; ESPHome's sdm_meter
# reads 80 registers from 0x0000 in one request.
SDM_MAX_READ_REGISTERS = 80


# Addresses: Eastron SDM120 / SDM630 Modbus protocol manuals (input registers,
# FC 04), cross-checked with merlokk/SmartHome lib/eastron.h (SDM220/SDM630)
# and ESPHome's sdm_meter registers.
SDM120 = (
    ("voltage_dv", 0x0000, F32, 1, "dV"),
    ("current_ma", 0x0006, F32, 3, "mA"),
    ("active_power_w", 0x000C, F32, 0, "W"),
    ("power_factor_milli", 0x001E, F32, 3, "1/1000"),
    ("frequency_chz", 0x0046, F32, 2, "cHz"),
    ("import_wh", 0x0048, F32, 3, "Wh"),
    ("export_wh", 0x004A, F32, 3, "Wh"),
    ("total_wh", 0x0156, F32, 3, "Wh"),
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
    # check_map (validating a map; the meter reads a fixed one) is in ``modbus_more``.
    if name == "check_map":
        from firmware.protocol.modbus_more import check_map
        return check_map
    # SDM630 (three-phase) is built when asked for: an SDM120 meter never reads it, and
    # held from import on its 18 entries would sit in every meter's heap (~1.3 KB).
    # ``sdm.SDM630`` and ``from firmware.protocol.sdm import SDM630`` work the same.
    if name == "SDM630":
        return (
            ("voltage_l1_dv", 0x0000, F32, 1, "dV"),
            ("voltage_l2_dv", 0x0002, F32, 1, "dV"),
            ("voltage_l3_dv", 0x0004, F32, 1, "dV"),
            ("current_l1_ma", 0x0006, F32, 3, "mA"),
            ("current_l2_ma", 0x0008, F32, 3, "mA"),
            ("current_l3_ma", 0x000A, F32, 3, "mA"),
            ("active_power_l1_w", 0x000C, F32, 0, "W"),
            ("active_power_l2_w", 0x000E, F32, 0, "W"),
            ("active_power_l3_w", 0x0010, F32, 0, "W"),
            ("power_factor_l1_milli", 0x001E, F32, 3, "1/1000"),
            ("power_factor_l2_milli", 0x0020, F32, 3, "1/1000"),
            ("power_factor_l3_milli", 0x0022, F32, 3, "1/1000"),
            ("total_power_w", 0x0034, F32, 0, "W"),
            ("total_power_factor_milli", 0x003E, F32, 3, "1/1000"),
            ("frequency_chz", 0x0046, F32, 2, "cHz"),
            ("import_wh", 0x0048, F32, 3, "Wh"),
            ("export_wh", 0x004A, F32, 3, "Wh"),
            ("total_wh", 0x0156, F32, 3, "Wh"),
        )
    raise AttributeError(name)


def _scaled(num, den, scale):
    """num / den * 10**scale rounded half to even (den > 0), in exact integers."""
    if scale >= 0:
        num *= 10 ** scale
    else:
        den *= 10 ** -scale
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q & 1):
        q += 1
    return q


def f32_to_scaled_int(bits, scale):
    """round(float32 with these 32 bits * 10**scale), exact; None for NaN/inf.

    >>> f32_to_scaled_int(0x3FC00000, 0)   # 1.5 rounds half to even
    2
    """
    exp = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    if exp == 0xFF:
        return None
    if exp == 0:
        mant, e = frac, -149  # subnormal
    else:
        mant, e = frac | 0x800000, exp - 150
    if bits >> 31:
        mant = -mant
    if e >= 0:
        return _scaled(mant << e, 1, scale)
    return _scaled(mant, 1 << -e, scale)


def decode_registers(entries, start, registers):
    """Named integer values of ``entries`` from ``registers`` read from ``start``.

    A float32 that is NaN or infinite decodes to None.  An entry that does not
    lie wholly inside the block raises RegisterMapError.
    """
    values = {}
    end = start + len(registers)
    for name, address, kind, scale, _unit in entries:
        width = WIDTH[kind]
        if address < start or address + width > end:
            raise __getattr__("RegisterMapError")(
                "%s (0x%04x) is outside registers 0x%04x..0x%04x" % (name, address, start, end - 1))
        i = address - start
        v = registers[i] if width == 1 else (registers[i] << 16) | registers[i + 1]
        if kind == F32:
            values[name] = f32_to_scaled_int(v, scale)
            continue
        if kind == S16 and v & 0x8000:
            v -= 0x10000
        elif kind == S32 and v & 0x80000000:
            v -= 0x100000000
        values[name] = _scaled(v, 1, scale)
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
        end = address + WIDTH[entry[2]]
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
