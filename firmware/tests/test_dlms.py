"""DLMS/COSEM APDUs, A-XDR data, register scaling and a whole client session.

Pinned bytes come from implementations other than ours:
- [GURUX] GXDLMSDirector trace, https://pastebin.com/iKKsDimZ (AARQ, AARE, GET)
- [GURUX-LLS] GXDLMSDirector trace with a low-level-security AARQ,
  https://pastebin.com/CJw7HhSs (that meter uses short names: context id 2)
- [AMS] A real Austrian meter's push frame, annotated by the amsreader project:
  https://github.com/UtilitechAS/amsreader-firmware frames/austria.raw
  (registers as value + structure{scaler, unit}, and a 12-byte date-time)
"""
from firmware.protocol import dlms, dlms_client, dlms_data, dlms_objects, hdlc
from firmware.protocol.dlms_client import DlmsClient
from firmware.protocol.dlms_data import DateTime, decode, decode_datetime
from firmware.protocol.dlms_peer import MeterPeer
from firmware.tests.check import eq, raises

H = bytes.fromhex

GURUX_AARQ_APDU = H("601DA109060760857405080101BE10040E01000000065F1F0400001E1DFFFF")
GURUX_AARE_APDU = H("61820029A109060760857405080101A203020100A305A103020100"
                    "BE10040E0800065F1F040000101D03EF0007")
# [GURUX-LLS] with its application-context id changed from 2 (SN) to 1 (LN), the only
# byte in which our logical-name AARQ differs; password "00000000".
GURUX_LLS_AARQ_APDU = H("6036A109060760857405080101" "8A0207808B0760857405080201"
                        "AC0A80083030303030303030" "BE10040E01000000065F1F04001C0320FFFF")

# [AMS] register entries: OBIS, value, scaler_unit
AMS_ENERGY = H("0906 0100010800FF 0600433D0A 02020F00161E".replace(" ", ""))
AMS_VOLTAGE = H("0906 0100200700FF 120934 02020FFF1623".replace(" ", ""))
AMS_CURRENT = H("0906 01001F0700FF 120063 02020FFE1621".replace(" ", ""))
AMS_POWER = H("0906 0100010700FF 06000001FE 02020F00161B".replace(" ", ""))
AMS_PF = H("0906 01000D0700FF 1003CF 02020FFD16FF".replace(" ", ""))
AMS_CLOCK = H("07E50C1B010E002D00FFC402")


def _values(raw):
    """Decode consecutive Data values (the [AMS] push list is a flat sequence)."""
    out, pos = [], 0
    while pos < len(raw):
        v, pos = dlms_data.decode_at(raw, pos)
        out.append(v)
    return out


# -- AARQ / AARE -----------------------------------------------------------------------

def test_aarq_without_security_matches_gurux():
    eq(dlms.aarq(conformance=0x001E1D, max_pdu=0xFFFF), GURUX_AARQ_APDU)


def test_aarq_with_low_level_security_matches_gurux_layout():
    eq(dlms.aarq(b"00000000", conformance=0x1C0320, max_pdu=0xFFFF), GURUX_LLS_AARQ_APDU)


def test_default_conformance_asks_for_get_block_transfer_and_selective_access():
    # Blue Book bits 11 (block-transfer-with-get), 19 (get), 21 (selective-access):
    # 1 << 12 | 1 << 4 | 1 << 2 = 0x001014
    eq(dlms.DEFAULT_CONFORMANCE, 0x001014)


def test_accepted_aare_from_gurux_gives_negotiated_values():
    a = dlms.parse_aare(GURUX_AARE_APDU)
    eq((a.accepted, a.result, a.diagnostic, a.context), (True, 0, 0, 1))
    eq((a.conformance, a.max_pdu, a.dlms_version), (0x00101D, 0x03EF, 6))


def test_rejected_aare_reports_result_and_diagnostic():
    # result rejected-permanent (1), acse-service-user diagnostic authentication-failure (13)
    apdu = H("611FA109060760857405080101A203020101A305A10302010D" "BE0604040E010600")
    a = dlms.parse_aare(apdu)
    eq((a.accepted, a.result, a.diagnostic_source, a.diagnostic), (False, 1, 1, 13))
    eq(a.service_error, H("0E010600"))
    assert "authentication failure" in a.reason(), a.reason()


def test_aare_choosing_short_names_is_refused():
    sn = bytearray(GURUX_AARE_APDU)
    sn[14] = 2  # application context 2 = short-name referencing
    raises(dlms.DlmsError, dlms.parse_aare, bytes(sn))


