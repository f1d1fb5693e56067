"""Modbus RTU codec, timing, Transaction and SDM register maps; dual-runtime.

Exact frames come from independent sources:
  * CRC-16/MODBUS check value: CRC("123456789") = 0x4B37 (Greg Cook's CRC
    catalogue, reveng, entry CRC-16/MODBUS);
  * slave 0x11 frames for FC 03/04/06/16: the worked examples on
    simplymodbus.ca (also in the Modicon PI-MBUS-300 guide);
  * 01 04 00 00 00 02 71 CB and its reply 01 04 04 00 00 08 E6 7D CE:
    pikasTech/PikaPython examples/modbus/rtu_master.py;
  * host/test_modbus_vs_pymodbus.py checks the same frames against pymodbus.
"""
from firmware.protocol import modbus as mb
from firmware.protocol import sdm
from firmware.protocol.crc16 import append_crc, crc16_modbus, crc_ok
from firmware.tests.check import eq, raises

H = bytes.fromhex

READ_INPUT_1_0_2 = H("01 04 00 00 00 02 71 CB".replace(" ", ""))
REPLY_INPUT_1_0_2 = H("01 04 04 00 00 08 E6 7D CE".replace(" ", ""))  # registers 0x0000, 0x08E6


def test_crc16_modbus_check_value():
    eq(crc16_modbus(b"123456789"), 0x4B37)


def test_crc16_can_continue_over_chunks():
    eq(crc16_modbus(b"6789", crc16_modbus(b"12345")), 0x4B37)


def test_crc_is_appended_low_byte_first():
    eq(append_crc(H("110400080001")), H("110400080001B298"))
    assert crc_ok(H("110400080001B298"))
    assert not crc_ok(H("110400080001982B"))


def test_read_input_registers_frame_is_exact():
    eq(mb.read_input_registers(1, 0, 2).adu, READ_INPUT_1_0_2)
    eq(mb.read_input_registers(0x11, 0x0008, 1).adu, H("110400080001B298"))


def test_read_holding_registers_frame_is_exact():
    eq(mb.read_holding_registers(0x11, 0x006B, 3).adu, H("1103006B00037687"))


def test_write_single_register_frame_is_exact():
    eq(mb.write_single_register(0x11, 0x0001, 0x0003).adu, H("1106000100039A9B"))


def test_write_multiple_registers_frame_is_exact():
    eq(mb.write_multiple_registers(0x11, 0x0001, [0x000A, 0x0102]).adu,
       H("11100001000204000A0102C6F0"))


def test_expected_response_lengths():
    eq(mb.read_input_registers(1, 0, 2).response_length, 9)  # 1+1+1+4+2
    eq(mb.read_holding_registers(1, 0, 125).response_length, 255)  # 3 + 250 + 2
    eq(mb.write_single_register(1, 0, 1).response_length, 8)
    eq(mb.write_multiple_registers(1, 0, [1, 2, 3]).response_length, 8)


def test_requests_out_of_range_are_refused():
    raises(mb.ModbusError, mb.read_input_registers, 248, 0, 1)
    raises(mb.ModbusError, mb.read_input_registers, 0, 0, 1)  # reads cannot be broadcast
    raises(mb.ModbusError, mb.read_input_registers, 1, 0, 0)
    raises(mb.ModbusError, mb.read_input_registers, 1, 0, 126)
    raises(mb.ModbusError, mb.read_input_registers, 1, 0x10000, 1)
    raises(mb.ModbusError, mb.read_input_registers, 1, 0xFFFF, 2)
    raises(mb.ModbusError, mb.write_single_register, 1, 0, 0x10000)
    raises(mb.ModbusError, mb.write_single_register, 1, 0, -1)
    raises(mb.ModbusError, mb.write_multiple_registers, 1, 0, [])
    raises(mb.ModbusError, mb.write_multiple_registers, 1, 0, [0] * 124)
    raises(mb.ModbusError, mb.Request, 1, 5, 0, 1)  # FC 05 (write coil) is not ours
    eq(mb.read_input_registers(1, 0xFFFE, 2).count, 2)


def test_parser_returns_registers_of_a_whole_reply():
    p = mb.ResponseParser(mb.read_input_registers(1, 0, 2))
    resp = p.feed(REPLY_INPUT_1_0_2)
    assert resp.ok
    eq(resp.registers, [0x0000, 0x08E6])
    eq(resp.pdu, H("04040000 08E6".replace(" ", "")))
    eq(p.discarded, 0)


