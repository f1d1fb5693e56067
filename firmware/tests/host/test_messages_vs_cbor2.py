"""Our message bodies read back by an independent CBOR implementation (cbor2)."""
import cbor2

from firmware.protocol import messages as msg

T = 1795737600


def test_cbor2_reads_our_reading_message_exactly():
    fields = {"iv": 900, "u": "Wh", "cum": 2 ** 40, "r": [[T, 250, None, 1200, 0, 900]]}
    body = msg.encode_uplink("reading", "UJ-1", 2 ** 33, T, fields)
    assert cbor2.loads(body) == dict(v=1, m="UJ-1", s=2 ** 33, t=T, **fields)


def test_cbor2_encoded_uplink_is_accepted():
    body = cbor2.dumps({"v": 1, "m": "UJ-9", "s": 5, "t": T, "k": "monthly", "key": 24322,
                        "at": T, "cum": 10, "bal": -3, "md": 4200})
    got = msg.decode_uplink("urja/v1/UJ-9/up/snapshot", body)
    assert got["md"] == 4200 and got["bal"] == -3