def test_truncated_aare_is_an_error():
    raises(dlms.DlmsError, dlms.parse_aare, GURUX_AARE_APDU[:-5])
    raises(dlms.DlmsError, dlms.parse_aare, H("6000"))


# -- GET ---------------------------------------------------------------------------------

def test_get_request_matches_gurux():
    eq(dlms.get_request(15, H("0000280000FF"), 2), H("C001C1000F0000280000FF0200"))


def test_get_request_next_carries_the_block_number():
    # tag C0, type 2 (next), invoke-id-and-priority C1, block number 7 as 4 bytes
    eq(dlms.get_request_next(7), H("C002C100000007"))


def test_get_request_with_entry_selective_access():
    # 01 = access selection present; selector 2 (entry); structure of 4:
    # double-long-unsigned 1, double-long-unsigned 0, long-unsigned 1, long-unsigned 0
    got = dlms.get_request(7, dlms_objects.BLOCK_LOAD_PROFILE, 2, 3, dlms.entry_access(1))
    eq(got, H("C001C3 0007 0100630100FF 02 01 02 0204 0600000001 0600000000 120001 120000".replace(" ", "")))


def test_get_response_normal_data_and_error():
    # (kind, invoke id, data or Data-Access-Result, block number, last block)
    eq(dlms.parse_get_response(H("C401C1000600001234")), (dlms.RESP_DATA, 1, H("0600001234"), 0, True))
    eq(dlms.parse_get_response(H("C401C10104")), (dlms.RESP_ERROR, 1, dlms.DAR_OBJECT_UNDEFINED, 0, True))


def test_get_response_with_datablock():
    # C4 02 C1, last-block false, block 1, raw-data choice 0, octet string of 3 bytes
    eq(dlms.parse_get_response(H("C402C100000000010003010203")), (dlms.RESP_BLOCK, 1, H("010203"), 1, False))
    raises(dlms.DlmsError, dlms.parse_get_response, H("C402C10000000001000401020304FF"))


def test_exception_response_raises():
    err = raises(dlms.DlmsError, dlms.parse_get_response, H("D80102"))
    assert "exception" in str(err)




# -- A-XDR data ---------------------------------------------------------------------------

def test_integers_of_every_width_and_sign():
    cases = [
        ("0FFF", -1), ("1180", 128), ("10FFFE", -2), ("12FFFE", 65534),
        ("05FFFFFFFE", -2), ("06FFFFFFFE", 4294967294),
        ("14FFFFFFFFFFFFFFFE", -2), ("150000000100000000", 1 << 32), ("161E", 30),
    ]
    for hexdata, want in cases:
        eq(decode(H(hexdata)), want, hexdata)


def test_null_boolean_strings():
    eq(decode(H("00")), None)
    eq(decode(H("0301")), True)
    eq(decode(H("0300")), False)
    eq(decode(H("0903414243")), b"ABC")
    eq(decode(H("0A026869")), "hi")


def test_structure_is_a_tuple_and_array_a_list():
    eq(decode(H("02020F00161E")), (0, 30))  # scaler 0, unit Wh, from [AMS]
    eq(decode(H("0102 110111 02".replace(" ", ""))), [1, 2])
    eq(decode(H("0101 0202 0F FD 16 FF".replace(" ", ""))), [(-3, 255)])


def test_long_length_form():
    raw = bytes(range(128)) + bytes(range(72))  # 200 bytes: length 81 C8
    eq(decode(H("0981C8") + raw), raw)
    eq(dlms_data.encode_length(200), H("81C8"))
    eq(dlms_data.encode_length(0x0123), H("820123"))


def test_truncated_or_unknown_data_is_an_error():
    for bad in ("", "06000012", "0905414243", "0203 0F00".replace(" ", ""), "13", "02", "0F0100"):
        raises(dlms_data.DlmsDataError, decode, H(bad))


def test_deep_nesting_is_refused():
    raises(dlms_data.DlmsDataError, decode, H("0201" * 20 + "00"))


def test_date_time_from_a_real_meter():
    dt = decode_datetime(AMS_CLOCK)
    eq(dt.fields(), (2021, 12, 27, 1, 14, 0, 45, 0, -60, 2))
    # 14:00:45 local with deviation -60 min -> 13:00:45 UTC;
    # `date -u -d "2021-12-27 13:00:45" +%s` = 1640610045
    eq(dt.to_utc(), 1640610045)


