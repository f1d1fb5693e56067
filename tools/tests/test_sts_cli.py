"""urja-sts command line.  Token/key vectors from NectarAPI tokens-service
(NativeTokenDecoderTest.java and STSComplianceTests_STS_531_1_0_02_CTSA01.java,
commit ea572db9); see firmware/tests/test_sts_codec.py for the details."""
import json
import subprocess
import sys

import pytest

from tools.sts_cli import main, tenths_from_text

KEY = "0ABC12DEF3456789"


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_decode_json_gives_fields_in_tokens_unit(capsys):
    code, out, _ = run(capsys, "decode", "29054347139309851356", "--key", KEY, "--json")
    assert code == 0
    assert json.loads(out) == {"class": 0, "subclass": 0, "kind": "electricity", "rnd": 11,
                               "tid": 1698595, "amount": 25.6, "unit": "kWh", "crc_ok": True}


def test_decode_power_limit_in_watts(capsys):
    code, out, _ = run(capsys, "decode", "3619-0854-0300-3277-8902", "--key", KEY, "--json")
    data = json.loads(out)
    assert (code, data["class"], data["subclass"], data["amount"], data["unit"]) == (0, 2, 0, 10, "W")


def test_decode_with_wrong_key_exits_1_and_says_crc_false(capsys):
    code, out, _ = run(capsys, "decode", "29054347139309851356", "--key", "0ABC12DEF3456788")
    assert code == 1
    assert "crc_ok    False" in out


def test_vend_matches_published_token(capsys):
    code, out, _ = run(capsys, "vend", "--key", KEY, "--class", "0", "--subclass", "1",
                       "--tid", "1698595", "--amount", "35.6", "--rnd", "11")
    assert (code, out.strip()) == (0, "47445274807975686464")


def test_vend_management_token(capsys):
    code, out, _ = run(capsys, "vend", "--key", KEY, "--class", "2", "--subclass", "0",
                       "--tid", "1698595", "--amount", "10", "--rnd", "11")
    assert (code, out.strip()) == (0, "36190854030032778902")


def test_derive_key_matches_compliance_vector(capsys):
    code, out, _ = run(capsys, "derive-key", "--vending-key", "abababababababab", "--sgc", "123456",
                       "--tariff-index", "1", "--krn", "1", "--pan", "600727000000000009")
    # CTSA01: "6ff35b9d1f3453e6" in Nectar's least-significant-byte-first order
    assert (code, out.strip()) == (0, "e653341f9d5bf36f")


@pytest.mark.parametrize("argv,message", [
    (["decode", "1234", "--key", KEY], "20 digits"),
    (["decode", "2905434713930985135x", "--key", KEY], "only digits"),
    (["decode", "29054347139309851356", "--key", "XYZ"], "16 hex digits"),
    (["vend", "--key", KEY, "--class", "0", "--subclass", "0", "--tid", "1", "--amount", "abc"],
     "decimal"),
    (["vend", "--key", KEY, "--class", "0", "--subclass", "0", "--tid", "99999999", "--amount", "1"],
     "24 bits"),
    (["derive-key", "--vending-key", "abab", "--sgc", "1", "--tariff-index", "1", "--krn", "1",
      "--pan", "600727000000000009"], "16 hex digits"),
    (["derive-key", "--vending-key", "abababababababab", "--sgc", "1", "--tariff-index", "1",
      "--krn", "1", "--pan", "12"], "PAN"),
])
def test_bad_input_gives_clear_message_and_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_amount_text_is_read_without_floats_and_rounded_up():
    assert tenths_from_text("25.6") == 256
    assert tenths_from_text("0.05") == 1
    assert tenths_from_text("7") == 70
    assert tenths_from_text("16383") == 163830


def test_help_has_examples():
    proc = subprocess.run([sys.executable, "-m", "tools.sts_cli", "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert "urja-sts decode" in proc.stdout and "derive-key" in proc.stdout
