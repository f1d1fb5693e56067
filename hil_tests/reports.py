"""The HIL run summary people read: Markdown and HTML with timings and the logs of failures.

The plugin records one ``TestResult`` per test (setup + call + teardown) and
writes ``summary.md`` and ``summary.html`` next to the JUnit XML at the end
of the session.

>>> results = Results()
>>> results.add("hil_tests/test_x.py::test_boots", "call", "passed", 1.25)
>>> results.write("reports/hil", board="unix")
"""
import html
import os
import time

LOG_TAIL_LINES = 60
OUTCOMES = ("failed", "error", "passed", "skipped")


class TestResult:
    __test__ = False  # not a test class for pytest

    def __init__(self, nodeid):
        self.nodeid = nodeid
        self.outcome = "passed"
        self.duration_s = 0.0
        self.message = ""  # failure text, or the skip reason
        self.log_dir = None


class Results:
    """Test outcomes in run order; ``write`` renders them."""

    def __init__(self):
        self.tests = {}
        self.started = time.time()

    def add(self, nodeid, when, outcome, duration_s, message="", log_dir=None):
        """Fold one phase report (setup/call/teardown) into the test's result."""
        r = self.tests.get(nodeid)
        if r is None:
            r = self.tests[nodeid] = TestResult(nodeid)
        r.duration_s += duration_s
        if log_dir:
            r.log_dir = log_dir
        if outcome == "failed":
            r.outcome = "failed" if when == "call" else "error"
            r.message = (r.message + "\n" + message).strip()
        elif outcome == "skipped" and r.outcome == "passed":
            r.outcome = "skipped"
            r.message = message
        return r

    def counts(self):
        out = {k: 0 for k in OUTCOMES}
        for r in self.tests.values():
            out[r.outcome] += 1
        return out

    def write(self, directory, **facts):
        """Write summary.md and summary.html into ``directory``; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        md = os.path.join(directory, "summary.md")
        page = os.path.join(directory, "summary.html")
        with open(md, "w", encoding="utf-8") as f:
            f.write(self.markdown(directory, **facts))
        with open(page, "w", encoding="utf-8") as f:
            f.write(self.html(directory, **facts))
        return md, page

    def _header(self, facts):
        c = self.counts()
        wall = time.time() - self.started
        head = ", ".join("%s %d" % (k, c[k]) for k in OUTCOMES if c[k])
        extra = ", ".join("%s=%s" % (k, v) for k, v in facts.items())
        return head, "%.1f s wall, %s" % (wall, extra) if extra else "%.1f s wall" % wall

    def _logs(self, r):
        """[(file name, last lines)] of a failed test's log files."""
        if not r.log_dir or not os.path.isdir(r.log_dir):
            return []
        out = []
        for name in sorted(os.listdir(r.log_dir)):
            path = os.path.join(r.log_dir, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
                out.append((name, "\n".join(lines[-LOG_TAIL_LINES:])))
        return out

    def markdown(self, directory, **facts):
        head, sub = self._header(facts)
        out = ["# HIL run: %s" % head, "", sub, "",
               "| test | outcome | time (s) | logs / reason |", "| --- | --- | ---: | --- |"]
        for r in self.tests.values():
            note = r.message.splitlines()[0] if r.outcome == "skipped" and r.message else ""
            if r.log_dir:
                note = (note + " " if note else "") + "`%s`" % os.path.relpath(r.log_dir, directory)
            out.append("| `%s` | %s | %.2f | %s |" % (r.nodeid, r.outcome.upper(), r.duration_s,
                                                    note.replace("|", "\\|")))
        for r in self.tests.values():
            if r.outcome not in ("failed", "error"):
                continue
            out += ["", "## %s: %s" % (r.outcome.upper(), r.nodeid), "", "```",
                    _tail(r.message, 80), "```"]
            for name, text in self._logs(r):
                out += ["", "### %s" % name, "", "```", text, "```"]
        return "\n".join(out) + "\n"

    def html(self, directory, **facts):
        head, sub = self._header(facts)
        e = html.escape
        rows = []
        longest = max([r.duration_s for r in self.tests.values()] + [0.001])
        for r in self.tests.values():
            note = e(r.message.splitlines()[0]) if r.outcome == "skipped" and r.message else ""
            if r.log_dir:
                rel = os.path.relpath(r.log_dir, directory)
                note += ' <a href="%s/">logs</a>' % e(rel)
            bar = '<span class="bar" style="width:%dpx"></span>' % int(200 * r.duration_s / longest)
            rows.append('<tr class="%s"><td><code>%s</code></td><td>%s</td>'
                        '<td class="n">%.2f</td><td>%s</td><td>%s</td></tr>'
                        % (r.outcome, e(r.nodeid), r.outcome.upper(), r.duration_s, bar, note))
        details = []
        for r in self.tests.values():
            if r.outcome not in ("failed", "error"):
                continue
            details.append('<h2 class="%s">%s: <code>%s</code></h2><pre>%s</pre>'
                           % (r.outcome, r.outcome.upper(), e(r.nodeid), e(_tail(r.message, 80))))
            for name, text in self._logs(r):
                details.append("<details open><summary>%s</summary><pre>%s</pre></details>"
                               % (e(name), e(text)))
        return ("<!doctype html><meta charset=utf-8><title>HIL run: %s</title>\n<style>"
                "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
                ".n{text-align:right}.failed,.error{color:#b00}.skipped{color:#a60}"
                ".passed{color:#070}pre{background:#f4f4f4;padding:8px;overflow:auto}"
                ".bar{display:inline-block;height:10px;background:#58a}</style>\n"
                "<h1>HIL run: %s</h1><p>%s</p>\n<table><tr><th>test</th><th>outcome</th>"
                "<th>time (s)</th><th></th><th>logs / reason</th></tr>\n%s\n</table>\n%s\n"
                % (e(head), e(head), e(sub), "\n".join(rows), "\n".join(details)))


def _tail(text, n):
    lines = text.splitlines()
    return "\n".join(lines[-n:])
