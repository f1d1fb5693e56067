"""Tiny assertion helpers for tests that run on CPython *and* MicroPython.

The dual-runtime tests cannot import pytest (it does not exist on the
meter's runtime), so they use plain ``assert`` plus these helpers.
"""


def raises(exc_type, fn, *args, **kwargs):
    """Call ``fn`` and return the exception it raised; fail if it raised nothing.

    >>> err = raises(ValueError, int, "x")
    """
    try:
        fn(*args, **kwargs)
    except exc_type as err:
        return err
    raise AssertionError("expected %s from %r" % (exc_type.__name__, fn))


def eq(got, want, what=""):
    """assert got == want with both values in the message (MicroPython has no assert rewriting)."""
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what or "value", got, want))