def test_parser_completes_on_the_last_byte_when_fed_byte_by_byte():
    p = mb.ResponseParser(mb.read_holding_registers(0x11, 0x006B, 3))
    frame = H("110306AE415652434049AD")
    for i in range(len(frame) - 1):
        eq(p.feed(frame[i:i + 1]), None, "byte %d" % i)
    eq(p.feed(frame[-1:]).registers, [0xAE41, 0x5652, 0x4340])


def test_read_response_indexes_like_its_registers_without_the_list():
    frame = H("110306AE415652434049AD")  # the FC 03 example above: 3 registers
    resp = mb.ResponseParser(mb.read_holding_registers(0x11, 0x006B, 3)).feed(frame)
    eq((len(resp), resp[0], resp[1], resp[2]), (3, 0xAE41, 0x5652, 0x4340))
    raises(IndexError, lambda: resp[3])
    eq([resp[k] for k in range(len(resp))], resp.registers)
    # sdm decodes a block from the response itself, as the meter's reader does
    entries = (("v", 0x006B, sdm.F32, 10, "dV"),)
    eq(sdm.decode_registers(entries, 0x006B, resp), sdm.decode_registers(entries, 0x006B, resp.registers))


def test_parser_gives_the_same_reply_for_every_split_point():
    for cut in range(len(REPLY_INPUT_1_0_2) + 1):
        p = mb.ResponseParser(mb.read_input_registers(1, 0, 2))
        first = p.feed(REPLY_INPUT_1_0_2[:cut])
        resp = first or p.feed(REPLY_INPUT_1_0_2[cut:])
        eq(resp.registers, [0, 0x08E6], "cut %d" % cut)


def test_parser_skips_leading_garbage_including_fake_headers():
    # 01 04 with a wrong byte count, then 01 04 04 with a bad CRC, then the reply
    junk = H("FF00" "0104" "02" "0104" "04" "00000000" "0000")
    p = mb.ResponseParser(mb.read_input_registers(1, 0, 2))
    resp = p.feed(junk + REPLY_INPUT_1_0_2)
    eq(resp.registers, [0, 0x08E6])
    eq(p.discarded, len(junk))
    assert p.crc_errors >= 1


def test_parser_reports_nothing_for_a_bad_crc_and_counts_it():
    bad = REPLY_INPUT_1_0_2[:-1] + bytes([REPLY_INPUT_1_0_2[-1] ^ 0x01])
    p = mb.ResponseParser(mb.read_input_registers(1, 0, 2))
    eq(p.feed(bad), None)
    eq(p.crc_errors, 1)


def test_parser_ignores_a_reply_from_another_slave():
    other = append_crc(H("0204040000" "08E6"))  # same data, slave 2
    p = mb.ResponseParser(mb.read_input_registers(1, 0, 2))
    eq(p.feed(other), None)
    eq(p.discarded, len(other))
    eq(p.feed(REPLY_INPUT_1_0_2).registers, [0, 0x08E6])


def test_exception_reply_is_a_response_with_the_code_name():
    # 01 84 02 + CRC: exception 2 to FC 04; CRC C2C1 computed by pymodbus in the host test
    p = mb.ResponseParser(mb.read_input_registers(1, 0x9000, 2))
    resp = p.feed(H("018402C2C1"))
    assert not resp.ok
    eq(resp.function, 4)
    eq(resp.exception_code, 2)
    eq(resp.exception_name, "ILLEGAL_DATA_ADDRESS")
    eq(resp.registers, None)


def test_exception_names_follow_the_modbus_specification():
    eq(mb.exception_name(1), "ILLEGAL_FUNCTION")
    eq(mb.exception_name(3), "ILLEGAL_DATA_VALUE")
    eq(mb.exception_name(6), "SERVER_DEVICE_BUSY")
    eq(mb.exception_name(0x0B), "GATEWAY_TARGET_DEVICE_FAILED_TO_RESPOND")
    eq(mb.exception_name(0x42), "UNKNOWN_EXCEPTION_66")


def test_write_single_register_echo_is_accepted():
    req = mb.write_single_register(0x11, 0x0001, 0x0003)
    resp = mb.ResponseParser(req).feed(H("1106000100039A9B"))
    assert resp.ok
    eq(resp.pdu, H("0600010003"))