def test_date_time_without_deviation_uses_the_default_offset():
    # 2026-11-27 12:30:00, deviation 0x8000; IST 19800 s -> 07:00 UTC
    # `date -u -d "2026-11-27 07:00:00" +%s` = 1795762800
    dt = decode_datetime(H("07EA0B1B050C1E00FF800000"))
    eq(dt.deviation, None)
    eq(dt.to_utc(19800), 1795762800)


def test_wildcard_date_time_cannot_become_seconds():
    dt = decode_datetime(H("FFFF0B1B050C1E00FF800000"))
    eq(dt.year, None)
    raises(dlms_data.DlmsDataError, dt.to_utc)


def test_date_time_encode_decode_round_trip():
    dt = DateTime(2026, 11, 27, 5, 12, 30, 0, None, -330, 0)
    eq(decode_datetime(dlms_data.encode_datetime(dt)), dt)
    eq(dlms_data.encode_datetime(dt), H("07EA0B1B050C1E00FFFEB600"))  # -330 = 0xFEB6


# -- registers, clock, profile -----------------------------------------------------------

def test_real_meter_registers_in_our_units():
    got = {}
    for raw, name in ((AMS_ENERGY, "energy_import_wh"), (AMS_VOLTAGE, "voltage_mv"),
                      (AMS_CURRENT, "current_ma"), (AMS_POWER, "active_power_w"),
                      (AMS_PF, "power_factor_milli")):
        ln, value, su = _values(raw)
        if name not in ("voltage_mv", "current_ma"):  # [AMS] is 3-phase: L1 is 32.7.0 / 31.7.0
            eq(ln, dlms_objects.QUANTITIES[name][0], name)
        got[name] = dlms_objects.register_value(value, su, name)
    # 0x00433D0A = 4406538 Wh (scaler 0); 0x0934 = 2356 * 10^-1 V = 235.6 V = 235600 mV;
    # 0x63 = 99 * 10^-2 A = 990 mA; 0x1FE = 510 W; 0x3CF = 975 * 10^-3 = 975 thousandths
    eq(got, {"energy_import_wh": 4406538, "voltage_mv": 235600, "current_ma": 990,
             "active_power_w": 510, "power_factor_milli": 975})


def test_register_table_has_the_is_15959_obis_codes_and_units():
    # (OBIS, accepted units, exponent of our unit); units are the Blue Book enumeration
    want = {
        "energy_import_wh": ("1.0.1.8.0.255", (30,), 0),  # Wh
        "voltage_mv": ("1.0.12.7.0.255", (35,), -3),  # V
        "current_ma": ("1.0.11.7.0.255", (33,), -3),  # A
        "active_power_w": ("1.0.1.7.0.255", (27,), 0),  # W
        "power_factor_milli": ("1.0.13.7.0.255", (255, 0), -3),  # count, or 0
        "frequency_mhz": ("1.0.14.7.0.255", (44,), -3),  # Hz
    }
    for name in want:
        text, units, exponent = want[name]
        eq(dlms_objects.register(name), (dlms_objects.obis(text), units, exponent), name)
        eq(dlms_objects.QUANTITIES[name], dlms_objects.register(name), name)
    eq(sorted(dlms_objects.QUANTITIES), sorted(want))
    raises(KeyError, dlms_objects.register, "reactive_power_var")


def test_scaler_three_means_kwh_and_negative_scalers_truncate():
    eq(dlms_objects.register_value(56, (3, 30), "energy_import_wh"), 56000)
    eq(dlms_objects.register_value(12345, (-1, 30), "energy_import_wh"), 1234)  # 1234.5 Wh
    eq(dlms_objects.register_value(49987, (-3, 44), "frequency_mhz"), 49987)  # 49.987 Hz
    eq(dlms_objects.to_units(-15, -1, 0), -1)  # toward zero, not -2


def test_wrong_unit_or_float_register_is_refused():
    raises(dlms.DlmsError, dlms_objects.register_value, 100, (0, 32), "energy_import_wh")  # varh
    raises(dlms.DlmsError, dlms_objects.register_value, 1.5, (0, 30), "energy_import_wh")
    raises(dlms.DlmsError, dlms_objects.register_value, 1, (0,), "energy_import_wh")


def test_obis_text_round_trip():
    eq(dlms_objects.obis("1.0.99.1.0.255"), H("0100630100FF"))
    eq(dlms_objects.obis_text(H("0000010000FF")), "0.0.1.0.0.255")


CAPTURE_OBJECTS = H(
    "0103"
    "0204 120008 09060000010000FF 0F02 120000"  # clock
    "0204 120003 09060100010800FF 0F02 120000"  # energy (Wh per interval register)
    "0204 120003 09060100200700FF 0F02 120000".replace(" ", ""))  # voltage


