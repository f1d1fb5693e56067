"""The plugin end to end: an inner pytest run of a small HIL suite, then its reports.

The inner suite lives in ``<tmp>/hil_tests/`` so the plugin treats the run as
a HIL run (JUnit XML by default); it has one passing, one failing and one
multi-DUT test.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from hil_tests.dut import ROOT
from hil_tests.reports import Results

INNER = '''
def test_passes(dut):
    assert dut.command("balance")["relay"] == "closed"


def test_fails_on_purpose(dut):
    dut.command("info")
    assert dut.command("balance")["balance_paise"] == "1", "fails on purpose"


def test_pool(dut_pool):
    ids = sorted(d.command("info")["meter"] for d in dut_pool)
    assert ids == ["UJ-HIL-%04d" % i for i in range(1, len(dut_pool) + 1)]
'''


def inner_run(tmp_path, *options):
    suite = tmp_path / "hil_tests"
    suite.mkdir(exist_ok=True)
    (suite / "test_inner.py").write_text(INNER)
    reports = tmp_path / "reports"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "hil_tests.plugin",
                           "-p", "no:cacheprovider", "-ra", "--hil-reports", str(reports),
                           "hil_tests", *options], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    return proc, reports


def cases(junit_path):
    root = ET.parse(junit_path).getroot()
    return {c.get("name"): c for c in root.iter("testcase")}


def test_unix_run_writes_junit_and_a_summary_with_the_failures_logs(tmp_path):
    proc, reports = inner_run(tmp_path, "--count", "3")
    assert proc.returncode == 1, proc.stdout  # one test fails on purpose
    junit = cases(reports / "junit.xml")
    assert junit["test_fails_on_purpose"].find("failure") is not None
    assert junit["test_passes"].find("failure") is None
    assert junit["test_pool"].find("failure") is None
    md = (reports / "summary.md").read_text()
    assert "# HIL run: failed 1, passed 2" in md
    assert "| `hil_tests/test_inner.py::test_passes` | PASSED |" in md
    assert "## FAILED: hil_tests/test_inner.py::test_fails_on_purpose" in md
    failure = md.split("## FAILED")[1]
    assert "fails on purpose" in failure
    assert "### console.log" in failure and ">>>] info" in failure  # the failed test's log
    html = (reports / "summary.html").read_text()
    assert 'class="failed"' in html and "fails on purpose" in html
    pool_logs = sorted(os.listdir(reports / "test_inner.test_pool"))
    assert [n for n in pool_logs if n.endswith("console.log")] == [
        "dut1.console.log", "dut2.console.log", "dut3.console.log"]


def test_esp32_without_a_port_skips_with_the_reason_everywhere(tmp_path):
    proc, reports = inner_run(tmp_path, "--board", "esp32")
    assert proc.returncode == 0, proc.stdout
    assert "3 skipped" in proc.stdout
    assert "SKIPPED" in proc.stdout and "no hardware attached" in proc.stdout  # -ra
    for case in cases(reports / "junit.xml").values():
        assert "no hardware attached" in case.find("skipped").get("message")
    md = (reports / "summary.md").read_text()
    assert "# HIL run: skipped 3" in md
    assert "| SKIPPED |" in md and "no hardware attached: --board esp32 needs --port" in md


def test_a_setup_failure_counts_as_an_error_and_keeps_its_text():
    results = Results()
    results.add("hil_tests/t.py::test_a", "setup", "failed", 0.5, "boot timed out")
    results.add("hil_tests/t.py::test_a", "teardown", "passed", 0.25)
    r = results.tests["hil_tests/t.py::test_a"]
    assert (r.outcome, r.message, r.duration_s) == ("error", "boot timed out", 0.75)
    assert results.counts()["error"] == 1