def test_write_multiple_registers_reply_is_accepted():
    req = mb.write_multiple_registers(0x11, 0x0001, [0x000A, 0x0102])
    resp = mb.ResponseParser(req).feed(H("1110000100021298"))
    assert resp.ok
    eq(resp.function, 16)


def test_write_echo_of_a_different_value_is_rejected_as_mismatch():
    req = mb.write_single_register(0x11, 0x0001, 0x0004)
    p = mb.ResponseParser(req)
    eq(p.feed(H("1106000100039A9B")), None)  # echoes value 3, we wrote 4
    eq(p.mismatches, 1)


def test_broadcast_write_has_no_parser():
    raises(mb.ModbusError, mb.ResponseParser, mb.write_single_register(0, 1, 1))


# ------------------------------------------------------------------ timing

def test_character_and_gap_times_below_19200_baud():
    # 11 bits/char: 9600 baud -> 11e6/9600 = 1145.8 -> 1146 us;
    # t3.5 = 38.5e6/9600 = 4010.4 -> 4011 us; t1.5 = 16.5e6/9600 = 1718.75 -> 1719 us
    eq(mb.char_time_us(9600), 1146)
    eq(mb.inter_frame_gap_us(9600), 4011)
    eq(mb.inter_char_timeout_us(9600), 1719)
    # 2400 baud 8N1 (SDM120 default): t3.5 = 35e6/2400 = 14583.3 -> 14584 us
    eq(mb.inter_frame_gap_us(2400, bits=10), 14584)
    # 19200 is still computed: 38.5e6/19200 = 2005.2 -> 2006 us
    eq(mb.inter_frame_gap_us(19200), 2006)


def test_gaps_are_fixed_above_19200_baud():
    for baud in (38400, 57600, 115200):
        eq(mb.inter_frame_gap_us(baud), 1750)
        eq(mb.inter_char_timeout_us(baud), 750)


def test_response_timeout_covers_both_frames_gap_and_turnaround():
    # 8-byte request + 9-byte reply = 17 chars * 11 bits at 9600 = 187e6/9600 = 19479.2 -> 19480 us
    # + t3.5 4011 us = 23491 us -> 24 ms, + 200 ms turnaround
    eq(mb.response_timeout_ms(mb.read_input_registers(1, 0, 2), 9600), 224)
    eq(mb.response_timeout_ms(mb.read_input_registers(1, 0, 2), 9600, turnaround_ms=0), 24)


# -------------------------------------------------------------- transaction

def test_transaction_returns_the_reply_on_first_attempt():
    tx = mb.Transaction(mb.read_input_registers(1, 0, 2), 9600)
    eq(tx.start(1000), READ_INPUT_1_0_2)
    eq(tx.poll(1100), None)
    tx.feed(REPLY_INPUT_1_0_2[:4])
    assert not tx.done
    tx.feed(REPLY_INPUT_1_0_2[4:])
    assert tx.done
    eq(tx.response.registers, [0, 0x08E6])
    eq(tx.attempts, 1)


def test_transaction_resends_after_timeout_then_succeeds():
    tx = mb.Transaction(mb.read_input_registers(1, 0, 2), 9600, retries=2)
    tx.start(0)
    eq(tx.poll(tx.timeout_ms - 1), None)
    tx.feed(REPLY_INPUT_1_0_2[:5])  # half a reply, then silence
    eq(tx.poll(tx.timeout_ms), READ_INPUT_1_0_2)
    eq(tx.attempts, 2)
    tx.feed(REPLY_INPUT_1_0_2)  # the stale half was dropped on resend
    eq(tx.response.registers, [0, 0x08E6])


def test_transaction_gives_up_after_the_retries_with_a_reason():
    tx = mb.Transaction(mb.read_input_registers(1, 0, 2), 9600, retries=1)
    t = 0
    tx.start(t)
    t += tx.timeout_ms
    eq(tx.poll(t), READ_INPUT_1_0_2)
    tx.feed(REPLY_INPUT_1_0_2[:-1] + b"\x00")  # corrupted CRC
    t += tx.timeout_ms
    eq(tx.poll(t), None)
    assert tx.done
    eq(tx.response, None)
    assert "2 attempts" in tx.error and "1 crc errors" in tx.error, tx.error


