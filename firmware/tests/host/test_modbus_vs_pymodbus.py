"""Our Modbus RTU codec against pymodbus's RTU framer and PDUs, under hypothesis."""
import struct
from fractions import Fraction

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu import register_message as pm

from firmware.protocol import modbus as mb
from firmware.protocol import sdm
from firmware.protocol.crc16 import crc16_modbus

SERVER = FramerRTU(DecodePDU(True))  # decodes requests
CLIENT = FramerRTU(DecodePDU(False))  # builds responses here

slaves = st.integers(1, 247)
addresses = st.integers(0, 0xFFFF)
u16 = st.integers(0, 0xFFFF)


def their_request(frame):
    used, pdu = SERVER.handleFrame(frame, 0, 0)
    assert used == len(frame) and pdu is not None, frame.hex()
    return pdu


@given(st.binary(max_size=300))
def test_crc_equals_pymodbus(data):
    # pymodbus returns the CRC byte-swapped (wire order as a big-endian int)
    crc = crc16_modbus(data)
    assert ((crc & 0xFF) << 8 | crc >> 8) == FramerRTU.compute_CRC(data)


@given(slaves, st.data(), st.sampled_from([mb.read_input_registers, mb.read_holding_registers]))
def test_read_requests_decode_in_pymodbus(slave, data, build):
    count = data.draw(st.integers(1, 125))
    address = data.draw(st.integers(0, 0x10000 - count))
    req = build(slave, address, count)
    pdu = their_request(req.adu)
    assert (pdu.dev_id, pdu.function_code, pdu.address, pdu.count) == (
        slave, req.function, address, count)
    cls = pm.ReadInputRegistersRequest if req.function == 4 else pm.ReadHoldingRegistersRequest
    assert req.adu == CLIENT.buildFrame(cls(address=address, count=count, dev_id=slave))


@given(slaves, addresses, u16)
def test_write_single_register_decodes_in_pymodbus(slave, address, value):
    pdu = their_request(mb.write_single_register(slave, address, value).adu)
    assert (pdu.dev_id, pdu.function_code, pdu.address, pdu.registers) == (slave, 6, address, [value])


@given(slaves, st.lists(u16, min_size=1, max_size=123), st.data())
def test_write_multiple_registers_decodes_in_pymodbus(slave, values, data):
    address = data.draw(st.integers(0, 0x10000 - len(values)))
    pdu = their_request(mb.write_multiple_registers(slave, address, values).adu)
    assert (pdu.dev_id, pdu.function_code, pdu.address, pdu.registers) == (slave, 16, address, values)


def _read_reply(slave, address, values, fc):
    cls = pm.ReadInputRegistersResponse if fc == 4 else pm.ReadHoldingRegistersResponse
    return CLIENT.buildFrame(cls(dev_id=slave, address=address, registers=values))


@settings(max_examples=300)
@given(slaves, st.lists(u16, min_size=1, max_size=125), st.sampled_from([3, 4]), st.data())
def test_pymodbus_read_reply_parses_whole_split_and_byte_by_byte(slave, values, fc, data):
    build = mb.read_input_registers if fc == 4 else mb.read_holding_registers
    req = build(slave, 0, len(values))
    frame = _read_reply(slave, 0, values, fc)
    assert len(frame) == req.response_length
    assert mb.ResponseParser(req).feed(frame).registers == values
    cuts = sorted(data.draw(st.lists(st.integers(0, len(frame)), max_size=4)))
    p = mb.ResponseParser(req)
    prev, got = 0, None
    for cut in cuts + [len(frame)]:
        got = got or p.feed(frame[prev:cut])
        prev = cut
    assert got.registers == values
    p = mb.ResponseParser(req)
    results = [p.feed(frame[i:i + 1]) for i in range(len(frame))]
    assert results[:-1] == [None] * (len(frame) - 1)
    assert results[-1].registers == values


@settings(max_examples=300)
@given(slaves, st.lists(u16, min_size=1, max_size=20), st.binary(max_size=40))
def test_pymodbus_reply_behind_leading_garbage_is_found(slave, values, garbage):
    assume(slave not in garbage)  # a garbage byte equal to the slave id is covered by the dual test
    req = mb.read_input_registers(slave, 0, len(values))
    p = mb.ResponseParser(req)
    resp = p.feed(garbage + _read_reply(slave, 0, values, 4))
    assert resp.registers == values
    assert p.discarded == len(garbage)


