"""The HIL pytest plugin: options, ``dut`` / ``dut_pool`` fixtures, per-test logs, reports.

Options::

    pytest hil_tests                                  # unix board: micropython processes
    pytest hil_tests --board esp32 --port /dev/ttyUSB0
    pytest hil_tests --count 8                        # dut_pool gets 8 DUTs

``--board esp32`` without ``--port`` SKIPS every DUT test with the reason
"no hardware attached" (shown in the terminal, the JUnit XML and the summary).
Logs of each test go to ``reports/hil/<test>/`` (``console.log``,
``control.log``, ``broker.log``); a run restricted to ``hil_tests`` writes
``reports/hil/junit.xml`` unless ``--junitxml`` says otherwise, and every run
with HIL tests writes ``reports/hil/summary.md`` and ``summary.html``.

A test picks its meter with the ``dut`` marker (unix board)::

    @pytest.mark.dut(settings=None)                   # factory state, not commissioned
    @pytest.mark.dut(time_factor=300, broker=True)    # the broker fixture, tapped to broker.log
    def test_x(dut):
        dut.expect_exact("urja: running tasks")
        assert dut.command("balance")["relay"] == "closed"

Registered by ``hil_tests/conftest.py``; another test folder imports the
fixtures it needs (``from hil_tests.plugin import dut``).
"""
import concurrent.futures
import os
import re
import shutil

import pytest

from hil_tests import dut as dut_mod
from hil_tests.reports import Results

ROOT = dut_mod.ROOT
DEFAULT_REPORTS = os.path.join(ROOT, "reports", "hil")
NO_HARDWARE = ("no hardware attached: --board esp32 needs --port (the board's serial port; "
               "`meterctl ports` lists them)")
RESULTS = pytest.StashKey()
LOG_DIRS = pytest.StashKey()
SUMMARY = pytest.StashKey()
_CONFIG = []  # pytest_runtest_logreport gets no config argument

__all__ = ["pytest_addoption", "pytest_configure", "pytest_report_header",
           "pytest_runtest_makereport", "pytest_runtest_logreport", "pytest_sessionfinish",
           "pytest_terminal_summary",
           "hil_log_dir", "dut", "dut_factory",
           "dut_pool", "broker_log"]


def pytest_addoption(parser):
    g = parser.getgroup("hil", "Urja hardware-in-the-loop")
    g.addoption("--board", dest="hil_board", choices=("unix", "esp32"), default="unix",
                help="unix: micropython processes (default); esp32: a real board on --port")
    g.addoption("--port", dest="hil_port", default=None,
                help="serial port(s) of real boards, comma-separated (--board esp32)")
    g.addoption("--count", dest="hil_count", type=int, default=1,
                help="number of DUTs dut_pool starts in parallel (default 1)")
    g.addoption("--hil-reports", dest="hil_reports", default=DEFAULT_REPORTS,
                help="where logs, junit.xml and the summary go (default reports/hil)")


def _opt(config, name, default):
    """An option, or its default when the plugin's options are not registered (another folder)."""
    try:
        return config.getoption(name)
    except ValueError:
        return default


def _reports_dir(config):
    return _opt(config, "hil_reports", DEFAULT_REPORTS)


def _only_hil_args(config):
    """True when every path on the command line is inside a ``hil_tests`` folder."""
    args = [a.split("::")[0] for a in config.args]
    here = str(config.invocation_params.dir)
    return bool(args) and all(
        "hil_tests" in os.path.abspath(os.path.join(here, a)).split(os.sep) for a in args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "dut(settings=..., time_factor=..., broker=..., ...): "
                            "how the unix-board DUT of this test starts (hil_tests/plugin.py)")
    config.stash[RESULTS] = Results()
    config.stash[LOG_DIRS] = {}
    _CONFIG[:] = [config]
    # JUnit XML by default when the run is the HIL suite (before junitxml's own configure reads it)
    if getattr(config.option, "xmlpath", None) is None and _only_hil_args(config):
        config.option.xmlpath = os.path.join(_reports_dir(config), "junit.xml")


def pytest_report_header(config):
    return "hil: board=%s port=%s count=%s reports=%s" % (
        _opt(config, "hil_board", "unix"), _opt(config, "hil_port", None) or "-",
        _opt(config, "hil_count", 1), _reports_dir(config))


LOG_DIR_PROPERTY = "hil_log_dir"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Carry the test's log folder on its report (a pytest-xdist worker sends it to the controller)."""
    outcome = yield
    report = outcome.get_result()
    config = item.config
    log_dir = config.stash[LOG_DIRS].get(report.nodeid) if LOG_DIRS in config.stash else None
    if log_dir:
        report.user_properties.append((LOG_DIR_PROPERTY, log_dir))


def _is_worker(config):
    return hasattr(config, "workerinput")  # a pytest-xdist worker: the controller writes the summary


