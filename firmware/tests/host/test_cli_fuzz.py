"""Hypothesis fuzz of the commissioning CLI: random lines never crash it, and errors change nothing.

State compared before/after every line: ``Meter.to_state()`` and the saved
configuration.  One documented exception: a rejected STS token adds exactly
one TOPUP_REJECTED event (the meter's audit trail), nothing else.
"""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.app.cli import LineReader
from firmware.core import events
from firmware.tests.test_cli import ELEC_25_6_KWH, Ctx

VERBS = ["help", "info", "read", "balance", "events", "topup", "relay", "config", "set",
         "selftest", "SET", "Topup", "", "reboot"]
WORDS = ["meter_id", "broker_host", "broker_port", "port", "wifi", "wifi_password",
         "pulse_constant", "interval_s", "tariff", "credit", "key", "key_hex", "sts_key",
         "energy_source", "900", "1800", "0", "-1", "65536", "1600", "sdm", "{}", "[]",
         '{"id": "X", "version": 2, "service": "electricity", "unit_size": 1000, "slabs": [[null, 5]]}',
         '{"low_credit_paise": -5}', "aa" * 16, "zz" * 16, ELEC_25_6_KWH, "1" * 20, "16", "3",
         "UJ 2", "a|b", "\u00e9t\u00e9", "\x00", "\t", "%", "="]

lines = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=120),
    st.builds(lambda v, ws: " ".join([v] + ws), st.sampled_from(VERBS),
              st.lists(st.sampled_from(WORDS), max_size=3)),
    st.builds(lambda n: b"set wifi " + b"x" * n, st.integers(0, 1200)),
)


def _state(ctx):
    return json.loads(json.dumps(ctx.meter.to_state())), json.dumps(ctx.config.values)


def _check_reply(reply):
    assert reply is None or isinstance(reply, str)
    if reply is not None:
        assert reply.startswith("OK") or reply.startswith("ERR "), reply
        assert "\n" not in reply and "\r" not in reply
        for ch in reply:
            assert 0x20 <= ord(ch) <= 0x7E, reply
        if reply.startswith("ERR "):
            int(reply.split()[1])  # the code is a number


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, min_size=1, max_size=6), st.booleans())
def test_random_lines_never_crash_and_errors_change_nothing(batch, commissioning):
    ctx = Ctx(commissioning=commissioning)
    from firmware.app.cli import Cli
    cli = Cli(ctx)
    for raw in batch:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        for line in LineReader().feed(data + b"\n"):
            before = _state(ctx)
            reply = cli.handle(line)
            _check_reply(reply)
            after = _state(ctx)
            if reply is None:
                assert after == before
            elif reply.startswith("ERR 7 "):  # rejected token: only the audit event
                ev_before, ev_after = before[0].pop("events"), after[0].pop("events")
                assert after == before
                assert ev_after["next_seq"] == ev_before["next_seq"] + 1
                assert ev_after["events"][-1][1] == events.TOPUP_REJECTED
            elif reply.startswith("ERR"):
                assert after == before, reply
            elif not (line or b"").lower().lstrip().startswith((b"set", b"topup")):
                assert after == before, reply  # reading commands are read-only