def _profile_entry(day, hour, minute, wh, dv):
    dt = DateTime(2026, 11, day, None, hour, minute, 0, None, None, None)
    return (dlms_data.enc_structure([dlms_data.enc_datetime_octets(dt),
                                     dlms_data.enc_int(dlms_data.DOUBLE_LONG_UNSIGNED, wh),
                                     dlms_data.enc_int(dlms_data.LONG_UNSIGNED, dv)]))


def test_block_load_profile_rows():
    columns = dlms_objects.capture_objects(decode(CAPTURE_OBJECTS))
    eq([c.is_clock for c in columns], [True, False, False])
    buffer = decode(dlms_data.enc_array([_profile_entry(27, 0, 30, 125, 2301),
                                         _profile_entry(27, 1, 0, 98, 2296)]))
    rows = dlms_objects.profile_rows(buffer, columns, [None, (0, 0), (-1, -3)])
    # 2026-11-27 00:30 IST = 2026-11-26 19:00 UTC = 1795737600 - 5 h = 1795719600
    eq(rows, [[1795719600, 125, 230100], [1795719600 + 1800, 98, 229600]])


def test_profile_entry_with_wrong_width_is_refused():
    columns = dlms_objects.capture_objects(decode(CAPTURE_OBJECTS))
    raises(dlms.DlmsError, dlms_objects.profile_rows, [(1, 2)], columns)


# -- whole session against the meter peer --------------------------------------------------

def _meter(**kw):
    clock = dlms_data.enc_datetime_octets(DateTime(2026, 11, 27, 5, 12, 30, 0, 0, -330, 0))
    entries = [_profile_entry(27, h, m, 100 + h, 2300) for h in range(6) for m in (0, 30)]
    objects = {
        (8, dlms_objects.CLOCK, 2): clock,
        (3, dlms_objects.ENERGY_IMPORT, 2): dlms_data.enc_int(dlms_data.DOUBLE_LONG_UNSIGNED, 1234567),
        (3, dlms_objects.ENERGY_IMPORT, 3): H("02020F03161E"),  # scaler 3 -> kWh
        (7, dlms_objects.BLOCK_LOAD_PROFILE, 3): CAPTURE_OBJECTS,
        (7, dlms_objects.BLOCK_LOAD_PROFILE, 2): dlms_data.enc_array(entries),
    }
    return MeterPeer(objects, server_physical=17, **kw)


def _exchange(client, meter, request, max_rounds=50):
    """Pass bytes both ways until the client reports an event (kind, value)."""
    tx = request
    for _ in range(max_rounds):
        rx = meter.feed(tx)
        tx, event = client.feed(rx)
        if event is not None:
            return event
        if not tx:
            raise AssertionError("exchange stalled")
    raise AssertionError("no event after %d rounds" % max_rounds)


def test_session_reads_clock_energy_and_profile_then_disconnects():
    meter = _meter(max_info=64, block_size=100)
    c = DlmsClient(address=17)
    eq(_exchange(c, meter, c.connect())[0], dlms_client.EV_LINKED)
    eq(c.link.max_payload, 64)
    ev = _exchange(c, meter, c.associate())
    eq(ev[0], dlms_client.EV_ASSOCIATED)
    eq(ev[1].max_pdu, 512)
    ev = _exchange(c, meter, c.get(8, dlms_objects.CLOCK, 2))
    eq(dlms_objects.clock_utc(ev[1]), 1795762800)  # 12:30 IST
    value = _exchange(c, meter, c.get(3, dlms_objects.ENERGY_IMPORT, 2))[1]
    su = _exchange(c, meter, c.get(3, dlms_objects.ENERGY_IMPORT, 3))[1]
    eq(dlms_objects.register_value(value, su, "energy_import_wh"), 1234567000)
    columns = dlms_objects.capture_objects(
        _exchange(c, meter, c.get(7, dlms_objects.BLOCK_LOAD_PROFILE, 3))[1])
    buffer = _exchange(c, meter, c.get(7, dlms_objects.BLOCK_LOAD_PROFILE, 2))[1]
    rows = dlms_objects.profile_rows(buffer, columns)
    eq(len(rows), 12)
    eq(rows[0][:2], [1795719600 - 1800, 100])  # 00:00 IST 27 Nov
    eq(rows[11][:2], [1795719600 + 10 * 1800, 105])  # 05:30 IST
    # 12 entries of 24 bytes (02 03, 09 0C + 12, 06 + 4, 12 + 2) + 01 0C = 290 bytes:
    # three blocks of <= 100 bytes, so the client must ask GET-next twice
    eq(len([a for a in meter.log if a[:2] == b"\xc0\x02"]), 2)
    eq(_exchange(c, meter, c.disconnect())[0], dlms_client.EV_CLOSED)
    eq(c.state, dlms_client.CLOSED)