def test_transaction_ends_on_an_exception_reply_without_retry():
    tx = mb.Transaction(mb.read_input_registers(1, 0x9000, 2), 9600)
    tx.start(0)
    tx.feed(H("018402C2C1"))
    assert tx.done
    eq(tx.response.exception_name, "ILLEGAL_DATA_ADDRESS")
    eq(tx.poll(10 ** 6), None)


def test_broadcast_transaction_is_done_after_its_timeout():
    tx = mb.Transaction(mb.write_single_register(0, 0x0014, 2), 9600)
    tx.start(0)
    eq(tx.poll(tx.timeout_ms - 1), None)
    assert not tx.done
    eq(tx.poll(tx.timeout_ms), None)
    assert tx.done and tx.error == "" and tx.response is None


# --------------------------------------------------------------- SDM maps

def test_sdm_addresses_match_the_eastron_manuals():
    # Eastron SDM120/SDM630 protocol manuals, input registers (hex start address)
    a120 = dict((e[0], e[1]) for e in sdm.SDM120)
    eq([a120[n] for n in ("voltage_dv", "current_ma", "active_power_w", "power_factor_milli",
                          "frequency_chz", "import_wh", "export_wh", "total_wh")],
       [0x00, 0x06, 0x0C, 0x1E, 0x46, 0x48, 0x4A, 0x156])
    a630 = dict((e[0], e[1]) for e in sdm.SDM630)
    eq([a630["voltage_l%d_dv" % k] for k in (1, 2, 3)], [0x00, 0x02, 0x04])
    eq([a630["current_l%d_ma" % k] for k in (1, 2, 3)], [0x06, 0x08, 0x0A])
    eq([a630["active_power_l%d_w" % k] for k in (1, 2, 3)], [0x0C, 0x0E, 0x10])
    eq([a630["power_factor_l%d_milli" % k] for k in (1, 2, 3)], [0x1E, 0x20, 0x22])
    eq(a630["total_power_w"], 0x34)
    eq((a630["import_wh"], a630["export_wh"], a630["total_wh"]), (0x48, 0x4A, 0x156))


def test_sdm_maps_are_valid():
    sdm.check_map(sdm.SDM120)
    sdm.check_map(sdm.SDM630)


def test_float32_registers_decode_to_scaled_integers():
    # 230.0 = 1.796875 * 2**7 -> exp 134 (0x86), mantissa 0x4C0000 -> 0x43660000
    # 50.0 = 1.5625 * 2**5 -> exp 132, mantissa 0x480000 -> 0x42480000
    # 1234.5 = 0b10011010010.1 = 1.00110100101b * 2**10 -> exp 137 -> 0x449A5000
    # -0.5 -> sign 1, exp 126 -> 0xBF000000
    entries = (("v", 0, sdm.F32, 1, "dV"), ("f", 2, sdm.F32, 2, "cHz"),
               ("e", 4, sdm.F32, 3, "Wh"), ("pf", 6, sdm.F32, 3, ""))
    regs = [0x4366, 0x0000, 0x4248, 0x0000, 0x449A, 0x5000, 0xBF00, 0x0000]
    eq(sdm.decode_registers(entries, 0, regs), {"v": 2300, "f": 5000, "e": 1234500, "pf": -500})


def test_float32_scaling_rounds_half_to_even_exactly():
    eq(sdm.f32_to_scaled_int(0x3FC00000, 0), 2)  # 1.5
    eq(sdm.f32_to_scaled_int(0x40200000, 0), 2)  # 2.5
    eq(sdm.f32_to_scaled_int(0xC0200000, 0), -2)  # -2.5
    # 0.1f = 13421773 * 2**-27 = 0.100000001490116...; *1000 = 100.0000015 -> 100
    eq(sdm.f32_to_scaled_int(0x3DCCCCCD, 3), 100)
    # 16777217 is not a float32: 0x4B800001 is 16777218 exactly (2**24 + 2)
    eq(sdm.f32_to_scaled_int(0x4B800001, 0), 16777218)
    eq(sdm.f32_to_scaled_int(0x4B800001, 3), 16777218000)


def test_float32_nan_and_infinity_decode_to_none():
    eq(sdm.f32_to_scaled_int(0x7FC00000, 3), None)
    eq(sdm.f32_to_scaled_int(0x7F800000, 3), None)
    eq(sdm.f32_to_scaled_int(0xFF800000, 0), None)


