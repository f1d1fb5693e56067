"""Driving `micropython` child processes from host tests: find the command,
read its first line with a deadline, drain it, kill it."""
import os
import pathlib
import select
import shutil
import sys
import time

import pytest


def micropython_command():
    """Path of the `micropython` command (URJA_MICROPYTHON, the venv, PATH) or a loud failure."""
    exe = (os.environ.get("URJA_MICROPYTHON")
           or shutil.which("micropython", path=str(pathlib.Path(sys.executable).parent))
           or shutil.which("micropython"))
    if not exe:
        pytest.fail("the 'micropython' command was not found: run through ./dev test "
                    "(or set URJA_MICROPYTHON)", pytrace=False)
    return exe


def read_first_line(proc, timeout_s):
    """The first stdout line of ``proc`` and any bytes after it, without blocking forever."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError("writer printed no RESTORED line in %ss: %r" % (timeout_s, buf))
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError("writer exited before restoring: %r" % buf.decode(errors="replace"))
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return line.decode(), rest


def read_to_eof(proc):
    fd = proc.stdout.fileno()
    out = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def stop(proc):
    """Kill (if still running) and reap ``proc``; never leaves a process behind."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()
