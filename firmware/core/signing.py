"""Downlink signing: the head-end's half of ``firmware.core.auth``.

A meter only checks commands (``auth.DownlinkGuard``) and never loads this
module; the head-end, the simulator and tests import these names from
``firmware.core.auth`` as before (loaded on first use there).  The signed bytes
are ``auth.canonical``'s and the MAC is ``auth.hmac_sha256``'s: one definition
for both ends.

>>> cmd = make_topup(b"k" * 32, "M-0001", 1, 1795740000, "T-42", 50000)
>>> auth.DownlinkGuard("M-0001").check(b"k" * 32, cmd, 1795737600) == auth.OK
True
"""
import binascii

from firmware.core import auth


def sign(key: bytes, kind: str, meter_id: str, counter: int, expires_at: int, fields) -> str:
    """MAC of a command as 64 lower-case hex chars.

    >>> len(sign(b"k", "relay", "M-0001", 1, 0, ["C-1"]))
    64
    """
    mac = auth.hmac_sha256(key, auth.canonical(kind, meter_id, counter, expires_at, fields))
    return binascii.hexlify(mac).decode()


def make_command(key: bytes, kind: str, meter_id: str, counter: int, expires_at: int, fields) -> dict:
    """A signed command dict; its id is ``fields[0]``.

    >>> make_command(b"k", "relay_close", "M-0001", 3, 1795740000, ["C-9"])["id"]
    'C-9'
    """
    if not fields:
        raise auth.AuthError("fields[0] must be the command id")
    fields = list(fields)
    return {
        "kind": kind, "meter_id": meter_id, "counter": counter,
        "expires_at": expires_at, "id": fields[0], "fields": fields,
        "mac": sign(key, kind, meter_id, counter, expires_at, fields),
    }


def make_topup(key: bytes, meter_id: str, counter: int, expires_at: int,
               topup_id: str, amount_paise: int) -> dict:
    """A signed top-up command: kind "topup", fields [topup_id, amount_paise].

    >>> make_topup(b"k", "M-0001", 1, 1795740000, "T-42", 50000)["fields"]
    ['T-42', 50000]
    """
    if not auth._topup_fields_ok([topup_id, amount_paise]):
        raise auth.AuthError("top-up needs a str id and an int amount_paise > 0")
    return make_command(key, auth.TOPUP, meter_id, counter, expires_at, [topup_id, amount_paise])