@given(slaves, st.lists(u16, min_size=1, max_size=20), st.integers(0, 10 ** 6))
def test_pymodbus_reply_with_any_flipped_bit_is_not_accepted(slave, values, pick):
    req = mb.read_input_registers(slave, 0, len(values))
    frame = bytearray(_read_reply(slave, 0, values, 4))
    bit = pick % (len(frame) * 8)
    frame[bit // 8] ^= 1 << (bit % 8)
    resp = mb.ResponseParser(req).feed(bytes(frame))
    assert resp is None


@given(slaves, st.sampled_from([3, 4, 6, 16]), st.sampled_from([1, 2, 3, 4, 5, 6, 8, 10, 11]))
def test_pymodbus_exception_reply_gives_its_code(slave, fc, code):
    if fc in (3, 4):
        req = mb.Request(slave, fc, 0, 1)
    else:
        req = mb.Request(slave, fc, 0, 1, [0])
    resp = mb.ResponseParser(req).feed(CLIENT.buildFrame(ExceptionResponse(fc, code, slave)))
    assert (resp.ok, resp.function, resp.exception_code) == (False, fc, code)
    assert resp.exception_name == mb.EXCEPTION_NAMES[code]


@given(slaves, addresses, u16)
def test_pymodbus_write_single_reply_is_accepted(slave, address, value):
    req = mb.write_single_register(slave, address, value)
    frame = CLIENT.buildFrame(pm.WriteSingleRegisterResponse(dev_id=slave, address=address,
                                                             registers=[value]))
    assert mb.ResponseParser(req).feed(frame).ok


@given(slaves, st.integers(1, 123), st.data())
def test_pymodbus_write_multiple_reply_is_accepted(slave, count, data):
    address = data.draw(st.integers(0, 0x10000 - count))
    req = mb.write_multiple_registers(slave, address, [0] * count)
    frame = CLIENT.buildFrame(pm.WriteMultipleRegistersResponse(dev_id=slave, address=address,
                                                                count=count))
    assert mb.ResponseParser(req).feed(frame).ok


@given(st.integers(0, 0xFFFFFFFF), st.integers(-6, 6))
def test_float32_scaling_equals_exact_rounding_of_pymodbus_float(bits, scale):
    regs = [bits >> 16, bits & 0xFFFF]
    theirs = ModbusClientMixin.convert_from_registers(regs, ModbusClientMixin.DATATYPE.FLOAT32)
    ours = sdm.f32_to_scaled_int(bits, scale)
    if theirs != theirs or theirs in (float("inf"), float("-inf")):
        assert ours is None
    else:
        assert theirs == struct.unpack(">f", struct.pack(">I", bits))[0]
        assert ours == round(Fraction(theirs) * Fraction(10) ** scale)


@given(st.lists(st.tuples(st.integers(0, 400), st.sampled_from(sorted(sdm.WIDTH))),
                max_size=25), st.integers(2, 30))
def test_planner_uses_the_fewest_reads_and_covers_every_entry(raw, max_count):
    entries, used = [], set()
    for address, kind in raw:
        regs = set(range(address, address + sdm.WIDTH[kind]))
        if not regs & used:
            used |= regs
            entries.append(("r%d" % address, address, kind, 0, ""))
    plan = sdm.plan_reads(entries, max_count)
    covered = []
    for start, count, group in plan:
        assert 1 <= count <= max_count
        for e in group:
            assert start <= e[1] and e[1] + sdm.WIDTH[e[2]] <= start + count
        covered += group
    assert sorted(covered) == sorted(entries)
    # independent minimum by dynamic programming over the address-sorted entries
    es = sorted(entries, key=lambda e: e[1])
    best = [0] + [10 ** 9] * len(es)
    for j in range(1, len(es) + 1):
        for i in range(j):  # one read holding es[i:j]
            if max(e[1] + sdm.WIDTH[e[2]] for e in es[i:j]) - es[i][1] <= max_count:
                best[j] = min(best[j], best[i] + 1)
    assert len(plan) == best[len(es)]