def test_integer_register_types_decode_with_sign_and_scale():
    entries = (("u", 0, sdm.U16, 0, ""), ("s", 1, sdm.S16, 0, ""),
               ("u32", 2, sdm.U32, 1, ""), ("s32", 4, sdm.S32, -1, ""))
    # s32 0xFFFFFF9C = -100; scale -1 -> -10.  u32 0x00010002 = 65538; scale 1 -> 655380
    regs = [0xFFFF, 0xFFFF, 0x0001, 0x0002, 0xFFFF, 0xFF9C]
    eq(sdm.decode_registers(entries, 0, regs), {"u": 65535, "s": -1, "u32": 655380, "s32": -10})


def test_negative_scale_on_integers_rounds_half_to_even():
    entries = (("a", 0, sdm.U16, -1, ""), ("b", 1, sdm.U16, -1, ""), ("c", 2, sdm.S16, -1, ""))
    eq(sdm.decode_registers(entries, 0, [25, 35, 0x10000 - 25]), {"a": 2, "b": 4, "c": -2})


def test_decode_refuses_an_entry_outside_the_block():
    raises(sdm.RegisterMapError, sdm.decode_registers, sdm.SDM120, 0, [0] * 76)


def test_sdm120_plan_is_two_reads_within_the_eastron_limit():
    plan = sdm.plan_reads(sdm.SDM120, sdm.SDM_MAX_READ_REGISTERS)
    # 0x0000..0x004B = 76 registers, then 0x0156..0x0157
    eq([(a, n) for a, n, _ in plan], [(0x0000, 76), (0x0156, 2)])
    eq(sum(len(g) for _, _, g in plan), len(sdm.SDM120))


def test_sdm_reader_plans_the_sdm120_within_the_eastron_limit():
    # the reader keeps the limit as a private const (no name on a meter): the same 80
    from firmware.app.sdm_reader import SdmReader

    class Uart:
        baud = 9600

    eq(sdm.SDM_MAX_READ_REGISTERS, 80)
    eq(SdmReader(Uart(), 1, lambda: 0).plan, sdm.plan_reads(sdm.SDM120, sdm.SDM_MAX_READ_REGISTERS))


def test_an_unknown_register_type_is_a_key_error():
    for kind in ("f64", "u1", "16 s", "32"):
        entries = (("a", 0, kind, 0, ""),)
        raises(KeyError, sdm.decode_registers, entries, 0, [0, 0])
        raises(KeyError, sdm.plan_reads, entries)


def test_sdm630_plan_is_two_reads():
    plan = sdm.plan_reads(sdm.SDM630, sdm.SDM_MAX_READ_REGISTERS)
    eq([(a, n) for a, n, _ in plan], [(0x0000, 76), (0x0156, 2)])


def test_planner_splits_at_the_count_limit_and_at_large_gaps():
    entries = tuple(("r%d" % a, a, sdm.F32, 0, "") for a in (0, 2, 4, 6, 40, 42))
    eq([(a, n) for a, n, _ in sdm.plan_reads(entries, 6)], [(0, 6), (6, 2), (40, 4)])
    eq([(a, n) for a, n, _ in sdm.plan_reads(entries, 125, max_gap=0)], [(0, 8), (40, 4)])
    eq([(a, n) for a, n, _ in sdm.plan_reads(entries, 125)], [(0, 44)])


def test_planned_reads_decode_every_entry():
    # Each planned block decodes its own entries from a zero-filled block
    values = {}
    for address, count, group in sdm.plan_reads(sdm.SDM630, sdm.SDM_MAX_READ_REGISTERS):
        values.update(sdm.decode_registers(group, address, [0] * count))
    eq(sorted(values), sorted(e[0] for e in sdm.SDM630))


def test_bad_maps_are_refused_with_a_reason():
    bad = [
        (("a", 0, "f64", 0, ""),),
        (("a", 0, sdm.F32, 0, ""), ("a", 4, sdm.F32, 0, "")),
        (("a", 0, sdm.F32, 0, ""), ("b", 1, sdm.U16, 0, "")),
        (("a", 0xFFFF, sdm.F32, 0, ""),),
        (("a", 0, sdm.F32, 1.5, ""),),
        (("a", 0, sdm.F32),),
    ]
    for entries in bad:
        raises(sdm.RegisterMapError, sdm.check_map, entries)
