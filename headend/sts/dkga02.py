"""DKGA02: derive a meter's 64-bit decoder key from a vending key (IEC 62055-41).

    PANBlock     = 16 digits: the PAN (IIN + IAIN) without its first digit and
                   without its final check digit, read as hex nibbles
    CONTROLBlock = key type (1) | SGC (6) | tariff index (2) | KRN (1) | "FFFFFF"
    data         = PANBlock XOR CONTROLBlock
    decoder key  = DES_encrypt(vending key, data) XOR data XOR vending key

DES lives only here, on the head-end: the meter never holds the vending key.
Checked digit for digit against the STS 531-1-0 compliance vectors carried by
NectarAPI tokens-service (see headend/tests/test_sts_vending.py).

>>> hex(derive_key(bytes.fromhex("abababababababab"), 123456, 1, 1, "600727000000000009"))
'0xe653341f9d5bf36f'
"""
from Crypto.Cipher import DES


class KeyDerivationError(ValueError):
    """An input outside what DKGA02 accepts (PAN length, SGC digits, ...)."""


def pan_block(pan):
    """16-digit PAN block from an 18-digit meter PAN (or 17 digits: IIN + IAIN, no check digit)."""
    digits = str(pan).replace(" ", "").replace("-", "")
    if not digits.isdigit() or len(digits) not in (17, 18):
        raise KeyDerivationError(
            "PAN must be 17 digits (IIN+IAIN) or 18 digits (with check digit), got %r" % pan)
    return bytes.fromhex(digits[1:17])


def control_block(key_type, sgc, tariff_index, krn):
    """8-byte control block: KT | SGC | TI | KRN | FFFFFF as hex nibbles."""
    if not 0 <= key_type <= 3:
        raise KeyDerivationError("key type must be 0..3")
    if not 0 <= sgc <= 999999:
        raise KeyDerivationError("supply group code must be 6 digits")
    if not 0 <= tariff_index <= 99:
        raise KeyDerivationError("tariff index must be 2 digits")
    if not 1 <= krn <= 9:
        raise KeyDerivationError("key revision number must be 1..9")
    return bytes.fromhex("%d%06d%02d%dFFFFFF" % (key_type, sgc, tariff_index, krn))


def derive_key(vending_key, sgc, tariff_index, krn, pan, key_type=2):
    """The decoder key as a 64-bit int (hex of it is how technicians read keys)."""
    if len(vending_key) != 8:
        raise KeyDerivationError("vending key must be 8 bytes (16 hex digits)")
    cb = control_block(key_type, sgc, tariff_index, krn)
    data = bytes(a ^ b for a, b in zip(pan_block(pan), cb))
    enc = DES.new(bytes(vending_key), DES.MODE_ECB).encrypt(data)
    return int.from_bytes(bytes(e ^ d ^ v for e, d, v in zip(enc, data, vending_key)), "big")
