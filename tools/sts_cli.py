"""urja-sts: decode, vend and derive keys for STS (IEC 62055-41) 20-digit tokens.

Uses the same codec the meter runs (firmware/sts) and the head-end's DKGA02.
"""
import argparse
import json
import sys

from firmware.sts import codec
from firmware.sts.codec import PRODUCTION, SAMPLE

EPILOG = """examples:
  urja-sts decode 2905-4347-1393-0985-1356 --key 0ABC12DEF3456789
  urja-sts decode 29054347139309851356 --key 0ABC12DEF3456789 --json
  urja-sts vend --key 0ABC12DEF3456789 --class 0 --subclass 0 --tid 1698595 --amount 25.6 --rnd 11
  urja-sts vend --key 0ABC12DEF3456789 --class 2 --subclass 0 --tid 1698595 --amount 10
  urja-sts derive-key --vending-key abababababababab --sgc 123456 --tariff-index 1 \\
      --krn 1 --pan 600727000000000009

amount: class 0 in kWh (electricity) or m3 (water, gas), 0.1 resolution, rounded up;
class 2 the raw 16-bit value (watts for subclass 0 set-maximum-power-limit).
exit codes: 0 ok, 1 token does not decode (bad CRC or wrong key), 2 bad input."""

UNIT_OF_CREDIT = {codec.ELECTRICITY: "kWh", codec.WATER: "m3", codec.GAS: "m3"}


class InputError(ValueError):
    pass


def parse_hex_key(text, what="--key"):
    s = text.strip().lower()
    if s.startswith("0x"):
        s = s[2:]
    if len(s) != 16 or any(c not in "0123456789abcdef" for c in s):
        raise InputError("%s must be 16 hex digits (64 bits), got %r" % (what, text))
    return int(s, 16)


def tenths_from_text(text):
    """'25.6' -> 256, '0.05' -> 1 (rounded up), without floats."""
    s = text.strip()
    whole, _, frac = s.partition(".")
    if not (whole or frac) or not (whole or "0").isdigit() or (frac and not frac.isdigit()):
        raise InputError("--amount must be a non-negative decimal number, got %r" % text)
    tenths = int(whole or "0") * 10 + int((frac + "0")[0])
    if frac[1:].strip("0"):
        tenths += 1  # round up in the consumer's favour
    return tenths


def _amount(tok):
    """(amount, unit) in the token's own unit."""
    if tok.cls == codec.CLASS_CREDIT:
        t = tok.units()
        return float("%d.%d" % (t // 10, t % 10)), UNIT_OF_CREDIT.get(tok.subclass, "0.1 unit")
    if tok.cls == codec.CLASS_MANAGEMENT and tok.subclass == codec.SET_MAX_POWER_LIMIT:
        return tok.value, "W"
    return tok.value, ""


def cmd_decode(args):
    key = parse_hex_key(args.key)
    try:
        tok = codec.decode(args.token, key, SAMPLE if args.sample_tables else PRODUCTION)
    except codec.TokenFormatError as err:
        raise InputError(str(err))
    amount, unit = _amount(tok)
    out = {"class": tok.cls, "subclass": tok.subclass, "kind": tok.kind(), "rnd": tok.rnd,
           "tid": tok.tid, "amount": amount, "unit": unit, "crc_ok": tok.crc_ok}
    change = tok.key_change()
    if change:
        out["key_change"] = change
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        for name in ("class", "subclass", "kind", "rnd", "tid", "amount", "unit", "crc_ok"):
            print("%-9s %s" % (name, out[name]))
        if change:
            print("%-9s %s" % ("key_change", change))
    return 0 if tok.crc_ok else 1


def cmd_vend(args):
    key = parse_hex_key(args.key)
    tables = SAMPLE if args.sample_tables else PRODUCTION
    if not 0 <= args.tid <= 0xFFFFFF:
        raise InputError("--tid must be 0..16777215 (24 bits)")
    if not 0 <= args.rnd <= 15:
        raise InputError("--rnd must be 0..15")
    if not 0 <= args.subclass <= 15:
        raise InputError("--subclass must be 0..15")
    try:
        if args.cls == codec.CLASS_CREDIT:
            text = codec.encode_credit(args.subclass, args.rnd, args.tid,
                                       tenths_from_text(args.amount), key, tables)
        elif args.cls == codec.CLASS_MANAGEMENT:
            if not args.amount.isdigit() or int(args.amount) > 0xFFFF:
                raise InputError("class 2 --amount is an integer 0..65535, got %r" % args.amount)
            text = codec.encode_management(args.subclass, args.rnd, args.tid, int(args.amount),
                                           key, tables)
        else:
            raise InputError("--class must be 0 (credit) or 2 (management)")
    except codec.AmountError as err:
        raise InputError(str(err))
    print(text)
    return 0


def cmd_derive_key(args):
    from headend.sts import dkga02  # needs pycryptodome: only for this command

    vk = parse_hex_key(args.vending_key, "--vending-key").to_bytes(8, "big")
    try:
        key = dkga02.derive_key(vk, args.sgc, args.tariff_index, args.krn, args.pan, args.key_type)
    except dkga02.KeyDerivationError as err:
        raise InputError(str(err))
    print("%016x" % key)
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        prog="urja-sts", description="STS (IEC 62055-41) 20-digit tokens: decode, vend, derive keys.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("decode", help="decrypt and show a token's fields",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("token", help="20 digits (spaces or dashes allowed)")
    d.add_argument("--key", required=True, help="decoder key, 16 hex digits")
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")
    d.add_argument("--sample-tables", action="store_true",
                   help="use the standard's sample tables (worked example), not production")
    d.set_defaults(run=cmd_decode)

    v = sub.add_parser("vend", help="make a token from its fields",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--key", required=True, help="decoder key, 16 hex digits")
    v.add_argument("--class", dest="cls", type=int, required=True, help="0 credit, 2 management")
    v.add_argument("--subclass", type=int, required=True,
                   help="class 0: 0 electricity, 1 water, 2 gas; class 2: 0 power limit, "
                        "1 clear credit, 5 clear tamper")
    v.add_argument("--tid", type=int, required=True, help="token identifier (minutes since base date)")
    v.add_argument("--amount", required=True, help="kWh / m3 (class 0) or raw value (class 2)")
    v.add_argument("--rnd", type=int, default=0, help="random nibble 0..15 (default 0)")
    v.add_argument("--sample-tables", action="store_true", help="the standard's sample tables")
    v.set_defaults(run=cmd_vend)

    k = sub.add_parser("derive-key", help="DKGA02 decoder key from a vending key",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--vending-key", required=True, help="vending key, 16 hex digits")
    k.add_argument("--sgc", type=int, required=True, help="supply group code (6 digits)")
    k.add_argument("--tariff-index", type=int, required=True, help="tariff index 0..99")
    k.add_argument("--krn", type=int, required=True, help="key revision number 1..9")
    k.add_argument("--pan", required=True, help="meter PAN, 18 digits (or 17 without check digit)")
    k.add_argument("--key-type", type=int, default=2, help="key type 0..3 (default 2)")
    k.set_defaults(run=cmd_derive_key)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        parser.exit(2, "urja-sts: error: %s\n" % err)


if __name__ == "__main__":
    sys.exit(main())