def test_missing_object_is_an_access_error_and_the_session_goes_on():
    meter = _meter()
    c = DlmsClient(address=17)
    _exchange(c, meter, c.connect())
    _exchange(c, meter, c.associate())
    ev = _exchange(c, meter, c.get(3, dlms_objects.FREQUENCY, 2))
    eq((ev[0], ev[1]), (dlms_client.EV_ACCESS_ERROR, dlms.DAR_OBJECT_UNDEFINED))
    eq(c.state, dlms_client.READY)
    eq(_exchange(c, meter, c.get(3, dlms_objects.ENERGY_IMPORT, 2))[1], 1234567)


def test_low_level_security_password_is_checked_by_the_meter():
    meter = _meter(password=b"12345678")
    c = DlmsClient(address=17, password=b"wrong!!!")
    _exchange(c, meter, c.connect())
    ev = _exchange(c, meter, c.associate())
    eq(ev[0], dlms_client.EV_REJECTED)
    eq((ev[1].result, ev[1].diagnostic), (dlms.REJECTED_PERMANENT, dlms.DIAG_AUTHENTICATION_FAILURE))
    eq(c.state, dlms_client.LINKED)
    c2 = DlmsClient(address=17, password=b"12345678")
    _exchange(c2, meter, c2.connect())
    eq(_exchange(c2, meter, c2.associate())[0], dlms_client.EV_ASSOCIATED)


def test_session_survives_bytes_arriving_one_at_a_time():
    meter = _meter(max_info=64, block_size=100)
    c = DlmsClient(address=17)
    for request in (c.connect, c.associate):
        tx = request()
        event = None
        while event is None:
            rx = meter.feed(tx)
            tx = b""
            for i in range(len(rx)):
                out, ev = c.feed(rx[i:i + 1])
                tx += out
                event = ev or event
    eq(c.state, dlms_client.READY)


def _from_meter(c, apdu):
    """An I-frame from the meter carrying ``apdu``, in sequence for client ``c``."""
    return hdlc.encode_frame(c.link.client, c.link.server, hdlc.i_control(c.link.vr, c.link.vs),
                             hdlc.LLC_RESPONSE + apdu)


def _reading_client(**kw):
    c = DlmsClient(address=17, **kw)
    meter = _meter()
    _exchange(c, meter, c.connect())
    _exchange(c, meter, c.associate())
    c.get(7, dlms_objects.BLOCK_LOAD_PROFILE, 2)
    return c


def test_blocks_out_of_order_or_too_large_are_refused():
    # GET.response-with-datablock: C4 02, invoke id, last-block, block number (4 bytes),
    # raw-data choice 0, octet string
    c = _reading_client()
    err = raises(dlms.DlmsError, c.feed, _from_meter(c, H("C402C1 00 00000002 00 01 01".replace(" ", ""))))
    assert "block 2 received, expected 1" in str(err), err
    c = _reading_client(max_bytes=4)
    out, ev = c.feed(_from_meter(c, H("C402C1 00 00000001 00 03 010203".replace(" ", ""))))
    eq(ev, None)
    (f,) = hdlc.FrameParser().feed(out)
    eq(f.info, hdlc.LLC_REQUEST + dlms.get_request_next(1))  # GET-next for block 2
    err = raises(dlms.DlmsError, c.feed, _from_meter(c, H("C402C1 01 00000002 00 02 0405".replace(" ", ""))))
    assert "larger than 4 bytes" in str(err), err


def test_illegal_calls_raise_state_errors():
    c = DlmsClient()
    raises(dlms_client.DlmsStateError, c.get, 3, dlms_objects.ENERGY_IMPORT, 2)
    raises(dlms_client.DlmsStateError, c.associate)
    raises(dlms_client.DlmsStateError, c.disconnect)
    c.connect()
    raises(dlms_client.DlmsStateError, c.connect)


def test_disc_answered_with_dm_also_closes():
    c = DlmsClient(address=17)
    c.connect()
    c.disconnect()
    dm = hdlc.encode_frame(c.link.client, c.link.server, hdlc.DM)
    out, ev = c.feed(dm)
    eq((out, ev[0], c.state), (b"", dlms_client.EV_CLOSED, dlms_client.CLOSED))