def pytest_runtest_logreport(report):
    """Fold each phase report into the results (runs where the reports are gathered: the only
    process, or the xdist controller)."""
    config = _CONFIG[0] if _CONFIG else None
    if config is None or _is_worker(config) or RESULTS not in config.stash:
        return
    log_dir = dict(report.user_properties).get(LOG_DIR_PROPERTY)
    if not (report.nodeid.startswith("hil_tests/") or log_dir):
        return
    if report.skipped and isinstance(report.longrepr, tuple):
        message = report.longrepr[2]
    else:
        message = report.longreprtext if report.failed else ""
    config.stash[RESULTS].add(report.nodeid, report.when, report.outcome, report.duration,
                              message, log_dir)


def pytest_sessionfinish(session):
    config = session.config
    if _is_worker(config):
        return
    results = config.stash.get(RESULTS, None)
    if results is None or not results.tests:
        return
    md, _ = results.write(_reports_dir(config), board=_opt(config, "hil_board", "unix"),
                          count=_opt(config, "hil_count", 1))
    config.stash[SUMMARY] = md


def pytest_terminal_summary(terminalreporter, config):
    md = config.stash.get(SUMMARY, None)
    if md:
        terminalreporter.write_line("hil summary: %s (and .html)" % os.path.relpath(md))


# --- fixtures ------------------------------------------------------------------------

def _safe(nodeid):
    """'hil_tests/test_x.py::test_y[a/b]' -> 'test_x.test_y[a_b]' (a directory name)."""
    path, _, name = nodeid.partition("::")
    base = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"[^A-Za-z0-9_.\[\]-]+", "_", "%s.%s" % (base, name.replace("::", ".")))[:150]


@pytest.fixture
def hil_log_dir(request):
    """reports/hil/<test>/, emptied at the start of the test."""
    config = request.config
    path = os.path.join(_reports_dir(config), _safe(request.node.nodeid))
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    if LOG_DIRS in config.stash:
        config.stash[LOG_DIRS][request.node.nodeid] = path
    return path


def _marker_kwargs(request):
    m = request.node.get_closest_marker("dut")
    return dict(m.kwargs) if m else {}


def _make_unix(request, log_dir, name, index, kw):
    meter_id = "UJ-HIL-%04d" % index
    broker = ("127.0.0.1", 1)
    if kw.pop("broker", False):
        broker = tuple(request.getfixturevalue("broker_log"))
    settings = kw.pop("settings", "default")
    if settings == "default":
        settings = dut_mod.factory_settings(meter_id, broker, **kw.pop("extra", {}))
    return dut_mod.UnixDut(name, log_dir, settings=settings, **kw)


def _ports(config):
    port = _opt(config, "hil_port", None)
    return [p for p in (port or "").split(",") if p]


def _make_duts(request, log_dir, names, kw=None):
    config = request.config
    kw = _marker_kwargs(request) if kw is None else kw
    board = _opt(config, "hil_board", "unix")
    count = len(names)
    if board == "esp32":
        ports = _ports(config)
        if not ports:
            pytest.skip(NO_HARDWARE)
        if len(ports) < count:
            pytest.skip("no hardware attached: %d boards wanted, --port names %d"
                        % (count, len(ports)))
        duts = [dut_mod.SerialDut(n, log_dir, p) for n, p in zip(names, ports)]
    else:
        duts = [_make_unix(request, log_dir, n, i, dict(kw)) for i, n in enumerate(names, 1)]
    return duts


def _start_all(duts):
    """Boot every DUT in parallel; close them all if any fails to boot."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(duts))) as ex:
        futures = [ex.submit(d.start) for d in duts]
        errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        for d in duts:
            d.close()
        raise errors[0]


@pytest.fixture
def dut(request, hil_log_dir):
    """One meter under test, booted: ``expect``, ``expect_exact``, ``write``, ``command``."""
    (d,) = _make_duts(request, hil_log_dir, ["dut"])
    _start_all([d])
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def dut_factory(request, hil_log_dir):
    """``dut_factory(settings=None, name="meter2", time_factor=300, ...)`` -> a booted DUT.

    The keywords are the ``dut`` marker's; every DUT made is closed after the test.
    """
    made = []

    def make(name="dut", **kw):
        (d,) = _make_duts(request, hil_log_dir, [name], kw)
        _start_all([d])
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def dut_pool(request, hil_log_dir):
    """``--count`` meters booted in parallel (meter ids UJ-HIL-0001...), a list."""
    count = _opt(request.config, "hil_count", 1)
    if count < 1:
        raise pytest.UsageError("--count must be at least 1")
    names = ["dut"] if count == 1 else ["dut%d" % i for i in range(1, count + 1)]
    duts = _make_duts(request, hil_log_dir, names)
    _start_all(duts)
    try:
        yield duts
    finally:
        for d in duts:
            d.close()


@pytest.fixture
def broker_log(broker, hil_log_dir):
    """The ``broker`` fixture, with every message on it logged to broker.log (decoded)."""
    from hil_tests.peers import BrokerTap

    host, port = broker
    tap = BrokerTap(host, port, os.path.join(hil_log_dir, "broker.log"))
    try:
        yield broker
    finally:
        tap.close()
